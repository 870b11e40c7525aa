"""Benchmark folders written in the layouts their authors publish, a few records per task, so
the readers, orders, label sets and metrics are tested without the real data."""

from __future__ import annotations

import json
from pathlib import Path

from everlearn.data.benchmarks import get_benchmark


def _dump(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def write_olora(root: Path, bench: str = "olora-standard", n: int = 3) -> Path:
    """O-LoRA's CL_Benchmark/<group>/<task>/{train,dev,test}.json + labels.json."""
    b = get_benchmark(bench)
    for name, task in b.tasks.items():
        folder = root / task.paths["olora"]
        for split in ("train", "dev", "test"):
            rows = [{"label": task.labels[i % len(task.labels)],
                     "sentence": f"{name} {split} sentence {i}"} for i in range(n)]
            _dump(folder / f"{split}.json", rows)
        _dump(folder / "labels.json", task.labels)
    return root


def write_sapt(root: Path, bench: str = "long-sequence", n: int = 3) -> Path:
    """SAPT's CL_Benchmark/<Benchmark>/<task>/{train,dev,test}.json (SuperNI task JSON) and,
    for the classification tasks, labels.json."""
    b = get_benchmark(bench)
    for name, task in b.tasks.items():
        folder = root / task.paths["sapt"]
        options = task.labels or ["yes", "no"]
        for split in ("train", "dev", "test"):
            _dump(folder / f"{split}.json", {
                "Definition": [f"Do the {name} task.\n"], "Positive Examples": [],
                "Instances": [{"id": f"{name}-{i}", "input": f"{name} input {i}",
                               "output": options[i % len(options)]} for i in range(n)]})
        if task.labels:
            _dump(folder / "labels.json", task.labels)
    return root


def write_trace(root: Path, n: int = 3) -> Path:
    """TRACE's <task>/{train,eval,test}.json with {prompt, answer} records."""
    for name in get_benchmark("trace").tasks:
        for split in ("train", "eval", "test"):
            _dump(root / name / f"{split}.json",
                  [{"prompt": f"{name} question {i}", "answer": f"A{i}"} for i in range(n)])
    return root
