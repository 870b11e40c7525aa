"""WISE (``strategies.wise``): the side-memory math by hand, routing on the tiny model (edits to
the side memory, unrelated inputs to the main memory, bit for bit), shards inside their masks,
the TIES merge, and the state through a checkpoint."""

from __future__ import annotations

import pytest
import torch

from everlearn.data.records import Record
from everlearn.stages.stream import Stage
from everlearn.strategies.base import RunContext
from everlearn.strategies.common import side_memory
from everlearn.strategies.common.merging import ties
from everlearn.strategies.wise import Wise, WiseOptions
from tests.helpers.edit import WISE, greedy_char, tiny_setup


def test_side_memory_math_by_hand():
    act = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[3.0, 0.0], [9.0, 9.0]]])
    delta = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # (d_out 3, d_in 2)
    mask = torch.tensor([[1, 1], [1, 0]])  # row 2: its second token is padding
    scores = side_memory.activation_scores(act, delta, mask)
    assert scores.tolist() == [1.5, 3.0]  # mean of ||a_t delta^T|| over real tokens
    edit, irr = torch.tensor([3.0, 1.0]), torch.tensor([2.0])
    # relu(beta - e) = [0, 1] -> 0.5; relu(irr - alpha) = 1; gap e - irr = [1, -1],
    # relu(gamma - gap) = [0.5, 2.5] -> 1.5
    loss = side_memory.margin_loss(edit, irr, alpha=1.0, beta=2.0, gamma=1.5)
    assert loss.item() == pytest.approx(0.5 + 1.0 + 1.5)
    assert side_memory.margin_loss(edit, torch.zeros(0), 1.0, 2.0, 1.5).item() == 0.5
    s = torch.tensor([[5.0, 1.0, 0.2], [4.0, 3.0, 0.1]])  # 2 memories x 3 inputs
    assert side_memory.choose_memory(s, torch.tensor([4.5, 2.0])).tolist() == [0, 1, -1]
    m1 = side_memory.subspace_mask((200, 100), 0.2, seed=7)
    assert torch.equal(m1, side_memory.subspace_mask((200, 100), 0.2, seed=7))
    assert abs(m1.float().mean().item() - 0.2) < 0.01
    assert not torch.equal(m1, side_memory.subspace_mask((200, 100), 0.2, seed=8))
    d1, d2 = torch.randn(4, 3), torch.randn(4, 3)
    expected = ties(None, [{"w": d1}, {"w": d2}], 0.5, 1.0)["w"]
    assert torch.equal(side_memory.merge_shards([d1, d2], 0.5, 1.0), expected)


def _wise(model, tok, encoder, evaluator, **changes) -> Wise:
    options = {k: v for k, v in WISE.items() if k != "name"} | changes
    wise = Wise(WiseOptions(**options))
    wise.setup(RunContext(model=model, tokenizer=tok, encoder=encoder, config=None,
                          stream=None, seed=0, accelerator=evaluator.acc))
    return wise


def _records(encoder, model, subjects):
    out = []
    for s in subjects:
        prompt = f"Colour of {s} is "
        target = "x" if greedy_char(model, encoder, prompt) != "x" else "y"
        out.append(Record(prompt=prompt, response=target, locality_prompt=[f"Size of {s}{s} is "],
                          locality_ground_truth=["q"]))
    return out


def _logits(model, encoder, prompts):
    with torch.no_grad():
        return [model(input_ids=torch.tensor([encoder.ids(p)])).logits for p in prompts]


def test_wise_routes_edits_to_side_memory_and_unrelated_inputs_to_main_memory():
    tok, model, encoder, evaluator = tiny_setup()
    wise = _wise(model, tok, encoder, evaluator)
    recs = _records(encoder, model, ["ab", "cd"])
    unrelated = ["Size of zz is ", "The weather in mm was ", "1 2 3 4 5 6"]
    before = _logits(model, encoder, unrelated)
    stage = Stage(1, "e", "edit", "reliability", recs, recs)
    evaluator.prepare_edits(model, [stage])
    for rec in recs:  # one at a time (edit.batch_size 1)
        done = wise.apply_edits(stage, [rec])
        assert done["edits"] == 1 and 1 <= done["steps"] <= WISE["iterations"]
    assert [m.kind for m in wise.memories] == ["shard", "shard"]
    score = evaluator.score(model, stage)
    assert score.score == 100.0 and score.side["locality"] == 100.0  # reliable and local
    for rec in recs:  # an edit prompt (with its target, as scored) goes to a side memory
        model(input_ids=torch.tensor([encoder.encode_edit(rec, rec.prompt, rec.response)
                                      .input_ids]))
        assert wise._choice.tolist() != [-1]
    for prompt, b in zip(unrelated, before):
        (a,) = _logits(model, encoder, [prompt])
        assert wise._choice.tolist() == [-1]  # routed to the main memory
        assert torch.equal(a, b)  # not a single bit moved
    assert wise.metrics()["side_memories"] == 2 and len(wise.metrics()["thresholds"]) == 2
    assert wise.apply_edits(Stage(2, "s", "sft", "exact_match", [], []), recs) is None


def test_shards_train_inside_their_mask_and_merge_by_ties(monkeypatch):
    tok, model, encoder, evaluator = tiny_setup()
    wise = _wise(model, tok, encoder, evaluator, shard_size=2, merge_shards=2)
    recs = _records(encoder, model, ["ab", "cd", "ef", "gh"])
    stage = Stage(1, "e", "edit", "reliability", recs, recs)
    wise.apply_edits(stage, recs[:1])
    shard = wise.memories[0]
    assert shard.kind == "open" and shard.delta.abs().sum() > 0
    assert shard.delta[~shard.mask].abs().sum() == 0  # gradient mask: only its subspace moved
    merged_from = []
    original = side_memory.merge_shards

    def spy(deltas, density, scale):
        merged_from.append([d.clone() for d in deltas])
        return original(deltas, density, scale)

    monkeypatch.setattr("everlearn.strategies.wise.merge_shards", spy)
    wise.apply_edits(stage, recs[1:])  # a batch of 3: fills shard 1, then shard 2 -> merge
    assert [m.kind for m in wise.memories] == ["merged"] and wise.merges == 1
    (d1, d2), = merged_from
    masks = [side_memory.subspace_mask(d1.shape, 0.5, k) for k in (0, 1)]  # seed 0, shards 0/1
    assert d1[~masks[0]].abs().sum() == 0 and d2[~masks[1]].abs().sum() == 0
    assert not torch.equal(masks[0], masks[1])  # each shard its own subspace
    assert torch.equal(wise.memories[0].delta, original([d1, d2], 0.53, 1.0))
    assert len(wise.memories[0].edits) == 4


def test_state_round_trips_and_restores_the_same_outputs():
    tok, model, encoder, evaluator = tiny_setup()
    wise = _wise(model, tok, encoder, evaluator, shard_size=2)
    recs = _records(encoder, model, ["ab", "cd", "ef"])
    stage = Stage(1, "e", "edit", "reliability", recs, recs)
    prompts = [r.prompt + r.response for r in recs]
    plain = _logits(model, encoder, prompts)
    wise.apply_edits(stage, recs)  # a full shard and an open one
    edited = _logits(model, encoder, prompts)
    assert not any(torch.equal(a, b) for a, b in zip(plain, edited))  # the side memories act
    state = wise.state_dict()
    for h in wise._handles:
        h.remove()
    again = Wise(WiseOptions(**({k: v for k, v in WISE.items() if k != "name"}
                                | {"shard_size": 2})))
    again.load_state_dict(state)  # before setup, as a resumed run does
    again.setup(RunContext(model=model, tokenizer=tok, encoder=encoder, config=None,
                           stream=None, seed=0, accelerator=evaluator.acc))
    assert [m.kind for m in again.memories] == ["shard", "open"]
    assert all(torch.equal(a, b) for a, b in zip(edited, _logits(model, encoder, prompts)))
    round_trip = again.state_dict()
    assert round_trip["meta"] == state["meta"]
    assert all(torch.equal(round_trip["tensors"][k], v) for k, v in state["tensors"].items())
