"""everlearn.runs.config_source: CONFIG, --preset or the quickstart, plus overrides."""

from __future__ import annotations

import pytest

from everlearn.errors import EverlearnError
from everlearn.runs.config_source import load_run_config, split_overrides


def test_a_first_positional_with_equals_that_is_no_file_is_an_override(tmp_path):
    assert split_overrides("train.lr=1", ["seed=2"]) == (None, ["train.lr=1", "seed=2"])
    real = tmp_path / "a=b.yaml"
    real.write_text("")
    assert split_overrides(str(real), []) == (str(real), [])
    assert split_overrides(None, ["seed=1"]) == (None, ["seed=1"])


def test_config_and_preset_together_are_refused():
    with pytest.raises(EverlearnError, match="either CONFIG or --preset"):
        load_run_config("stream.yaml", [], "smoke")


def test_an_unknown_preset_names_the_known_ones():
    with pytest.raises(EverlearnError, match="--preset: expected one of .*quickstart"):
        load_run_config(None, [], "nope")


def test_a_preset_with_overrides():
    cfg, source = load_run_config(None, ["seed=7"], "smoke")
    assert (cfg.seed, source) == (7, "<preset smoke>")


def test_benchmark_flags_become_overrides_and_need_each_other(tmp_path):
    import pytest as _pytest

    from everlearn.errors import EverlearnError
    from everlearn.runs.config_source import benchmark_overrides, load_run_config
    from tests.helpers.benchmark_layouts import write_trace

    with _pytest.raises(EverlearnError, match="--order and --data-dir go with --benchmark"):
        benchmark_overrides(None, 2, None)
    with _pytest.raises(EverlearnError, match="give --data-dir DIR"):
        benchmark_overrides("trace", None, None)
    write_trace(tmp_path)
    flags = benchmark_overrides("trace", 1, str(tmp_path))
    cfg, source = load_run_config(None, ["benchmark.tasks=2", "model.name=tiny-llama"],
                                  benchmark=flags)
    assert source == "<benchmark trace>" and cfg.name == "trace"
    assert [s.name for s in cfg.stages] == ["C-STANCE", "FOMC"]
    assert cfg.strategies[0].name == "seqft" and cfg.model.name == "tiny-llama"
