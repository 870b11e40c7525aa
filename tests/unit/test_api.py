"""everlearn.api: configs from a path, a dict or a RunConfig with dotted or nested overrides,
the typed results reader, and a package import that stays torch-free."""

from __future__ import annotations

import json

import pytest
import yaml

import everlearn
from everlearn.api import build_run_config, flatten_overrides
from everlearn.errors import ConfigError, EverlearnError
from everlearn.runs.results import Results
from tests.conftest import constant_task, tiny_config
from tests.helpers.torch_free import assert_runs_without_heavy_imports


def test_import_everlearn_and_its_api_names_load_no_torch():
    assert_runs_without_heavy_imports(
        "import everlearn\n"
        "assert callable(everlearn.run) and callable(everlearn.load_results)\n"
        "assert everlearn.run.__module__ == 'everlearn.api'")


def test_the_package_exposes_the_api_and_nothing_unknown():
    assert {"run", "resume", "evaluate", "load_results", "export"} <= set(dir(everlearn))
    assert everlearn.resume is everlearn.api.resume
    with pytest.raises(AttributeError, match="no attribute 'rnu'"):
        everlearn.rnu  # noqa: B018


def test_flatten_overrides_merges_nested_dicts_and_keeps_strategies_whole():
    assert flatten_overrides({"train": {"lr": 1e-4, "steps": 3}, "seed": 2,
                              "strategy": {"name": "replay", "buffer_size": 5},
                              "stages.0.max_train": 4}) == [
        ("train.lr", 1e-4), ("train.steps", 3), ("seed", 2),
        ("strategy", {"name": "replay", "buffer_size": 5}), ("stages.0.max_train", 4)]


@pytest.fixture
def stream(tmp_path):
    return tiny_config(tmp_path, [constant_task(tmp_path, "red", "alpha", 4, 2),
                                  constant_task(tmp_path, "green", "bravo", 4, 2)])


def test_a_dict_with_dotted_and_nested_overrides(stream):
    cfg, source = build_run_config(stream, {"train.lr": 1e-5, "train": {"steps": 7},
                                            "stages.1.max_train": 2, "strategy": "replay"})
    assert source == "<dict>"
    assert (cfg.train.lr, cfg.train.steps, cfg.train.batch_size) == (1e-5, 7, 8)
    assert cfg.stages[1].max_train == 2
    assert [s.name for s in cfg.strategies] == ["replay"]
    assert stream["train"]["lr"] == 3e-3  # the caller's dict is left as it was


def test_a_yaml_path_resolves_data_against_its_directory(tmp_path, stream, monkeypatch):
    for st in stream["stages"]:
        st["train"], st["test"] = (st[k].rsplit("/", 1)[1] for k in ("train", "test"))
    (tmp_path / "stream.yaml").write_text(yaml.safe_dump(stream))
    monkeypatch.chdir(tmp_path.parent)
    cfg, source = build_run_config(str(tmp_path / "stream.yaml"), {"seed": 5})
    assert source.endswith("stream.yaml") and cfg.seed == 5
    assert cfg.stages[0].train.path == str(tmp_path / "red_train.jsonl")


def test_a_run_config_takes_overrides_too(stream):
    first, _ = build_run_config(stream)
    again, source = build_run_config(first, {"train": {"lr": 2e-4}})
    assert source == "<RunConfig>" and again.train.lr == 2e-4 and first.train.lr == 3e-3
    assert again.stages[0].train.path == first.stages[0].train.path


def test_presets_and_bad_input(stream):
    cfg, source = build_run_config(None, {"train.steps": 2}, preset="smoke")
    assert source == "<preset smoke>" and cfg.train.steps == 2
    with pytest.raises(EverlearnError, match="preset: expected one of"):
        build_run_config(None, preset="nope")
    with pytest.raises(EverlearnError, match="either a config or preset="):
        build_run_config(stream, preset="smoke")
    with pytest.raises(EverlearnError, match="expected a YAML path, a dict or a RunConfig"):
        build_run_config(42)
    with pytest.raises(ConfigError, match=r"<dict>: override 'stages.5.max_train=1'"):
        build_run_config(stream, {"stages.5.max_train": 1})
    with pytest.raises(ConfigError, match="train.lr"):
        build_run_config(stream, {"train.lr": "fast"})


def test_load_results_gives_the_typed_results_of_the_file(tmp_path):
    res = Results(status="complete", name="n", scenario="task", strategies=["seqft"],
                  model="tiny", finetune="lora", stages=[{"name": "a"}], phases=[["a"]],
                  rows=["base", "a"], R=[[10.0], [80.0]], base_eval_time_s=0.5,
                  cost=[{"phase": 1}], strategy_metrics={}, metrics={"ap": 80.0},
                  general={"general": {"x": 1}, "general_kl": {"scores": [0.1]}})
    (tmp_path / "results.json").write_text(res.to_json())
    loaded = everlearn.load_results(tmp_path)
    assert isinstance(loaded, Results) and loaded == res
    assert loaded.to_json() == res.to_json()
    data = json.loads(res.to_json())
    data["added_by_a_later_version"] = 1
    (tmp_path / "results.json").write_text(json.dumps(data))
    assert everlearn.load_results(tmp_path) == res


def test_load_results_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(EverlearnError, match="no such run directory"):
        everlearn.load_results(tmp_path / "missing")
    (tmp_path / "results.json").write_text(json.dumps({"R": [[1.0]], "stages": [{"name": "a"}]}))
    with pytest.raises(EverlearnError, match="results.json: status: missing"):
        everlearn.load_results(tmp_path)
