"""Building strategies from the config (``strategies.build_strategy``): names, options, replay
budgets and composition, each error in one line naming the file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from everlearn.config import StrategySpec
from everlearn.errors import ConfigError
from everlearn.strategies import build_strategy
from everlearn.validation import load_config
from tests.helpers.config import one_stage, write_yaml


def test_build_strategy_validates_names_and_options():
    stack = build_strategy([StrategySpec("replay", {"buffer_size": 5}), StrategySpec("seqft")])
    assert stack.names == ["replay", "seqft"]
    with pytest.raises(ConfigError, match=r"strategies\.0\.name: expected one of"):
        build_strategy([StrategySpec("nope")])
    with pytest.raises(ConfigError, match=r"strategies\.0\.options\.mix_ratio: expected 0 <= x"):
        build_strategy([StrategySpec("replay", {"mix_ratio": 1.5})])
    with pytest.raises(ConfigError, match=r"strategies\.0\.options\.bogus: unknown field"):
        build_strategy([StrategySpec("replay", {"bogus": 1})])
    with pytest.raises(ConfigError, match="does not compose"):
        build_strategy([StrategySpec("joint"), StrategySpec("replay")])


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    return write_yaml(tmp_path / "stream.yaml", one_stage())


# --- strategy options ----------------------------------------------------------------------
def strategy_error(cfg_file: Path, overrides: list[str]) -> str:
    cfg = load_config(cfg_file, overrides)
    with pytest.raises(ConfigError) as info:
        build_strategy(cfg.strategies, str(cfg_file))
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{cfg_file}: ")
    return msg


def test_build_strategy_ok(cfg_file: Path):
    cfg = load_config(cfg_file, ["strategy=[replay]", "strategies.0.options.buffer_size=10",
                                 "strategies.0.options.selection=reservoir"])
    stack = build_strategy(cfg.strategies, "s.yaml")
    assert stack.names == ["replay"]
    assert stack.members[0].options.buffer_size == 10
    assert stack.members[0].options.selection == "reservoir"
    cfg = load_config(cfg_file, ["strategy=[replay]", "strategies.0.options.buffer_size=null",
                                 "strategies.0.options.buffer_fraction=0.25"])
    opts = build_strategy(cfg.strategies).members[0].options
    assert opts.buffer_size is None and opts.buffer_fraction == 0.25


def test_unknown_strategy(cfg_file: Path):
    msg = strategy_error(cfg_file, ["strategy=[ewc9000]"])
    assert "strategies.0.name" in msg and "ewc9000" in msg
    assert all(n in msg for n in ("seqft", "joint", "replay"))


def test_unknown_strategy_option(cfg_file: Path):
    msg = strategy_error(cfg_file, ["strategy=[replay]", "strategies.0.options.budget=3"])
    assert "strategies.0.options.budget: unknown field" in msg and "buffer_size" in msg


def test_strategy_option_wrong_type(cfg_file: Path):
    msg = strategy_error(cfg_file, ["strategy=[replay]", "strategies.0.options.mix_ratio=lots"])
    assert "strategies.0.options.mix_ratio: expected a number" in msg


@pytest.mark.parametrize("overrides, field", [
    (["strategies.0.options.buffer_size=10", "strategies.0.options.buffer_fraction=0.1"],
     "buffer_size"),  # both budgets set
    (["strategies.0.options.buffer_size=0"], "buffer_size"),
    (["strategies.0.options.buffer_size=null", "strategies.0.options.buffer_fraction=1.5"],
     "buffer_fraction"),
    (["strategies.0.options.selection=random"], "selection"),
    (["strategies.0.options.mix_ratio=1.0"], "mix_ratio"),
    (["strategies.0.options.buffer_size=null", "strategies.0.options.buffer_fraction=0.5",
      "strategies.0.options.selection=reservoir"], "selection"),
])
def test_replay_check_errors(cfg_file: Path, overrides, field):
    msg = strategy_error(cfg_file, ["strategy=[replay]", *overrides])
    assert f"strategies.0.options.{field}: expected" in msg or \
        f"strategies.0.options.{field}: reservoir" in msg


def test_both_replay_budgets_message(cfg_file: Path):
    msg = strategy_error(cfg_file, ["strategy=[replay]", "strategies.0.options.buffer_size=10",
                                    "strategies.0.options.buffer_fraction=0.1"])
    assert "exactly one of buffer_size or buffer_fraction" in msg


def test_replay_budget_defaults_and_fraction_alone():
    from everlearn.config import StrategySpec
    from everlearn.strategies import build_strategy

    (default,) = build_strategy([StrategySpec("replay")]).members
    assert default.options.buffer_size == 200 and default.options.buffer_fraction is None
    (frac,) = build_strategy([StrategySpec("replay", {"buffer_fraction": 0.1})]).members
    assert frac.options.buffer_size is None and frac.options.buffer_fraction == 0.1


def test_joint_does_not_compose(cfg_file: Path):
    msg = strategy_error(cfg_file, ["strategy=[joint, replay]"])
    assert "strategies:" in msg and "joint" in msg


def test_options_are_validated():
    bad = [("der", {"loss": "l1"}, "loss"), ("der", {"top_k": 0}, "top_k"),
           ("agem", {"selection": "fifo"}, "selection"),
           ("pseudo_replay", {"gen_ratio": 1.5}, "gen_ratio"),
           ("general_mix", {"ratio": 1.0}, "ratio")]
    for name, options, field in bad:
        with pytest.raises(ConfigError, match=rf"options\.{field}: expected"):
            build_strategy([StrategySpec(name, options)])
