"""DER++ (``strategies.der``): stored top-k logits of response tokens, targets that round-trip, and
a buffer within its budget."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file, save_file

from everlearn.strategies.der import DER, DEROptions, compress_logits, distill_loss, gather_topk
from tests.helpers.replay_family import run_context, toy_stage


def _perturb(model, scale: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


# --- DER++ --------------------------------------------------------------------------------
def test_der_compression_keeps_the_top_k_logits_of_response_tokens():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 50, generator=gen)
    labels = torch.full((2, 6), -100)
    labels[0, 3:] = 7  # 3 response tokens, predicted from positions 2..4
    labels[1, 4:6] = 9  # 2 response tokens
    ids, values, counts = compress_logits(logits, labels, 5)
    assert counts.tolist() == [3, 2] and ids.shape == values.shape == (5, 5)
    expected = torch.cat([logits[0, 2:5], logits[1, 3:5]]).topk(5, dim=-1)
    assert torch.equal(values, expected.values) and torch.equal(ids, expected.indices)
    assert torch.equal(gather_topk(logits, labels, ids), values)
    # MSE (the paper's) is zero only on equal logits; top-k KL ignores a per-token shift.
    assert float(distill_loss(values, values)) == 0.0
    shifted = values + 3.0
    assert float(distill_loss(shifted, values, "mse")) == pytest.approx(9.0)
    assert float(distill_loss(shifted, values, "kl")) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(values.flip(-1), values, "kl")) > 0.1


def test_der_targets_round_trip_and_the_distillation_term_tracks_model_change(tmp_path):
    ctx = run_context(tmp_path)
    der = DER(DEROptions(buffer_size=10, top_k=4))
    der.setup(ctx)
    der.after_stage(toy_stage(1, 6))
    der.after_stage(toy_stage(2, 6))
    assert len(der.memory) == len(der.targets) == 10
    for (_, rec), (ids, values) in zip(der.memory.entries, der.targets):
        n_answer = len(ctx.encoder.ids(ctx.encoder.response_text(rec, rec.response)))
        assert ids.shape == values.shape == (n_answer, 4) and ids.dtype == torch.int32

    state = der.state_dict()
    save_file(state["tensors"], tmp_path / "der.safetensors")
    restored = DER(DEROptions(buffer_size=10, top_k=4))
    restored.setup(ctx)
    restored.load_state_dict({"meta": json.loads(json.dumps(state["meta"])),
                              "tensors": load_file(tmp_path / "der.safetensors")})
    assert [r.to_dict() for r in restored.memory.records] == [
        r.to_dict() for r in der.memory.records]
    for (a_ids, a_val), (b_ids, b_val) in zip(der.targets, restored.targets):
        assert torch.equal(a_ids, b_ids) and torch.equal(a_val, b_val)

    model, idx = ctx.model.eval(), list(range(10))
    distill, ce = restored.buffer_terms(model, idx, idx[:4])
    # The model has not changed since the targets were stored: nothing to distil.
    assert distill.requires_grad and distill.item() < 1e-10
    assert ce.item() > 0
    _perturb(model)
    distill, _ = restored.buffer_terms(model, idx, [])
    assert distill.item() > 1e-4


def test_der_buffer_respects_its_budget_and_keeps_targets_from_storage_time(tmp_path):
    ctx = run_context(tmp_path)
    der = DER(DEROptions(buffer_size=9, selection="balanced", top_k=3))
    der.setup(ctx)
    der.after_stage(toy_stage(1, 12))
    first = {id(rec): t[1].clone() for (_, rec), t in zip(der.memory.entries, der.targets)}
    _perturb(ctx.model)
    der.after_stage(toy_stage(2, 12))
    der.after_stage(toy_stage(3, 12))
    assert len(der.memory) == len(der.targets) == der.buffer_size() == 9
    assert Counter(i for i, _ in der.memory.entries) == {1: 3, 2: 3, 3: 3}
    fresh = der._store([rec for i, rec in der.memory.entries])  # what the model says now
    for (idx, rec), (_, values), (_, now) in zip(der.memory.entries, der.targets, fresh):
        if idx == 1:  # stored before the model moved: the old outputs, not today's
            assert torch.equal(values, first[id(rec)]) and not torch.allclose(values, now)
        else:
            assert torch.allclose(values, now, atol=1e-5)
