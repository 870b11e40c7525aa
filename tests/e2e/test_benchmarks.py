"""A built-in benchmark end to end: ``run --benchmark`` on a layout written by the test, on the
tiny model, then ``verify`` against fake published numbers."""

from __future__ import annotations

from pathlib import Path

import yaml

from everlearn.cli import main
from tests.helpers.benchmark_layouts import write_olora

FAKE = [{"method": "SeqFT", "model": "T5-large", "metric": "AP", "value": 10.0,
         "source": "fake, Table 1"},
        {"method": "Replay", "model": "T5-large", "metric": "AP", "value": 20.0,
         "source": "fake, Table 1"}]


def _run(data: Path, out: Path, strategy: str, seed: int, order: int) -> Path:
    args = ["run", "--benchmark", "olora-standard", "--order", str(order), "--data-dir",
            str(data), "--output", str(out), "-q", "model.name=tiny-llama",
            "model.finetune=full", "train.steps=2", "train.precision=fp32",
            "train.max_length=64", "eval.batch_size=8", "benchmark.tasks=2",
            "benchmark.train_per_task=6", "benchmark.test_per_task=3", f"seed={seed}",
            f"strategy={strategy}"]
    assert main(args) == 0
    return out


def test_run_a_benchmark_then_verify(tmp_path: Path, capsys):
    data = write_olora(tmp_path / "CL_Benchmark")
    dirs = [_run(data, tmp_path / "seq0", "seqft", 0, 1), _run(data, tmp_path / "seq1", "seqft",
                                                               1, 2),
            _run(data, tmp_path / "rep0", "replay", 0, 1)]
    cfg = yaml.safe_load((dirs[0] / "config.yaml").read_text())
    assert cfg["name"] == "olora-standard" and "benchmark" not in cfg
    assert [s["name"] for s in cfg["stages"]] == ["dbpedia", "amazon"]
    assert cfg["stages"][1]["labels"][0] == "very negative"
    assert cfg["stages"][0]["train"]["format"] == "olora"
    cfg2 = yaml.safe_load((dirs[1] / "config.yaml").read_text())
    assert [s["name"] for s in cfg2["stages"]] == ["dbpedia", "amazon"]  # order 2 starts alike
    pub = tmp_path / "pub.yaml"
    pub.write_text(yaml.safe_dump(FAKE))
    capsys.readouterr()
    assert main(["verify", *map(str, dirs), "--published", str(pub)]) == 0
    out = capsys.readouterr().out
    assert "| SeqFT | seqft | 2 |" in out and "| Replay | replay | 1 |" in out
    assert "10.00 (T5-large; fake, Table 1)" in out
    assert "Replay > SeqFT in the paper (20.0 vs 10.0)" in out
    assert "the runs train 2 of the benchmark's 4 tasks" in out
