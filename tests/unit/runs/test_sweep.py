"""``everlearn sweep`` planning (``runs.sweep``): grid expansion, slugs, order permutations, the
resolved config per point, threads per child."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from everlearn.runs.sweep import (
    child_env,
    expand,
    parse_grid,
    permutation,
    plan_sweep,
    read_manifest,
    slugs,
)
from tests.helpers.sweep import write_stream


# --- grid ------------------------------------------------------------------------------------
def test_grid_expansion_and_slugs():
    axes, fixed = parse_grid(["strategy=[seqft,replay]", "train.steps=3", "seed=[0,1,2]",
                              "order=[0,[b,a]]", "train.lr=[1e-4]"])
    assert fixed == ["train.steps=3"]
    assert [a.key for a in axes] == ["strategy", "seed", "order", "train.lr"]
    points = expand(axes)
    assert len(points) == 2 * 3 * 2 * 1
    # the first axis varies slowest, the last fastest
    assert points[:3] == [{"strategy": "seqft", "seed": 0, "order": 0, "train.lr": "1e-4"},
                          {"strategy": "seqft", "seed": 0, "order": ["b", "a"],
                           "train.lr": "1e-4"},
                          {"strategy": "seqft", "seed": 1, "order": 0, "train.lr": "1e-4"}]
    assert points[6] == {"strategy": "replay", "seed": 0, "order": 0, "train.lr": "1e-4"}
    names = slugs(points, axes)
    assert len(set(names)) == len(names) == 12
    assert names[0] == "00-strategy=seqft_seed=0_order=0_lr=1e-4"
    assert names[1] == "01-strategy=seqft_seed=0_order=b+a_lr=1e-4"
    assert names[11] == "11-strategy=replay_seed=2_order=b+a_lr=1e-4"


def test_slugs_of_composed_and_clashing_keys():
    axes, _ = parse_grid(["strategy=[[replay,ewc],{name: replay, buffer_size: 50}]",
                          "train.steps=[1,2]", "stages.0.steps=[3]"])
    names = slugs(expand(axes), axes)
    assert names[0] == "00-strategy=replay+ewc_train.steps=1_stages.0.steps=3"
    assert names[2] == "02-strategy=replay-buffer_size-50_train.steps=1_stages.0.steps=3"
    assert len(set(names)) == 4


def test_order_permutations_are_distinct_and_fixed():
    assert permutation(0, 4) == [0, 1, 2, 3]
    perms = [tuple(permutation(k, 3)) for k in range(6)]
    assert len(set(perms)) == 6 and sorted(perms) == sorted(
        {(a, b, c) for a in range(3) for b in range(3) for c in range(3)
         if len({a, b, c}) == 3})
    assert permutation(1, 3) == permutation(1, 3)
    with pytest.raises(ValueError, match="2 stages have 2 orders"):
        permutation(2, 2)


def test_plan_writes_resolved_config_per_point(tmp_path: Path):
    stream = write_stream(tmp_path, names=("red", "green", "blue"))
    sweep_dir = plan_sweep(str(stream), ["order=[0,1,[blue,red,green]]", "train.lr=[1e-4,3e-3]",
                                         "stages.0.max_train=4"], None,
                           str(tmp_path / "sw"))
    manifest = read_manifest(sweep_dir)
    assert manifest["axes"] == {"order": [0, 1, ["blue", "red", "green"]],
                                "train.lr": ["1e-4", "3e-3"]}
    assert manifest["overrides"] == ["stages.0.max_train=4"]
    assert manifest["config"] == str(stream.resolve())
    points = manifest["points"]
    assert len(points) == 6 and all(p["status"] == "pending" for p in points)
    assert points[0]["stages"] == ["red", "green", "blue"]
    assert sorted(points[2]["stages"]) == ["blue", "green", "red"]
    assert points[2]["stages"] != points[0]["stages"]
    assert points[4]["stages"] == ["blue", "red", "green"]
    for p in points:
        cfg = yaml.safe_load((sweep_dir / p["dir"] / "config.yaml").read_text())
        assert [s["name"] for s in cfg["stages"]] == p["stages"]
        assert cfg["train"]["lr"] == float(p["values"]["train.lr"])
        # overrides index stages in the config's order: red keeps its max_train when moved
        red = next(s for s in cfg["stages"] if s["name"] == "red")
        assert red["max_train"] == 4
        assert not (sweep_dir / p["dir"] / "results.json").exists()


def test_child_threads_split_the_cores(monkeypatch):
    import everlearn.runs.sweep as sweep

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(sweep, "cores", lambda: 16)
    assert child_env(4)["OMP_NUM_THREADS"] == "4" and child_env(4)["MKL_NUM_THREADS"] == "4"
    assert child_env(32)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's setting wins
    assert child_env(4)["OMP_NUM_THREADS"] == "3"
