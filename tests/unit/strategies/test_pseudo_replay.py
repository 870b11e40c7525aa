"""LAMOL-style pseudo-replay (``strategies.pseudo_replay``): the template, and ratio x n examples
of earlier stages only."""

from __future__ import annotations

from collections import Counter

import torch

from everlearn.strategies.pseudo_replay import (
    PseudoReplay,
    PseudoReplayOptions,
    middle,
    split_template,
)
from tests.helpers.replay_family import run_context, toy_stage


# --- pseudo-replay ------------------------------------------------------------------------
def test_pseudo_replay_template_separates_the_varying_input():
    superni = [f"Classify the sentiment.\n\nInput: {x}\nOutput:" for x in
               ("I loved it.", "Bad film.", "Fine.")]
    prefix, suffix = split_template(superni)
    assert (prefix, suffix) == ("Classify the sentiment.\n\nInput: ", "\nOutput:")
    assert middle(superni[1], prefix, suffix) == "Bad film."
    numbered = [f"red question {i}" for i in (10, 11, 12)]
    prefix, suffix = split_template(numbered)  # cut at a word boundary, not inside "1x"
    assert (prefix, suffix) == ("red question ", "")
    assert [middle(p, prefix, suffix) for p in numbered] == ["10", "11", "12"]


def _pseudo(ctx, **options) -> PseudoReplay:
    s = PseudoReplay(PseudoReplayOptions(max_input_tokens=12, **options))
    s.setup(ctx)
    s.after_stage(toy_stage(1, 6))
    s.after_stage(toy_stage(2, 6, kind="cpt"))
    return s


def test_pseudo_replay_writes_ratio_times_n_examples_of_earlier_stages_only(tmp_path):
    ctx = run_context(tmp_path, seed=0)
    third = toy_stage(3, 20)
    strategy = _pseudo(ctx, ratio=0.45, gen_ratio=0.25)
    rng_before = torch.get_rng_state()
    mixed = strategy.train_data(third, third.train)
    assert torch.equal(torch.get_rng_state(), rng_before)  # training's RNG is left alone
    assert mixed[:20] == third.train
    pseudo = [r for r in mixed if r.meta.get("pseudo")]
    assert len(pseudo) == round(0.45 * 20)  # 9, split 5 + 4 over the two earlier stages
    assert Counter(r.meta["pseudo_stage"] for r in pseudo) == {1: 5, 2: 4}
    assert all(r.task == f"s{r.meta['pseudo_stage']}" for r in pseudo)
    for r in pseudo:
        if r.meta["pseudo_stage"] == 1:  # instruction stage: its template around a new input
            assert r.prompt.startswith("s1 question ") and r.answers
        else:  # text stage: a new document, packed like the stage's text
            assert r.text and not r.answers
    gen = [r for r in mixed if r.meta.get("lamol_gen")]
    assert len(gen) == 5 and all(r.task == "s3" for r in gen)  # LAMOL's L_gen on this stage
    assert {r.response for r in gen} <= {str(i) for i in range(20)}

    again = _pseudo(ctx, ratio=0.45, gen_ratio=0.25).train_data(third, third.train)
    assert [r.to_dict() for r in again] == [r.to_dict() for r in mixed]  # same seed, same data
    other = _pseudo(run_context(tmp_path, seed=1), ratio=0.45, gen_ratio=0.25)
    moved = other.train_data(third, third.train)
    assert [r.prompt + r.text for r in moved if r.meta.get("pseudo")] != [
        r.prompt + r.text for r in pseudo]
    first = toy_stage(1, 20)
    fresh = PseudoReplay(PseudoReplayOptions(gen_ratio=0.0))
    fresh.setup(ctx)
    assert fresh.train_data(first, first.train) == first.train  # nothing earlier to rehearse
