"""GRACE (``strategies.grace``): the codebook on hand-built keys, and an edit that leaves
unrelated outputs unchanged on the tiny model."""

from __future__ import annotations

import torch

from everlearn.data.records import Record
from everlearn.stages.stream import Stage
from everlearn.strategies.base import RunContext
from everlearn.strategies.grace import Codebook, Grace, GraceOptions
from tests.helpers.edit import GRACE, greedy_char, tiny_setup


# --- GRACE ----------------------------------------------------------------------------------
def test_codebook_add_expand_split_overwrite_on_hand_built_keys():
    cb = Codebook(2)
    v = torch.zeros(2)

    def key(x, y):
        return torch.tensor([x, y], dtype=torch.float32)

    assert cb.update(key(0, 0), "a", 1.0, v + 1) == ("add", 0)
    assert cb.update(key(3, 0), "b", 1.0, v + 2) == ("add", 1)  # d = 3 > 1 + 1: no overlap
    assert cb.update(key(0, 1.5), "a", 1.0, v) == ("expand", 0)  # overlap, same label
    assert cb.radii.tolist() == [1.5, 1.0]
    assert cb.update(key(0, 0.5), "a", 1.0, v) == ("expand", 0)  # inside already: kept at 1.5
    assert cb.radii[0].item() == 1.5
    assert cb.update(key(3, 1), "c", 1.0, v + 3) == ("split", 2)  # d = 1, another label
    assert cb.radii.tolist() == [1.5, 0.5, 0.5] and cb.labels == ["a", "b", "c"]
    assert cb.update(key(3, 1), "d", 1.0, v) == ("overwrite", 2)  # the same input again
    assert cb.labels[2] == "d" and len(cb) == 3
    assert cb.actions == {"add": 2, "expand": 2, "split": 1, "overwrite": 1}
    queries = torch.stack([key(0, 1.4), key(3, 0.2), key(3, 0.6), key(3, 1.4), key(9, 9)])
    out = cb.apply(queries.unsqueeze(0), torch.full((1, 5, 2), -1.0))[0]
    # (0,1.4): within 1.5 of a -> 1; (3,0.2): b's ball -> 2; (3,0.6): nearest c (0.4 < 0.5)
    # -> 3; (3,1.4): nearest c at 0.4 -> 3; (9,9): no key near -> unchanged
    assert out[:, 0].tolist() == [1.0, 2.0, 3.0, 3.0, -1.0]
    tensors, meta = cb.state()
    again = Codebook(2)
    again.load(tensors, meta)
    assert torch.equal(again.keys, cb.keys) and again.labels == cb.labels
    assert again.actions == cb.actions and torch.equal(again.radii, cb.radii)


def test_grace_edits_a_prompt_and_leaves_unrelated_outputs_unchanged():
    tok, model, encoder, evaluator = tiny_setup()
    grace = Grace(GraceOptions(**{k: v for k, v in GRACE.items() if k != "name"}))
    grace.setup(RunContext(model=model, tokenizer=tok, encoder=encoder, config=None,
                           stream=None, seed=0, accelerator=evaluator.acc))
    prompt = "Colour of ab is "
    target = "x" if greedy_char(model, encoder, prompt) != "x" else "y"
    unrelated = ["Size of zz is ", "Colour of cd is ", "The colour of ab is "]
    with torch.no_grad():
        before = [model(input_ids=torch.tensor([encoder.ids(p)])).logits for p in unrelated]
    rec = Record(prompt=prompt, response=target, locality_prompt=unrelated,
                 locality_ground_truth=["q"] * 3)
    stage = Stage(1, "e", "edit", "reliability", [rec], [rec])
    evaluator.prepare_edits(model, [stage])
    done = grace.apply_edits(stage, [rec])
    assert done["edits"] == 1 and 1 <= done["steps"] <= GRACE["iterations"]
    assert greedy_char(model, encoder, prompt) == target
    score = evaluator.score(model, stage)
    assert score.score == 100.0 and score.side["locality"] == 100.0
    with torch.no_grad():
        after = [model(input_ids=torch.tensor([encoder.ids(p)])).logits for p in unrelated]
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # not a single bit moved
    assert grace.metrics()["codebook_size"] == 1 and grace.buffer_size() == 1
    assert grace.apply_edits(Stage(2, "s", "sft", "exact_match", [], []), [rec]) is None
