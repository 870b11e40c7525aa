"""The probe files of the temporal benchmarks (TemporalWiki's TWiki-Probes, CKL's
InvariantLAMA / UpdatedLAMA / NewLAMA) -> cloze records, a prompt and its accepted answers,
as the authors' GPT-2 evaluation forms them. The formats ``twiki_probes`` and ``ckl_lama`` of
a data source (:func:`everlearn.data.readers.read_source`)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from everlearn.data.csv_rows import read_csv_rows
from everlearn.data.records import Record
from everlearn.errors import DataError

log = logging.getLogger("everlearn")


def read_twiki_probes(path: str, task: str) -> list[Record]:
    """TemporalWiki's TWiki-Probes CSV (columns ``subject``, ``relation``, ``object``: one
    Wikidata fact a row) -> cloze records: the prompt ``subject relation``, the answer the
    object, as the authors' ``Datasets.py`` forms them for its ``evaluate`` mode."""
    p = _probe_file(path)
    records = []
    for i, row in enumerate(read_csv_rows(p, ("subject", "relation", "object"))):
        subject, relation, obj = (str(row.get(k) or "").strip()
                                  for k in ("subject", "relation", "object"))
        if not subject or not relation or not obj:
            raise DataError(f"{path}: row {i + 1}: expected a subject, a relation and an "
                            "object, got an empty cell")
        records.append(Record(prompt=f"{subject} {relation}", answers=[obj], task=task,
                              meta={"id": str(i), "subject": subject, "relation": relation}))
    return records


# CKL's probe files whose answers (every accepted alias) are in a JSON file kept in the data
# folder, keyed by the row's unique_id (the authors' Datasets.py and evaluation.py)
CKL_ANSWER_FILES = {"updatedLAMA.csv": "updatedlama_val_answers.json",
                    "newLAMA.csv": "recentlama_h_val_answers.json",
                    "newLAMA_easy.csv": "recentlama_val_answers.json"}
MASK = re.compile(r"<extra_id_\d+>")


def read_ckl_lama(path: str, task: str) -> list[Record]:
    """A CKL probe CSV -> cloze records, the file told by its columns: InvariantLAMA (``id``,
    ``input``, ``output``), UpdatedLAMA (``unique_id``, ``statement``, ``new_answer``) or
    NewLAMA (``unique_id``, ``statement``, ``answer``). The prompt is the text before T5's mask
    ``<extra_id_0>`` (as the authors' GPT-2 evaluation cuts InvariantLAMA's input); the
    answers are UpdatedLAMA's new answers and NewLAMA's answers from the JSON file beside
    the data (``CKL_ANSWER_FILES``), else the row's answer column. A row whose mask opens the
    statement leaves no prompt for a causal model and is left out (a warning counts them)."""
    p = _probe_file(path)
    rows = read_csv_rows(p)
    header = set(rows[0]) if rows else set()
    if {"input", "output"} <= header:
        text_col, answer_col, id_col = "input", "output", "id"
    elif {"statement", "new_answer"} <= header:
        text_col, answer_col, id_col = "statement", "new_answer", "unique_id"
    elif {"statement", "answer"} <= header:
        text_col, answer_col, id_col = "statement", "answer", "unique_id"
    else:
        raise DataError(f"{path}: expected CKL's columns (id, input, output: InvariantLAMA; "
                        "unique_id, statement, new_answer: UpdatedLAMA; unique_id, statement, "
                        f"answer: NewLAMA), got {', '.join(sorted(header)) or 'no rows'}")
    aliases = _ckl_answers(p)
    records, skipped = [], 0
    for i, row in enumerate(rows):
        where = f"{path}: row {i + 1}"
        text = str(row.get(text_col) or "")
        prompt = text.split("<extra_id_0>")[0].strip() if "<extra_id_0>" in text else text.strip()
        rid = str(row.get(id_col) or i)
        entry = None if aliases is None else _ckl_entry(aliases, rid, where)
        answers = (_ckl_row_answers(entry, rid, where, answer_col == "new_answer")
                   if entry is not None else
                   [MASK.sub("", str(row.get(answer_col) or "")).strip()])
        answers = [a for a in answers if a]
        if not answers:
            raise DataError(f"{where}: {answer_col}: empty")
        if not prompt:
            skipped += 1
            continue
        meta = {"id": rid, "statement": text}
        if answer_col == "new_answer" and entry is not None:
            meta["old_answers"] = _ckl_old_answers(entry)
        records.append(Record(prompt=prompt, answers=answers, task=task, meta=meta))
    if skipped:
        log.warning("%s: %d of %d probes left out: the mask opens the statement, so a causal "
                    "model has no prompt to continue", path, skipped, len(rows))
    return records


def _probe_file(path: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: file not found")
    return p


def _ckl_answers(p: Path) -> dict[str, Any] | None:
    """The answers JSON of a CKL probe file that has one (the file's folder or the one
    above it: the authors keep ``data/updatedlama/updatedLAMA.csv`` beside
    ``data/updatedlama_val_answers.json``); None for a file without one."""
    name = CKL_ANSWER_FILES.get(p.name)
    if name is None:
        return None
    for folder in (p.parent, p.parent.parent):
        if (folder / name).is_file():
            try:
                data = json.loads((folder / name).read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise DataError(f"{folder / name}: expected a JSON object of answers by "
                                "unique_id") from None
            if not isinstance(data, dict):
                raise DataError(f"{folder / name}: expected a JSON object of answers by "
                                "unique_id")
            return data
    raise DataError(f"{p.parent.parent / name}: file not found (CKL keeps the answers of "
                    f"{p.name} there, or beside it)")


def _ckl_entry(aliases: dict[str, Any], rid: str, where: str) -> Any:
    """A row's entry in the answers JSON, by its unique_id as written or as an integer."""
    key = rid if rid in aliases else _int_key(rid)
    if key not in aliases:
        raise DataError(f"{where}: unique_id {rid}: not in the answers file")
    return aliases[key]


def _ckl_row_answers(entry: Any, rid: str, where: str, updated: bool) -> list[str]:
    """A row's accepted answers from its answers-JSON entry: UpdatedLAMA's ``[{old, new}]``
    -> the new ones (the updated fact), NewLAMA's list as it is."""
    value = entry
    if updated:
        value = value[0].get("new") if isinstance(value, list) and value \
            and isinstance(value[0], dict) else None
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise DataError(f"{where}: unique_id {rid}: expected a list of answer strings in the "
                        "answers file" + (" (under [0].new)" if updated else ""))
    return [a.strip() for a in value]


def _ckl_old_answers(entry: Any) -> list[str]:
    """UpdatedLAMA's old answers of a row's entry (CKL reports their exact match apart)."""
    old = entry[0].get("old") if isinstance(entry, list) and entry and isinstance(
        entry[0], dict) else None
    return [a for a in old if isinstance(a, str)] if isinstance(old, list) else []


def _int_key(rid: str) -> str:
    try:
        return str(int(float(rid)))
    except ValueError:
        return rid
