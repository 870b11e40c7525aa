"""Config: YAML -> RunConfig, overrides, paths, one-line errors, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from everlearn.config import DataSource, RunConfig, StrategySpec, dump_yaml
from everlearn.errors import ConfigError
from everlearn.validation import build_config, load_config
from tests.helpers.cli import call, one_line_error, write_config
from tests.helpers.config import one_stage, write_yaml


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    return write_yaml(tmp_path / "stream.yaml", one_stage())


def config_error(path: Path, overrides=(), data=None) -> str:
    """The message of the ConfigError raised by loading ``path`` (written from ``data``)."""
    if data is not None:
        write_yaml(path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    msg = str(info.value)
    assert "\n" not in msg, f"error is not one line: {msg!r}"
    return msg


# --- loading and defaults ------------------------------------------------------------------
def test_yaml_to_runconfig_with_defaults(cfg_file: Path):
    cfg = load_config(cfg_file)
    assert isinstance(cfg, RunConfig)
    defaults = RunConfig()
    assert cfg.train == defaults.train
    assert cfg.model == defaults.model
    assert cfg.eval == defaults.eval
    assert cfg.seed == 0 and cfg.scenario == "TIL"
    assert [s.name for s in cfg.strategies] == ["seqft"]
    (st,) = cfg.stages
    assert st.kind == "sft" and st.metric is None and st.labels == []
    # string shorthand -> DataSource; the stage name comes from the file stem
    assert isinstance(st.train, DataSource) and st.train.format == "auto"
    assert st.name == "a_train"


def test_exponent_without_dot_is_a_number(tmp_path: Path):
    # YAML 1.1 (PyYAML) reads 1e-3 as a string; users write it anyway
    path = tmp_path / "s.yaml"
    path.write_text("train: {lr: 1e-3, weight_decay: 5E-2}\nstages: [{builtin: dates}]\n")
    cfg = load_config(path)
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.train.weight_decay == pytest.approx(0.05)
    assert "train.lr: expected a number, got 'nan'" in config_error(path, ["train.lr=nan"])


def test_stage_name_from_superni_style_path(tmp_path: Path):
    path = write_yaml(tmp_path / "s.yaml", {"stages": [
        {"train": "task1687_x/train.json", "test": "task1687_x/test.json"}]})
    assert load_config(path).stages[0].name == "task1687_x"


def test_nested_values_are_typed(tmp_path: Path):
    data = one_stage(kind="cpt", max_train=5)
    data.update(train={"lr": 1, "steps": None, "epochs": 2}, model={"lora": {"r": 4}},
                scenario="DIL")
    cfg = load_config(write_yaml(tmp_path / "s.yaml", data))
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # int accepted as a number
    assert cfg.train.steps is None and cfg.train.epochs == 2.0
    assert cfg.model.lora.r == 4 and cfg.model.lora.alpha == 16  # sibling default kept
    assert cfg.stages[0].kind == "cpt" and cfg.stages[0].max_train == 5
    assert cfg.scenario == "DIL"


def test_relative_data_paths_resolve_against_yaml_directory(tmp_path: Path, monkeypatch):
    sub = tmp_path / "configs"
    sub.mkdir()
    write_yaml(sub / "s.yaml", {"stages": [
        {"train": "data/a.jsonl", "test": {"path": "/abs/b.jsonl"}},
        {"name": "hub", "train": "hf:org/set", "test": "hf:org/set"},
        {"builtin": "arithmetic"},
    ]})
    monkeypatch.chdir(tmp_path)  # a different working directory must not matter
    cfg = load_config(Path("configs/s.yaml"))
    st = cfg.stages
    assert st[0].train.path == str(sub.resolve() / "data/a.jsonl")
    assert st[0].test.path == "/abs/b.jsonl"
    assert st[1].train.path == "hf:org/set"  # not a file path: untouched
    assert st[2].train is None and st[2].name == "arithmetic"


def test_relative_model_path_resolves(tmp_path: Path):
    data = one_stage()
    data["model"] = {"name": "./models/m.gguf"}
    cfg = load_config(write_yaml(tmp_path / "s.yaml", data))
    assert cfg.model.name == str(tmp_path.resolve() / "models/m.gguf")
    data["model"] = {"name": "HuggingFaceTB/SmolLM2-135M"}  # a Hub id is not a path
    assert load_config(write_yaml(tmp_path / "s.yaml", data)).model.name == data["model"]["name"]


def test_strategy_alias_and_shorthands(tmp_path: Path):
    data = one_stage()
    data["strategy"] = "replay"
    assert load_config(write_yaml(tmp_path / "s.yaml", data)).strategies == [
        StrategySpec("replay", {})]
    data["strategy"] = [{"name": "replay", "buffer_size": 5}, "seqft"]
    cfg = load_config(write_yaml(tmp_path / "s.yaml", data))
    assert cfg.strategies == [StrategySpec("replay", {"buffer_size": 5}), StrategySpec("seqft")]


# --- overrides -----------------------------------------------------------------------------
def test_overrides(cfg_file: Path):
    cfg = load_config(cfg_file, [
        "train.lr=1e-4", "stages.0.max_train=200", "strategy=[replay]",
        "strategies.0.options.buffer_size=10", "stages.0.train.format=jsonl", "seed=7",
        "train.precision=fp32",
    ])
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.stages[0].max_train == 200
    assert cfg.strategies == [StrategySpec("replay", {"buffer_size": 10})]
    # the override reached inside the string shorthand and kept its path
    assert cfg.stages[0].train.format == "jsonl"
    assert cfg.stages[0].train.path.endswith("data/a_train.jsonl")
    assert cfg.stages[0].test.format == "auto"
    assert cfg.seed == 7 and cfg.train.precision == "fp32"


def test_override_plain_strategy_name_and_null(cfg_file: Path):
    cfg = load_config(cfg_file, ["strategy=replay", "train.max_grad_norm=null"])
    assert [s.name for s in cfg.strategies] == ["replay"]
    assert cfg.train.max_grad_norm is None


def test_overrides_do_not_mutate_base_data():
    base = one_stage()
    base["train"] = {"lr": 0.5}
    load_config(None, ["train.lr=0.1", "stages.0.max_train=3"], base=base)
    assert base["train"] == {"lr": 0.5}
    assert "max_train" not in base["stages"][0]


@pytest.mark.parametrize("override, field", [
    ("train.lr", "train.lr"),  # no '='
    ("stages.3.max_train=1", "stages.3"),  # index out of range
    ("stages.x.max_train=1", "stages.x"),  # not an index
    ("train.nope=1", "train.nope"),
    ("train.lr=fast", "train.lr"),
    ("train.steps=2.5", "train.steps"),
])
def test_bad_override_is_one_line_naming_file_and_field(cfg_file: Path, override, field):
    msg = config_error(cfg_file, [override])
    assert str(cfg_file) in msg
    assert field in msg


def test_override_index_error_says_the_bound(cfg_file: Path):
    assert "expected an index below 1" in config_error(cfg_file, ["stages.3.max_train=1"])


def test_override_into_an_absent_list(cfg_file: Path):
    # no `strategies` in the file: the index has nothing to point at
    msg = config_error(cfg_file, ["strategies.0.options.buffer_size=3"])
    assert msg.startswith(f"{cfg_file}: override ") and "strategies.0: the list is empty" in msg


# --- errors --------------------------------------------------------------------------------
def test_unknown_field(tmp_path: Path):
    msg = config_error(tmp_path / "s.yaml", data={**one_stage(), "trian": {"lr": 1}})
    assert msg.startswith(f"{tmp_path / 's.yaml'}: trian: unknown field")
    assert "train" in msg  # lists the valid names

    data = one_stage(max_trian=3)
    msg = config_error(tmp_path / "s.yaml", data=data)
    assert "stages.0.max_trian: unknown field" in msg and "max_train" in msg


def test_wrong_type(tmp_path: Path):
    data = {**one_stage(), "train": {"batch_size": "eight"}}
    msg = config_error(tmp_path / "s.yaml", data=data)
    assert msg == f"{tmp_path / 's.yaml'}: train.batch_size: expected an integer, got 'eight'"

    data = {**one_stage(), "train": {"group_by_length": "yes"}}
    assert "train.group_by_length: expected true or false" in config_error(
        tmp_path / "s.yaml", data=data)

    data = one_stage()
    data["stages"][0]["train"] = {"path": "a.jsonl", "fields": ["q"]}
    assert "stages.0.train.fields: expected a mapping" in config_error(
        tmp_path / "s.yaml", data=data)


def test_bad_literal_lists_choices(tmp_path: Path):
    msg = config_error(tmp_path / "s.yaml", data=one_stage(kind="dpo"))
    assert "stages.0.kind" in msg and "'sft'" in msg and "'cpt'" in msg and "'dpo'" in msg
    msg = config_error(tmp_path / "s.yaml", data={**one_stage(), "scenario": "XIL"})
    assert "scenario: expected one of 'TIL', 'DIL', 'CIL'" in msg


def test_semantic_range_errors(tmp_path: Path):
    p = tmp_path / "s.yaml"
    assert "train.lr: expected a positive number" in config_error(
        p, data={**one_stage(), "train": {"lr": 0}})
    assert "train.max_length" in config_error(p, data={**one_stage(), "train": {"max_length": 4}})
    assert "stages.0.max_test" in config_error(p, data=one_stage(max_test=0))
    assert "stages.0.metric" in config_error(p, data=one_stage(kind="cpt", metric="accuracy"))
    assert "stages.0.test: expected a data path" in config_error(
        p, data={"stages": [{"train": "a.jsonl"}]})
    assert "stages.0.builtin" in config_error(
        p, data={"stages": [{"builtin": "arithmetic", "train": "a.jsonl"}]})


@pytest.mark.parametrize("data", [{"name": "x"}, {"stages": []}, {}])
def test_missing_stages(tmp_path: Path, data):
    msg = config_error(tmp_path / "s.yaml", data=data)
    assert msg == f"{tmp_path / 's.yaml'}: stages: expected at least one stage"


def test_empty_file_is_missing_stages(tmp_path: Path):
    path = tmp_path / "s.yaml"
    path.write_text("")
    assert config_error(path).endswith("stages: expected at least one stage")


def test_duplicate_stage_names(tmp_path: Path):
    data = {"stages": [{"train": "a/x.jsonl", "test": "t.jsonl"},
                       {"train": "b/x.jsonl", "test": "t.jsonl"}]}
    msg = config_error(tmp_path / "s.yaml", data=data)
    assert str(tmp_path / "s.yaml") in msg
    assert "stages.1.name" in msg and "'x'" in msg


def test_invalid_yaml_names_line(tmp_path: Path):
    path = tmp_path / "s.yaml"
    path.write_text("stages:\n  - train: a.jsonl\n    test: [b.jsonl\nseed: 1\n")
    msg = config_error(path)
    assert msg.startswith(f"{path}: line ")
    assert "invalid YAML" in msg
    path.write_text("seed: 1\nstages:\n  - train: a.jsonl\n   test: b.jsonl\n")
    assert config_error(path).startswith(f"{path}: line 4: invalid YAML")


def test_non_mapping_top_level(tmp_path: Path):
    path = tmp_path / "s.yaml"
    path.write_text("- train: a.jsonl\n")
    assert config_error(path) == f"{path}: expected a mapping at the top level, got list"


def test_missing_file(tmp_path: Path):
    msg = config_error(tmp_path / "nope.yaml")
    assert msg == f"{tmp_path / 'nope.yaml'}: file not found"


def test_strategy_and_strategies_together(tmp_path: Path):
    msg = config_error(tmp_path / "s.yaml",
                       data={**one_stage(), "strategy": "replay", "strategies": ["seqft"]})
    assert str(tmp_path / "s.yaml") in msg and "strategy" in msg


def test_build_config_names_the_source():
    with pytest.raises(ConfigError, match=r"^mine\.yaml: seed: expected an integer"):
        build_config({**one_stage(), "seed": "x"}, "mine.yaml")


# --- resolved YAML round trip --------------------------------------------------------------
def test_dump_yaml_round_trip(tmp_path: Path):
    data = {
        "name": "rt", "seed": 3, "scenario": "CIL",
        "model": {"name": "tiny-llama", "finetune": "full", "lora": {"target_modules": ["q"]}},
        "train": {"lr": 1e-4, "steps": None, "epochs": 1.5, "precision": "fp32"},
        "stages": [
            {"train": {"path": "a.jsonl", "fields": {"prompt": "q"}}, "test": "b.jsonl",
             "metric": "accuracy", "labels": ["yes", "no"], "max_test": 4},
            {"name": "news", "kind": "cpt", "train": "news.txt", "test": "news_test.txt"},
            {"builtin": "dates"},
        ],
        "strategy": [{"name": "replay", "buffer_size": 7}],
    }
    cfg = load_config(write_yaml(tmp_path / "s.yaml", data))
    out = tmp_path / "elsewhere" / "config.yaml"
    out.parent.mkdir()
    out.write_text(dump_yaml(cfg), encoding="utf-8")
    again = load_config(out)
    assert again == cfg
    assert again.stages[0].train.path == str(tmp_path.resolve() / "a.jsonl")
    assert dump_yaml(again) == dump_yaml(cfg)


def test_strategy_path_options_resolve_against_the_config_file(tmp_path: Path):
    sub = tmp_path / "cfgdir"
    sub.mkdir()
    (sub / "corpus.txt").write_text("general text\n")
    (sub / "run.yaml").write_text(
        "stages:\n  - builtin: cipher\n"
        "strategy:\n  - {name: general_mix, path: corpus.txt}\n")
    cfg = load_config(sub / "run.yaml")
    assert cfg.strategies[0].options["path"] == str(sub / "corpus.txt")


def test_stage_name_with_control_characters_is_refused(tmp_path: Path):
    data = {"stages": [{"name": "bad\x1ename", "builtin": "dates"}]}
    msg = config_error(tmp_path / "s.yaml", data=data)
    assert "stages.0.name: expected a name without control characters" in msg


# --- ranges declared on the fields (issue #22: each a one-line error, none a traceback) ------
@pytest.mark.parametrize("where, value, expected", [
    ("train.steps", 0, "expected an integer >= 1 or null, got 0"),
    ("train.steps", -5, "expected an integer >= 1 or null, got -5"),
    ("train.weight_decay", -1, "expected a number >= 0, got -1.0"),
    ("train.max_grad_norm", -1, "expected a positive number or null, got -1.0"),
    ("train.lr", 0, "expected a positive number, got 0.0"),
    ("train.lr", float("inf"), "expected a finite number, got inf"),
    ("model.lora.dropout", 5, "expected 0 <= x < 1, got 5.0"),
    ("model.lora.alpha", -16, "expected an integer >= 1, got -16"),
    ("seed", -1, "expected 0 <= x <= 4294967295, got -1"),
    ("seed", 2**40, "expected 0 <= x <= 4294967295, got 1099511627776"),
    ("eval.max_new_tokens", 0, "expected an integer >= 1 or null, got 0"),
    ("eval.max_new_tokens", -3, "expected an integer >= 1 or null, got -3"),
    ("stages.0.labels", ["", ""], "expected a list of non-empty strings without repeats"),
    ("stages.0.lr", -1, "expected a positive number or null, got -1.0"),
    ("edit.lr", float("inf"), "expected a finite number or null, got inf"),
    ("recycle.update_lr", 0, "expected a positive number or null, got 0.0"),
    ("recycle.lr", -0.1, "expected a positive number or null, got -0.1"),
])
def test_out_of_range_values_are_one_line_naming_file_and_field(tmp_path, where, value,
                                                                expected):
    data = one_stage()
    node, *path = where.split(".")
    parent = data
    for key in [node, *path][:-1]:
        parent = parent[int(key)] if key.isdigit() else parent.setdefault(key, {})
    parent[[node, *path][-1]] = value
    msg = config_error(tmp_path / "s.yaml", data=data)
    assert msg.startswith(f"{tmp_path / 's.yaml'}: {where}: {expected}"), msg


@pytest.mark.parametrize("where, value", [("train.epochs", -1), ("train.epochs", 0),
                                          ("stages.0.epochs", 0)])
def test_epochs_must_be_positive(tmp_path, where, value):
    data = one_stage()
    data["train"] = {"steps": None, "epochs": 1}
    if where.startswith("train."):
        data["train"]["epochs"] = value
    else:
        data["stages"][0]["epochs"] = value
    msg = config_error(tmp_path / "s.yaml", data=data)
    assert msg.startswith(f"{tmp_path / 's.yaml'}: {where}: expected a positive number or null")


def test_every_learning_rate_field_declares_the_same_rule():
    import dataclasses

    from everlearn.config import LEARNING_RATE, EditConfig, RecycleConfig, StageConfig, TrainConfig
    from everlearn.schema import Range, field_range

    fields = {cls: {f.name: f for f in dataclasses.fields(cls)} for cls in
              (TrainConfig, StageConfig, EditConfig, RecycleConfig)}
    for cls, name in [(TrainConfig, "lr"), (StageConfig, "lr"), (EditConfig, "lr"),
                      (RecycleConfig, "update_lr"), (RecycleConfig, "lr")]:
        assert field_range(fields[cls][name]) == Range(**LEARNING_RATE), (cls, name)


def test_ranges_are_checked_on_overrides_too(cfg_file: Path):
    msg = config_error(cfg_file, ["train.batch_size=0"])
    assert msg == f"{cfg_file}: train.batch_size: expected an integer >= 1, got 0"


def test_config_imports_no_registry():
    """config sits below the registries that use its fields: it must not import them back."""
    import ast

    import everlearn.config

    tree = ast.parse(Path(everlearn.config.__file__).read_text(encoding="utf-8"))
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in modules if m and m.startswith(("everlearn.stages",
                                                          "everlearn.strategies",
                                                          "everlearn.data"))}


def test_a_key_given_twice_in_the_config_is_refused(tmp_path):
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text() + "seed: 7\n" if "seed:" in cfg.read_text()
                   else "seed: 0\n" + cfg.read_text() + "seed: 7\n")
    code, _, err = call(["validate", str(cfg)])
    assert code == 2 and "invalid YAML (duplicate key 'seed', first at line" in one_line_error(err)
