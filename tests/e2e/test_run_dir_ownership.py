"""Files the user owns: a run writes only into a directory everlearn made (a marker file), a
new one or an empty one; anything else is refused in one line and left exactly as it was."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from everlearn.runs.run_dir import MARKER
from tests.helpers.cli import call, one_line_error, write_config


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (links as their target)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[str(p)] = os.readlink(p).encode() if p.is_symlink() else p.read_bytes()
    return out


def user_project(tmp: Path, cfg: Path) -> Path:
    """The user's own project: a commented copy of a valid stream config, and notes."""
    proj = tmp / "proj"
    proj.mkdir()
    (proj / "config.yaml").write_text("# my own notes, keep them\n" + cfg.read_text())
    (proj / "notes.md").write_text("do not touch")
    return proj


def refused(tmp: Path, argv: list[str], expected: str) -> None:
    before = snapshot(tmp)
    code, _, err = call(argv)
    line = one_line_error(err)
    assert code == 2 and expected in line, line
    assert snapshot(tmp) == before  # nothing written, nothing changed


def test_a_directory_of_the_users_own_is_never_written_into(tmp_path):
    cfg = write_config(tmp_path)
    proj = user_project(tmp_path, cfg)
    refused(tmp_path, ["run", str(cfg), "--output", str(proj), "-q"],
            f"{proj}: holds files everlearn did not write")
    # started from the very config inside it
    refused(tmp_path, ["run", str(proj / "config.yaml"), "--output", str(proj), "-q"],
            "holds files everlearn did not write")
    refused(tmp_path, ["run", "--resume", str(proj), "-q"],
            f"{proj}: not a run directory everlearn made")


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/absolute", "", "..", "a/b"])
def test_a_run_name_is_a_name_not_a_path(tmp_path, name):
    cfg = write_config(tmp_path)  # output_dir is tmp_path/runs
    refused(tmp_path, ["run", str(cfg), f"name={name!r}", "-q"], "name: expected a run name")
    assert not any(p.name.startswith("escaped") for p in tmp_path.parent.parent.iterdir())
    assert not list(Path("/tmp").glob("absolute-*"))  # where an absolute name would write


def test_outputs_that_are_not_directories_are_refused_in_one_line(tmp_path):
    cfg = write_config(tmp_path)
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    for output, expected in ((a_file, "exists and is not a directory"),
                             (a_file / "sub", f"{a_file} is a file, not a directory"),
                             (dangling, "a symbolic link to nothing")):
        refused(tmp_path, ["run", str(cfg), "--output", str(output), "-q"], expected)
    refused(tmp_path, ["run", str(cfg), "--output", "", "-q"],
            "--output: expected a directory for the run, got ''")


def test_a_new_or_empty_directory_becomes_a_marked_run_directory(tmp_path):
    cfg = write_config(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = call(["run", str(cfg), "--output", str(empty), "-q"])
    assert code == 0, err
    assert (empty / MARKER).exists() and (empty / "results.json").exists()
    # a second run into it is refused; a resume of it is not
    refused(tmp_path, ["run", str(cfg), "--output", str(empty), "-q"], "already holds a run")
    assert call(["run", "--resume", str(empty), "-q"])[0] == 0


def test_a_sweep_never_writes_into_the_users_directory(tmp_path):
    cfg = write_config(tmp_path)
    proj = user_project(tmp_path, cfg)
    refused(tmp_path, ["sweep", str(cfg), "seed=[0,1]", "--output", str(proj)],
            f"{proj}: holds files everlearn did not write")
    assert (proj / "config.yaml").read_text().startswith("# my own notes")
