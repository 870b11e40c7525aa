"""Replay (``strategies.replay``): the balanced buffer, budgets, reservoir, mix ratio, state round
trip, and replayed instructions as text in a cpt stage (no model needed)."""

from __future__ import annotations

import json
from collections import Counter

from everlearn.strategies.base import RunContext
from everlearn.strategies.replay import Replay, ReplayOptions
from tests.helpers.replay_family import toy_stage
from tests.helpers.strategies import stage_of


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
        r.after_stage(stage_of(i, 50))
    counts = Counter(idx for idx, _ in r.buffer)
    assert counts == {1: 10, 2: 10, 3: 10}
    # Records kept for a stage are that stage's own examples.
    assert all(rec.task == f"s{idx}" for idx, rec in r.buffer)


def test_balanced_buffer_spreads_the_remainder_and_shrinks_old_stages():
    r = _replay(buffer_size=10, selection="balanced")
    r.after_stage(stage_of(1, 50))
    assert len(r.buffer) == 10
    kept_first = [rec.prompt for _, rec in r.buffer]
    r.after_stage(stage_of(2, 50))
    r.after_stage(stage_of(3, 50))
    counts = Counter(idx for idx, _ in r.buffer)
    assert sorted(counts.values()) == [3, 3, 4] and sum(counts.values()) == 10
    # Shrinking keeps a prefix of what was kept before, so no stage is re-sampled.
    survivors = [rec.prompt for idx, rec in r.buffer if idx == 1]
    assert survivors == kept_first[: len(survivors)]


def test_fraction_budget_keeps_that_share_of_each_stage():
    r = _replay(buffer_size=None, buffer_fraction=0.1)
    r.after_stage(stage_of(1, 50))
    r.after_stage(stage_of(2, 200))
    assert Counter(idx for idx, _ in r.buffer) == {1: 5, 2: 20}


def test_reservoir_is_bounded_and_close_to_uniform():
    kept = Counter()
    for seed in range(40):
        r = Replay(ReplayOptions(buffer_size=20, selection="reservoir"))
        r.setup(_ctx(seed))
        for i in (1, 2, 3, 4):
            r.after_stage(stage_of(i, 50))
        assert len(r.buffer) == 20 and r.n_seen == 200
        kept.update(idx for idx, _ in r.buffer)
    # Every example is kept with probability 20/200 whatever its stage: ~200 per stage.
    assert all(120 < kept[i] < 280 for i in (1, 2, 3, 4)), kept


def test_mix_ratio_sets_the_share_of_replayed_examples():
    r = _replay(buffer_size=100, mix_ratio=0.2)
    first = stage_of(1, 100)
    assert r.train_data(first, first.train) == first.train  # empty buffer: nothing to add
    r.after_stage(first)
    second = stage_of(2, 80)
    mixed = r.train_data(second, second.train)
    replayed = [rec for rec in mixed if rec.task == "s1"]
    assert len(mixed) == 100 and len(replayed) == 20  # 20 of 100 = 0.2
    assert r.train_data(second, second.train) == mixed  # deterministic for the same stage


def test_replay_state_round_trips_through_json():
    r = _replay(buffer_size=12, selection="reservoir")
    for i in (1, 2):
        r.after_stage(stage_of(i, 30))
    state = r.state_dict()
    restored = _replay(buffer_size=12, selection="reservoir")
    restored.load_state_dict(json.loads(json.dumps(state)))  # what the checkpoint stores
    assert restored.n_seen == r.n_seen
    assert [(i, x.to_dict()) for i, x in restored.buffer] == [(i, x.to_dict()) for i, x in r.buffer]
    third = stage_of(3, 30)
    r.after_stage(third)
    restored.after_stage(third)
    assert [x.prompt for _, x in restored.buffer] == [x.prompt for _, x in r.buffer]


def test_replayed_instructions_become_text_in_a_cpt_stage():
    from everlearn.strategies.replay import Replay, ReplayOptions

    replay = Replay(ReplayOptions(buffer_size=10, mix_ratio=0.5))
    first = toy_stage(1, 10)
    replay.after_stage(first)
    text_stage = toy_stage(2, 10, kind="cpt")
    mixed = replay.train_data(text_stage, text_stage.train)
    replayed = mixed[10:]
    assert len(replayed) == 10
    # a cpt stage packs `text` only: without conversion these would train on nothing
    assert all(r.text.startswith("s1 question ") and r.text.endswith("\nanswer 1")
               for r in replayed)
