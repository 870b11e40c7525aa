"""Hostile input, table-driven (issue 22): every case is a command on a bad input, the exit
code it must end with, one line on stderr that names the file and the field, no traceback,
and no file outside the run directory changed. The table (tests/helpers/hostile.py) is
generated from the config fields' declared ranges and types, strategy options and damaged data
files, plus the cases of the issue written by hand; docs/benchmarks.md records its count."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from everlearn.runs.runner import start_run
from everlearn.validation import load_config
from tests.helpers.cli import call, write_config
from tests.helpers.hostile import (
    CONFIG,
    all_cases,
    config_for,
    console_logging,
    filled,
    snapshot,
)

CASES = all_cases()


def test_the_table_has_at_least_300_cases():
    assert len(CASES) >= 300, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES), "case ids repeat"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """The Hub is offline here: a model name that names nothing fails at once, not after the
    download retries."""
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished two-stage run (3 steps a stage) that resume cases copy and damage."""
    ws = tmp_path_factory.mktemp("finished")
    start_run(load_config(write_config(ws)), ws / "done", quiet=True)
    return ws / "done"


def workspace(tmp_path: Path) -> tuple[Path, dict]:
    """The valid config's data in ``tmp_path``, and the config (runs under a nested
    output_dir, so a name that escaped it would still land in the workspace)."""
    base = yaml.safe_load(write_config(tmp_path).read_text())
    base["output_dir"] = str(tmp_path / "a" / "b" / "runs")
    return tmp_path, base


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_hostile_input_gets_one_line_naming_file_and_field(tmp_path, monkeypatch, case,
                                                             request):
    ws, base = workspace(tmp_path)
    monkeypatch.chdir(ws)  # anything written relative to the working directory shows too
    if case.needs_run:
        shutil.copytree(request.getfixturevalue("finished_run"), ws / "done")
    cfg_path = ws / CONFIG
    cfg_path.write_text(case.text if case.text is not None
                        else yaml.safe_dump(config_for(case, base, ws)), encoding="utf-8")
    if case.prepare is not None:
        case.prepare(ws)
    run = ws / "done" if case.needs_run else ws / "out"
    log = run / "log.txt"  # the run's log may only grow: a refused resume says why there
    log_before = log.read_bytes() if log.exists() else b""
    before = without(snapshot(ws, skip=run if case.writes_run else None), log, ws)
    argv = [a.format(cfg=cfg_path, ws=ws, run=run) for a in case.argv]
    try:
        with console_logging():
            code, _, err = call(argv)
    except BaseException as exc:  # noqa: BLE001 - a case must never escape main
        pytest.fail(f"{case.id}: {type(exc).__name__} escaped main: {exc}")
    assert "Traceback" not in err, err
    assert code == case.code, f"{case.id}: exit {code}, expected {case.code}: {err!r}"
    named = filled(case.named, ws)
    if case.code != 0:
        lines = err.strip("\n").splitlines()
        assert len(lines) == 1 and lines[0].startswith("everlearn: error: "), err
        assert all(n in lines[0] for n in named), f"{case.id}: {lines[0]!r} lacks {named}"
    elif case.warn:
        assert any(all(n in ln for n in named) for ln in err.splitlines()), (
            f"{case.id}: no line with {named} in {err!r}")
    assert without(snapshot(ws, skip=run if case.writes_run else None), log, ws) == before, (
        f"{case.id}: files outside the run directory changed")
    assert not log.exists() or log.read_bytes().startswith(log_before), (
        f"{case.id}: the run's log.txt lost earlier lines")


def without(files: dict[str, str], log: Path, ws: Path) -> dict[str, str]:
    return {k: v for k, v in files.items() if k != str(log.relative_to(ws))}
