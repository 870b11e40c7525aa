"""The built-in counterfactual suite (``data.builtin.counterfactual``): deterministic and
consistent."""

from __future__ import annotations

import pytest

from everlearn.data.builtin import counterfactual
from everlearn.data.builtin.suites import SUITES
from everlearn.strategies import STRATEGIES


# --- the built-in edit stream ---------------------------------------------------------------
def test_counterfactual_suite_is_deterministic_and_consistent():
    suite = SUITES["edits_counterfactual"]
    assert suite.kind == "edit" and suite.metric == "reliability"
    assert len(counterfactual.FACTS) >= 60
    assert len({(r, s) for r, s, _ in counterfactual.FACTS}) == len(counterfactual.FACTS)
    opt = counterfactual.CounterfactualOptions()
    batches = counterfactual.build_batches(4, 0, opt)
    longer = counterfactual.build_batches(6, 0, opt)
    assert [[r.to_dict() for r in b[0]] for b in batches] == \
        [[r.to_dict() for r in b[0]] for b in longer[:4]]  # a prefix of a longer stream
    edits = [r for train, _ in longer for r in train]
    assert len({(r.meta["relation"], r.meta["subject"]) for r in edits}) == len(edits) == 48
    edited = {counterfactual.prompt_of(r.meta["relation"], r.meta["subject"]) for r in edits}
    for train, test in batches:
        assert [r.to_dict() for r in train] == [r.to_dict() for r in test]
        for r in train:
            assert r.response != r.meta["ground_truth"]
            assert r.response in counterfactual.POOLS[r.meta["relation"]]
            assert len(r.rephrase_prompt) == 2 and r.prompt not in r.rephrase_prompt
            assert len(r.locality_prompt) == 2 == len(r.locality_ground_truth)
            assert not set(r.locality_prompt) & edited  # held back: never edited
    other_seed = counterfactual.build_batches(4, 1, opt)
    assert [r.prompt for r in other_seed[0][0]] != [r.prompt for r in batches[0][0]]
    with pytest.raises(ValueError, match="facts can be edited"):
        counterfactual.build_batches(50, 0, opt)
    assert "grace" in STRATEGIES
