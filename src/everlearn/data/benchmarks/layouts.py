"""Where a benchmark's files lie on disk, and how its stream becomes stage entries.

A benchmark names, per task, its folder in each layout its authors publish: SAPT's
``CL_Benchmark/<Benchmark>/<task>/`` (SuperNI task JSON, ``labels.json`` for the classification
tasks), O-LoRA's ``CL_Benchmark/<group>/<task>/`` (records ``{label, sentence}`` and
``labels.json``; the instruction is the group's) and TRACE's ``<task>/`` (records ``{prompt,
answer}``). ``data_dir`` is the ``CL_Benchmark`` folder (or the benchmark's own folder: the
task folder's last part is tried there too). :func:`benchmark_stages` turns ``benchmark:
{name, order, data_dir, ...}`` into the plain stage entries of an ordinary config, so the
resolved config of a benchmark run is an explicit stream; :func:`read_olora` reads O-LoRA's
records into prompts laid out as O-LoRA's data loader lays them out.

A temporal benchmark (TemporalWiki, CKL) names files rather than a folder per task: a task's
path in a layout may be a mapping of the layout's file entries (``train``, and ``probes``:
a file per probe split), each a path under ``data_dir`` or a list of them (the first found is
read). Its stage is a ``cpt`` stage on the training corpus whose test is ``probes``:
:func:`read_twiki_probes` and :func:`read_ckl_lama` read the authors' probe files into cloze
prompts and answers as their GPT-2 evaluation forms them.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from everlearn.data.benchmarks import Benchmark, benchmark_files, get_benchmark, load_benchmark
from everlearn.data.readers import read_csv_rows
from everlearn.data.records import Record
from everlearn.errors import ConfigError, DataError

log = logging.getLogger("everlearn")

SPEC_KEYS = ("name", "order", "data_dir", "train_per_task", "test_per_task", "tasks", "layout")
FORMATS = {"superni": "superni", "olora": "olora", "json": "json", "csv": "csv",
           "twiki_probes": "twiki_probes", "ckl_lama": "ckl_lama"}


def benchmark_stages(spec: Any, root: Path | None = None) -> tuple[Benchmark, list[dict]]:
    """``benchmark: {name, order, data_dir, train_per_task, test_per_task, tasks, layout}`` ->
    the benchmark and its stage entries in the order's sequence (``tasks: N``: the first N)."""
    if not isinstance(spec, dict):
        raise ConfigError("benchmark: expected a mapping {name, order, data_dir, ...}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"benchmark.{unknown[0]}: unknown; expected {', '.join(SPEC_KEYS)}")
    if not spec.get("name") or not spec.get("data_dir"):
        key = "name" if not spec.get("name") else "data_dir"
        raise ConfigError(f"benchmark.{key}: missing (see `everlearn ls` for the benchmarks)")
    bench = get_benchmark(str(spec["name"]))
    order = bench.order(_int(spec, "order", min(bench.orders)))
    first = _int(spec, "tasks", len(order))
    data_dir = Path(str(spec["data_dir"])).expanduser()
    if not data_dir.is_absolute() and root is not None:
        data_dir = root / data_dir
    layout = spec.get("layout") or detect_layout(bench, data_dir, order[0])
    if layout not in bench.layouts:
        raise ConfigError(f"benchmark.layout: expected one of {', '.join(bench.layouts)} for "
                          f"{bench.name}, got {layout!r}")
    stages = [task_stage(bench, layout, data_dir, task, spec) for task in order[:first]]
    return bench, stages


def _int(spec: dict, key: str, default: int) -> int:
    value = spec.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"benchmark.{key}: expected an integer >= 1, got {value!r}")
    return value


def task_dir(data_dir: Path, rel: str) -> Path:
    """The task's folder under ``data_dir``: the layout's path, else its last part."""
    full = data_dir / rel
    return full if full.is_dir() else data_dir / Path(rel).name


def task_files(bench: Benchmark, layout: str, task: str) -> tuple[str, dict[str, Any]]:
    """The task's folder in ``layout`` and the layout's file entries, the task's own files
    (a path that is a mapping) in place of the layout's (their folder is then ``data_dir``)."""
    files = dict(bench.layouts[layout])
    rel = bench.tasks[task].paths.get(layout)
    if rel is None:
        raise ConfigError(f"benchmark {bench.name}: task {task}: not published in the "
                          f"{layout} layout")
    if isinstance(rel, dict):
        files.update(rel)
        rel = "."
    return rel, files


def find_file(data_dir: Path, rel: str, entry: str | list[str]) -> tuple[Path | None, list[Path]]:
    """The first of ``entry``'s candidate files found in the task's folder (or, as for a
    folder, under ``data_dir`` by its last part), and the paths tried."""
    folder = task_dir(data_dir, rel)
    tried = []
    for name in [entry] if isinstance(entry, str) else entry:
        for path in (folder / name, data_dir / Path(name).name):
            if path.is_file():
                return path, tried
            if path not in tried:
                tried.append(path)
    return None, tried


def detect_layout(bench: Benchmark, data_dir: Path, task: str) -> str:
    """The first layout whose folder (or training file) for ``task`` exists under
    ``data_dir``."""
    if not data_dir.is_dir():
        raise ConfigError(f"benchmark.data_dir: {data_dir}: directory not found")
    paths = bench.tasks[task].paths
    tried: list[Path] = []
    for layout, rel in paths.items():
        if isinstance(rel, dict):
            found, where = find_file(data_dir, *_train_entry(bench, layout, task))
            if found is not None:
                return layout
            tried += where
        elif task_dir(data_dir, rel).is_dir():
            return layout
        else:
            tried.append(data_dir / rel)
    what = "training file" if all(isinstance(r, dict) for r in paths.values()) else "task folder"
    raise ConfigError(f"benchmark {bench.name}: task {task}: no {what} under {data_dir} "
                      f"(tried {', '.join(map(str, tried))})")


def _train_entry(bench: Benchmark, layout: str, task: str) -> tuple[str, Any]:
    rel, files = task_files(bench, layout, task)
    return rel, files["train"]


def _found(bench: Benchmark, task: str, data_dir: Path, rel: str, entry: Any) -> str:
    """The file of one entry; else a one-line error naming the file and the task."""
    path, tried = find_file(data_dir, rel, entry)
    if path is None:
        raise ConfigError(f"benchmark {bench.name}: task {task}: {tried[0]}: file not found"
                          + (f" (tried also {', '.join(map(str, tried[1:]))})"
                             if len(tried) > 1 else ""))
    return str(path)


def task_stage(bench: Benchmark, layout: str, data_dir: Path, task: str, spec: dict) -> dict:
    """One stage entry: the task's train and test files (or probes), labels, metric, kind
    and task id."""
    rel, files = task_files(bench, layout, task)
    folder = task_dir(data_dir, rel)
    fmt = FORMATS[files.get("records", "json")]
    stage: dict[str, Any] = {"name": task, "task_id": task}
    if bench.kind:
        stage["kind"] = bench.kind
    if "probes" in files:  # a temporal stage: the corpus, then its probes per split
        stage["train"] = {"path": _found(bench, task, data_dir, rel, files["train"]),
                          "format": fmt}
        if files.get("train_fields"):
            stage["train"]["fields"] = dict(files["train_fields"])
        stage["test"] = {"probes": {split: _found(bench, task, data_dir, rel, entry)
                                    for split, entry in files["probes"].items()},
                         "format": FORMATS[files["probe_records"]]}
    else:
        for split in ("train", "test"):
            path = folder / files[split]
            if not path.is_file():
                raise ConfigError(f"benchmark {bench.name}: task {task}: {path}: file not "
                                  "found")
            stage[split] = {"path": str(path), "format": fmt}
    labels = read_labels(folder / files["labels"]) if "labels" in files else None
    labels = labels if labels is not None else bench.tasks[task].labels
    if labels:
        stage["labels"] = labels
    metric = bench.task_metric(task)
    if metric:
        stage["metric"] = metric
    for src, dst in (("train_per_task", "max_train"), ("test_per_task", "max_test")):
        if spec.get(src) is not None:
            stage[dst] = _int(spec, src, 1)
    return stage


def read_labels(path: Path) -> list[str] | None:
    """A task's ``labels.json`` (a list of strings), or None where the layout has none."""
    if not path.is_file():
        return None
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path}: expected a JSON list of label strings") from None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise DataError(f"{path}: expected a non-empty JSON list of label strings")
    return labels


def olora_instruction(group: str) -> str:
    """The instruction O-LoRA gives every task of ``group`` (SC, TC, NLI, ...)."""
    for p in benchmark_files():
        bench = load_benchmark(p)
        if "olora" in bench.layouts and group in bench.instructions:
            return bench.instructions[group]
    raise DataError(f"O-LoRA layout: no instruction for the task group {group!r} (the folder "
                    "above the task's); expected one of the groups the benchmarks list")


def read_olora(path: str, task: str) -> list[Record]:
    """O-LoRA's ``[{label, sentence}]`` -> records whose prompt is the group's instruction, the
    options (from ``labels.json`` beside the file), the sentence and ``Answer:``, as O-LoRA's
    ``uie_dataset_lora.py`` lays them out (COPA: the sentence carries its own question)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: file not found")
    try:
        rows = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path}: expected a JSON list of {{label, sentence}} records") from None
    labels = read_labels(p.parent / "labels.json")
    if labels is None:
        raise DataError(f"{p.parent / 'labels.json'}: file not found (the O-LoRA layout keeps "
                        "each task's label set there)")
    instruction = olora_instruction(p.parent.parent.name)
    head = f"{instruction}Option: {', '.join(labels)} \n" if instruction else ""
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of {{label, sentence}} records")
    records = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("sentence"), str) \
                or not isinstance(row.get("label"), str):
            raise DataError(f"{path}: record {i}: expected label and sentence strings")
        records.append(Record(prompt=f"{head}{row['sentence']}\nAnswer:",
                              answers=[row["label"]], task=task, meta={"id": str(i)}))
    return records


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
        answers = _ckl_row_answers(aliases, rid, where, answer_col == "new_answer")
        if answers is None:
            answers = [MASK.sub("", str(row.get(answer_col) or "")).strip()]
        answers = [a for a in answers if a]
        if not answers:
            raise DataError(f"{where}: {answer_col}: empty")
        if not prompt:
            skipped += 1
            continue
        meta = {"id": rid, "statement": text}
        if answer_col == "new_answer" and aliases is not None:
            meta["old_answers"] = _ckl_old_answers(aliases, rid)
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


def _ckl_row_answers(aliases: dict[str, Any] | None, rid: str, where: str,
                     updated: bool) -> list[str] | None:
    """A row's accepted answers from the answers JSON: UpdatedLAMA's ``[{old, new}]`` -> the
    new ones (the updated fact), NewLAMA's list as it is; None without a JSON."""
    if aliases is None:
        return None
    key = rid if rid in aliases else _int_key(rid)
    if key not in aliases:
        raise DataError(f"{where}: unique_id {rid}: not in the answers file")
    value = aliases[key]
    if updated:
        value = value[0].get("new") if isinstance(value, list) and value \
            and isinstance(value[0], dict) else None
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise DataError(f"{where}: unique_id {rid}: expected a list of answer strings in the "
                        "answers file" + (" (under [0].new)" if updated else ""))
    return [a.strip() for a in value]


def _ckl_old_answers(aliases: dict[str, Any], rid: str) -> list[str]:
    """UpdatedLAMA's old answers of a row (CKL reports their exact match apart)."""
    value = aliases.get(rid, aliases.get(_int_key(rid)))
    old = value[0].get("old") if isinstance(value, list) and value and isinstance(
        value[0], dict) else None
    return [a for a in old if isinstance(a, str)] if isinstance(old, list) else []


def _int_key(rid: str) -> str:
    try:
        return str(int(float(rid)))
    except ValueError:
        return rid
