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


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    """A CSV file as pandas ``to_csv(index=False)`` writes one."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_temporalwiki(root: Path, n: int = 3, probes_dir: str = "twiki_probes") -> Path:
    """TemporalWiki's data/: TWiki_Diffsets/wikipedia_MMNN_gpt2.csv (``text``) and
    <probes_dir>/<MM01-NN01>_{unchanged,changed}.csv (``subject, relation, object``)."""
    for month in ("08", "09", "10", "11"):
        nxt = f"{int(month) + 1:02d}"
        write_csv(root / "TWiki_Diffsets" / f"wikipedia_{month}{nxt}_gpt2.csv", ["text"],
             [[f"In 2021-{nxt}, person {i} of month {month} moved to City{month}{i}, a city. "
               "It has a river."] for i in range(n)])
        pair = f"{month}01-{nxt}01"
        write_csv(root / probes_dir / f"{pair}_unchanged.csv", ["subject", "relation", "object"],
             [[f"Person {i}", "country of citizenship", "Atlantis"] for i in range(n)])
        write_csv(root / probes_dir / f"{pair}_changed.csv", ["subject", "relation", "object"],
             [[f"Person {i} of month {month}", "residence", f"City{month}{i}"]
              for i in range(n)])
    return root


def write_ckl(root: Path, n: int = 3) -> Path:
    """CKL's data/: recent_news_full.csv (``input, output, original``), invariantLAMA.csv,
    updatedlama/updatedLAMA.csv and newlama/newLAMA.csv with their answers JSON files."""
    write_csv(root / "recent_news_full.csv", ["input", "output", "original"],
         [[f"News {i}: <extra_id_0> won.", f"<extra_id_0> Team{i}",
           f"News {i}: Team{i} won. The mayor of Town{i} is Ann{i}."] for i in range(n)])
    write_csv(root / "invariantLAMA.csv", ["id", "input", "output"],
         [[i, f"Country{i} has the capital <extra_id_0> .", f"Capital{i}"] for i in range(n)])
    write_csv(root / "updatedlama" / "updatedLAMA.csv", ["unique_id", "statement", "new_answer"],
         [[100 + i, f"The mayor of Town{i} is <extra_id_0> .", f"Ann{i}"] for i in range(n)])
    _dump(root / "updatedlama_val_answers.json",
          {str(100 + i): [{"old": [f"Bob{i}"], "new": [f"Ann{i}", f"Ann {i}"]}]
           for i in range(n)})
    write_csv(root / "newlama" / "newLAMA.csv", ["unique_id", "statement", "answer"],
         [[200 + i, f"News {i} says that <extra_id_0> won.", f"Team{i}"] for i in range(n)])
    _dump(root / "recentlama_h_val_answers.json",
          {str(200 + i): [f"Team{i}", f"the Team{i}"] for i in range(n)})
    return root
