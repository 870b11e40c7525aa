"""Run code in a fresh interpreter and check it imported none of the heavy libraries."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "peft", "accelerate")


def assert_runs_without_heavy_imports(code: str) -> None:
    """``code`` runs in a new Python process and leaves none of ``HEAVY`` in sys.modules."""
    check = (f"{code}\nimport sys\nheavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
             "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
