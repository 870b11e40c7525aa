"""``everlearn sweep`` runs: a 2x2 sweep in two processes pooled by compare, resume of a stopped
sweep, and one-line errors for a bad grid."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import yaml

from everlearn.runs.run_dir import MARKER
from everlearn.runs.sweep import read_manifest
from tests.helpers.cli import call, one_line_error
from tests.helpers.sweep import write_stream


@pytest.mark.parametrize("args, named", [
    (["seed=[0,1"], "seed=[0,1"),
    (["seed=[]"], "seed=[]"),
    (["seed"], "'seed'"),
    (["seed={a: 1}"], None),  # a fixed override of the wrong type: named by the config check
    (["seed=[0,1]", "seed=[2]"], "seed=[2]"),
    (["strategy=[seqft]", "strategies=[[replay]]"], "strategies=[[replay]]"),
    (["order=1"], "order=1"),
    (["order=[0,2]"], "order=[0,2]"),
    (["order=[[red,blue]]"], "order=[[red,blue]]"),
    (["strategy=[seqft,nope]"], "strategies.0.name"),
    (["train.lrr=[1,2]"], "train.lrr"),
    (["train.steps=3"], "expected at least one axis"),
])
def test_bad_grid_is_one_line_error(tmp_path: Path, args, named):
    stream = write_stream(tmp_path)
    code, out, err = call(["sweep", str(stream), *args, "-o", str(tmp_path / "sw")])
    assert code == 2, err
    line = one_line_error(err)
    assert named is None or named in line
    assert not (tmp_path / "sw").exists()


def test_resume_refuses_grid_and_missing_manifest(tmp_path: Path):
    code, _, err = call(["sweep", "--resume", str(tmp_path), "seed=[0,1]"])
    assert code == 2 and "--resume" in one_line_error(err)
    code, _, err = call(["sweep", "--resume", str(tmp_path / "none")])
    assert code == 2 and "sweep.json: missing" in one_line_error(err)
    code, _, err = call(["sweep", str(write_stream(tmp_path)), "seed=[0]", "--jobs", "0"])
    assert code == 2 and "--jobs" in one_line_error(err)


# --- running -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sweep2x2(tmp_path_factory) -> dict:
    """strategy x seed on tiny runs (2 stages, 2 steps each), two points at a time."""
    tmp = tmp_path_factory.mktemp("sweep")
    stream = write_stream(tmp)
    sweep_dir = tmp / "sw"
    code, out, err = call(["sweep", str(stream), "strategy=[seqft,replay]", "seed=[0,1]",
                           "keep_stage_weights=all", "--jobs", "2", "-o", str(sweep_dir)])
    return {"dir": sweep_dir, "code": code, "out": out, "err": err, "tmp": tmp}


def test_sweep_runs_every_point_and_pools_seeds(sweep2x2):
    assert sweep2x2["code"] == 0, sweep2x2["err"] + sweep2x2["out"]
    sweep_dir: Path = sweep2x2["dir"]
    manifest = read_manifest(sweep_dir)
    names = [p["dir"] for p in manifest["points"]]
    assert names == ["00-strategy=seqft_seed=0", "01-strategy=seqft_seed=1",
                     "02-strategy=replay_seed=0", "03-strategy=replay_seed=1"]
    assert all(p["status"] == "complete" and p["exit_code"] == 0 for p in manifest["points"])
    for p in manifest["points"]:
        results = json.loads((sweep_dir / p["dir"] / "results.json").read_text())
        assert results["status"] == "complete"
        assert results["strategies"] == [p["values"]["strategy"]]
        cfg = yaml.safe_load((sweep_dir / p["dir"] / "config.yaml").read_text())
        assert cfg["seed"] == p["values"]["seed"] and cfg["keep_stage_weights"] == "all"
        assert (sweep_dir / p["dir"] / "report" / "index.html").is_file()
    rows = list(csv.DictReader(io.StringIO((sweep_dir / "compare.csv").read_text())))
    assert [(r["strategy"], r["n"], r["pooled"]) for r in rows] == [
        ("seqft", "2", "seeds 0,1"), ("replay", "2", "seeds 0,1")]
    md = (sweep_dir / "compare.md").read_text()
    assert "| seqft | 2 | seeds 0,1 |" in md and "| replay | 2 | seeds 0,1 |" in md
    assert "<table>" in (sweep_dir / "compare.html").read_text()
    assert "[4/4]" in sweep2x2["out"] and str(sweep_dir / "compare.md") in sweep2x2["out"]
    # the base row is the same model on the same data for every point: one entry per stage in
    # SWEEP_DIR/cache (two points running at once may both score it; they write the same entry)
    entries = list((sweep_dir / "cache" / "base-row").glob("*.json"))
    assert len(entries) == 2
    base_rows = {tuple(json.loads((sweep_dir / p["dir"] / "results.json").read_text())["R"][0])
                 for p in manifest["points"]}
    assert len(base_rows) == 1


def test_sweep_logs_its_points_and_each_point_its_run(sweep2x2):
    sweep_dir: Path = sweep2x2["dir"]
    text = (sweep_dir / "log.txt").read_text()
    assert "4 points, 0 complete, 4 to run, 2 at a time" in text
    for p in read_manifest(sweep_dir)["points"]:
        assert f"point {p['dir']}: started (process " in text
        assert f"point {p['dir']}: complete, exit 0, " in text
        point_log = (sweep_dir / p["dir"] / "log.txt").read_text()
        assert "phase 2: training green" in point_log and "run complete" in point_log
    assert "sweep finished: 4 of 4 points complete" in text
    assert f"comparison: {sweep_dir / 'compare.md'}" in text


def test_sweep_into_existing_sweep_is_refused(sweep2x2):
    stream = sweep2x2["tmp"] / "stream.yaml"
    code, _, err = call(["sweep", str(stream), "seed=[0]", "-o", str(sweep2x2["dir"])])
    assert code == 2 and "--resume" in one_line_error(err)


def test_resume_finishes_only_what_is_missing(sweep2x2, tmp_path: Path):
    """A sweep stopped with one point half done and one not started: --resume runs only
    those two, continuing the half-done one after its finished stage."""
    assert sweep2x2["code"] == 0
    sweep_dir = tmp_path / "sw"
    shutil.copytree(sweep2x2["dir"], sweep_dir)
    manifest = read_manifest(sweep_dir)
    done, half, _, new = [sweep_dir / p["dir"] for p in manifest["points"]]
    # half: stopped after phase 1 of 2
    res = json.loads((half / "results.json").read_text())
    res.update(R=res["R"][:2], cost=res["cost"][:1], status="running")
    res.pop("metrics")
    (half / "results.json").write_text(json.dumps(res))
    shutil.rmtree(half / "checkpoints" / "phase-02")
    # new: killed before its first results (only what the sweep planned: marker and config)
    for child in new.iterdir():
        if child.name not in ("config.yaml", MARKER):
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    (sweep_dir / "compare.md").unlink()
    untouched = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/results.json")
                 if p.parent not in (half, new)}
    assert len(untouched) == 2

    code, out, err = call(["sweep", "--resume", str(sweep_dir), "--jobs", "1", "-q"])
    assert code == 0, err + out
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
    for run_dir in (half, new):
        assert json.loads((run_dir / "results.json").read_text())["status"] == "complete"
    assert "resumed after phase 1 of 2" in (half / "log.txt").read_text()
    assert "resumed after phase" not in (new / "log.txt").read_text()
    assert all(p["status"] == "complete" for p in read_manifest(sweep_dir)["points"])
    assert "| seqft | 2 | seeds 0,1 |" in (sweep_dir / "compare.md").read_text()
    assert out.strip() == f"comparison: {sweep_dir / 'compare.md'}, {sweep_dir / 'compare.csv'}, " \
                          f"{sweep_dir / 'compare.html'}"
    assert done.exists()
