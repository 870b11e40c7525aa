"""Strategy hooks and the replay buffer's defining properties (no model needed)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from everlearn.config import StrategySpec
from everlearn.data.records import Record
from everlearn.errors import ConfigError
from everlearn.stages.stream import Stage
from everlearn.strategies import build_strategy
from everlearn.strategies.base import RunContext, Strategy, StrategyStack
from everlearn.strategies.replay import Replay, ReplayOptions


def _stage(index: int, n: int) -> Stage:
    train = [Record(prompt=f"s{index} q{i}", answers=[f"a{i}"], task=f"s{index}")
             for i in range(n)]
    return Stage(index=index, name=f"s{index}", kind="sft", metric="exact_match",
                 train=train, test=train[:2])


def _ctx(seed: int = 0) -> RunContext:
    return RunContext(model=None, tokenizer=None, encoder=None, config=None, stream=None,
                      seed=seed)


def _replay(**options) -> Replay:
    r = Replay(ReplayOptions(**options))
    r.setup(_ctx())
    return r


def test_balanced_buffer_gives_every_stage_an_equal_share():
    r = _replay(buffer_size=30, selection="balanced")
    for i in (1, 2, 3):
        r.after_stage(_stage(i, 50))
    counts = Counter(idx for idx, _ in r.buffer)
    assert counts == {1: 10, 2: 10, 3: 10}
    # Records kept for a stage are that stage's own examples.
    assert all(rec.task == f"s{idx}" for idx, rec in r.buffer)


def test_balanced_buffer_spreads_the_remainder_and_shrinks_old_stages():
    r = _replay(buffer_size=10, selection="balanced")
    r.after_stage(_stage(1, 50))
    assert len(r.buffer) == 10
    kept_first = [rec.prompt for _, rec in r.buffer]
    r.after_stage(_stage(2, 50))
    r.after_stage(_stage(3, 50))
    counts = Counter(idx for idx, _ in r.buffer)
    assert sorted(counts.values()) == [3, 3, 4] and sum(counts.values()) == 10
    # Shrinking keeps a prefix of what was kept before, so no stage is re-sampled.
    survivors = [rec.prompt for idx, rec in r.buffer if idx == 1]
    assert survivors == kept_first[: len(survivors)]


def test_fraction_budget_keeps_that_share_of_each_stage():
    r = _replay(buffer_size=None, buffer_fraction=0.1)
    r.after_stage(_stage(1, 50))
    r.after_stage(_stage(2, 200))
    assert Counter(idx for idx, _ in r.buffer) == {1: 5, 2: 20}


def test_reservoir_is_bounded_and_close_to_uniform():
    kept = Counter()
    for seed in range(40):
        r = Replay(ReplayOptions(buffer_size=20, selection="reservoir"))
        r.setup(_ctx(seed))
        for i in (1, 2, 3, 4):
            r.after_stage(_stage(i, 50))
        assert len(r.buffer) == 20 and r.n_seen == 200
        kept.update(idx for idx, _ in r.buffer)
    # Every example is kept with probability 20/200 whatever its stage: ~200 per stage.
    assert all(120 < kept[i] < 280 for i in (1, 2, 3, 4)), kept


def test_mix_ratio_sets_the_share_of_replayed_examples():
    r = _replay(buffer_size=100, mix_ratio=0.2)
    first = _stage(1, 100)
    assert r.train_data(first, first.train) == first.train  # empty buffer: nothing to add
    r.after_stage(first)
    second = _stage(2, 80)
    mixed = r.train_data(second, second.train)
    replayed = [rec for rec in mixed if rec.task == "s1"]
    assert len(mixed) == 100 and len(replayed) == 20  # 20 of 100 = 0.2
    assert r.train_data(second, second.train) == mixed  # deterministic for the same stage


def test_replay_state_round_trips_through_json():
    r = _replay(buffer_size=12, selection="reservoir")
    for i in (1, 2):
        r.after_stage(_stage(i, 30))
    state = r.state_dict()
    restored = _replay(buffer_size=12, selection="reservoir")
    restored.load_state_dict(json.loads(json.dumps(state)))  # what the checkpoint stores
    assert restored.n_seen == r.n_seen
    assert [(i, x.to_dict()) for i, x in restored.buffer] == [(i, x.to_dict()) for i, x in r.buffer]
    third = _stage(3, 30)
    r.after_stage(third)
    restored.after_stage(third)
    assert [x.prompt for _, x in restored.buffer] == [x.prompt for _, x in r.buffer]


class _Penalty(Strategy):
    name = "penalty"

    def __init__(self, value):
        super().__init__()
        self.value = value

    def extra_loss(self, model, batch, outputs):
        return torch.tensor(self.value)

    def train_data(self, stage, records):
        return records + records[:1]


def test_stack_chains_data_and_adds_losses():
    stack = StrategyStack([_Penalty(1.5), Strategy(), _Penalty(2.0)])
    stage = _stage(1, 4)
    assert len(stack.train_data(stage, stage.train)) == 6
    assert float(stack.extra_loss(None, {}, None)) == pytest.approx(3.5)
    assert StrategyStack([Strategy()]).extra_loss(None, {}, None) is None


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
