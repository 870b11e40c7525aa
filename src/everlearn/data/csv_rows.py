"""CSV files with a header row -> one dict per row, with one-line errors. Its own module so
that the general readers (:mod:`everlearn.data.readers`) and the benchmark probe readers
(:mod:`everlearn.data.benchmarks.probe_files`, which the general readers call) both use it
without importing each other."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from everlearn.errors import DataError


def read_csv_rows(p: Path, need: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """A CSV file with a header row (as pandas writes one) -> one dict per row; the columns
    in ``need`` must be in the header. An empty cell is ""; the index column pandas writes
    without a name is kept under the name ""."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a Wikipedia article is one cell
    try:
        with p.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in need if c not in header]
            if missing:
                raise DataError(f"{p}: expected the columns {', '.join(need)} in the header row, "
                                f"got {', '.join(header) or 'none'}")
            return [dict(row) for row in reader]
    except UnicodeDecodeError:
        raise DataError(f"{p}: not UTF-8 text") from None
    except csv.Error as exc:
        raise DataError(f"{p}: not a CSV file ({exc})") from None
