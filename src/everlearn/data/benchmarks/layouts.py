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
:mod:`everlearn.data.benchmarks.probe_files` reads the authors' probe files into cloze
prompts and answers as their GPT-2 evaluation forms them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from everlearn.data.benchmarks import Benchmark, benchmark_files, get_benchmark, load_benchmark
from everlearn.data.records import Record
from everlearn.errors import ConfigError, DataError

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
    data_dir = resolve_data_dir(str(spec["data_dir"]), root)
    layout = spec.get("layout") or detect_layout(bench, data_dir, order[0])
    if layout not in bench.layouts:
        raise ConfigError(f"benchmark.layout: expected one of {', '.join(bench.layouts)} for "
                          f"{bench.name}, got {layout!r}")
    stages = [task_stage(bench, layout, data_dir, task, spec) for task in order[:first]]
    return bench, stages


def resolve_data_dir(data_dir: str, root: Path | None) -> Path:
    """``data_dir`` as a local folder: ``hf:OWNER/NAME[/FOLDER][@REV]`` fetched from the Hub
    (:mod:`everlearn.data.benchmarks.hub`), else a path (relative: to the config's folder)."""
    from everlearn.data.benchmarks.hub import hub_data_dir, is_hub_source

    if is_hub_source(data_dir):
        return hub_data_dir(data_dir)
    path = Path(data_dir).expanduser()
    return root / path if not path.is_absolute() and root is not None else path


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
