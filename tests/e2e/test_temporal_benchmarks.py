"""TemporalWiki and CKL end to end: ``run --benchmark`` on layouts written by the test, the tiny
model, a couple of steps; results.json has the temporal section (probe accuracy per split,
FUAR) over the benchmark's cpt stages."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from everlearn.cli import main
from tests.helpers.benchmark_layouts import write_ckl, write_temporalwiki

ARGS = ["-q", "model.name=tiny-llama", "model.finetune=full", "train.steps=2",
        "train.precision=fp32", "train.max_length=64", "eval.batch_size=8"]


def _run(name: str, data: Path, out: Path, *extra: str) -> dict:
    assert main(["run", "--benchmark", name, "--data-dir", str(data), "--output", str(out),
                 *ARGS, *extra]) == 0
    return json.loads((out / "results.json").read_text())


def _check_section(res: dict, stages: list[str], n: dict[str, int]) -> None:
    t = res["temporal"]
    assert t["stages"] == stages and t["splits"] == ["invariant", "updated", "new"]
    assert len(t["rows"]) == len(stages) + 1  # the base row, then one per stage
    assert [s["stage"] for s in t["steps"]] == stages
    for k, step in enumerate(t["steps"], 1):
        assert step["rows"] == [k - 1, k] and step["n"] == n
        assert set(step["before"]) == {"invariant", "updated", "new"}
    gained = sum(s["updated"] + s["acquired"] for s in t["steps"])
    forgotten = sum(s["forgotten"] for s in t["steps"])
    assert t["fuar"] == ("n.d." if gained == 0 else forgotten / gained)


def test_temporalwiki_run_reports_unchanged_and_changed_probes(tmp_path: Path):
    data = write_temporalwiki(tmp_path / "data")
    res = _run("temporalwiki", data, tmp_path / "run", "benchmark.tasks=2")
    cfg = yaml.safe_load((tmp_path / "run/config.yaml").read_text())
    assert [(s["name"], s["kind"], s["metric"]) for s in cfg["stages"]] == [
        ("wikipedia_0809", "cpt", "exact_match"), ("wikipedia_0910", "cpt", "exact_match")]
    assert set(cfg["stages"][0]["test"]["probes"]) == {"invariant", "new"}
    _check_section(res, ["wikipedia_0809", "wikipedia_0910"],
                   {"invariant": 3, "updated": 0, "new": 3})
    assert all(row[name]["updated"] is None for row in res["temporal"]["accuracy"]
               for name in row)  # no updated probes: no accuracy, not 0


def test_ckl_run_reports_invariant_updated_and_new_probes(tmp_path: Path):
    data = write_ckl(tmp_path / "data")
    res = _run("ckl", data, tmp_path / "run")
    _check_section(res, ["recentnews"], {"invariant": 3, "updated": 3, "new": 3})
    assert len(res["R"]) == 2 and len(res["R"][0]) == 1
