"""Per-example gradients in one batched pass (``strategies.common.per_example``): the Fisher and
the MAS importance equal the one-example-at-a-time loop's to float tolerance on the tiny model
(full fine-tuning and LoRA), examples of different lengths in a chunk; the loop takes over
where vmap cannot run the model."""

from __future__ import annotations

import copy
import logging
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from everlearn.config import ModelConfig
from everlearn.data.records import Record
from everlearn.models.loading import make_trainable
from everlearn.strategies.common import penalty as P
from everlearn.strategies.common import per_example as PE
from tests.helpers.regularizers import nudge, tiny_context


def tiny_batches(ctx, n: int = 7) -> list[dict]:
    """Single-example batches of different prompt and answer lengths."""
    records = [Record(prompt="word " * (1 + i % 4) + str(i), response="answer " * (1 + i % 3))
               for i in range(n)]
    return P.single_batches(ctx.encoder.encode_stage("sft", records), ctx.encoder.pad_id, "cpu")


@pytest.fixture(scope="module")
def models():
    """The tiny model trained in full, and with LoRA adapters (nudged off their zero init)."""
    full = tiny_context()
    lora = tiny_context()
    lora.model = make_trainable(copy.deepcopy(lora.model),
                                ModelConfig(name="tiny-llama", finetune="lora"))
    nudge(lora.model, scale=0.02)
    return {"full": full, "lora": lora}


@pytest.fixture
def batched_calls(monkeypatch):
    """How many chunks went through the batched pass."""
    calls = []
    real = PE.batched_grads

    def counted(*args, **kwargs):
        calls.append(args[2]["input_ids"].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(PE, "batched_grads", counted)
    return calls


def close(a: dict, b: dict, rtol: float = 1e-4) -> bool:
    """Every weight's entries agree to ``rtol`` of that weight's largest entry."""
    return all(((a[n] - b[n]).abs().max() <= rtol * a[n].abs().max()).item() for n in a)


@pytest.mark.parametrize("finetune", ["full", "lora"])
@pytest.mark.parametrize("fisher", ["empirical", "sampled"])
def test_batched_fisher_equals_the_per_example_loop(models, batched_calls, finetune, fisher):
    ctx = models[finetune]
    params = P.trainable(ctx.model)
    batches = tiny_batches(ctx)

    def run(size):
        return P.diag_fisher(ctx.model, params, batches, sample=fisher == "sampled",
                             generator=torch.Generator().manual_seed(3), size=size)

    loop = run(1)
    assert batched_calls == []
    batched = run(3)
    assert batched_calls == [3, 3]  # two chunks of 3 batched, the last example alone
    assert close(loop, batched)
    assert sum(f.sum() for f in loop.values()) > 0
    if finetune == "lora":
        assert all("lora_" in n for n in params) and len(params) < 40


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_batched_mas_importance_equals_the_per_example_loop(models, batched_calls, finetune):
    ctx = models[finetune]
    params = P.trainable(ctx.model)
    batches = tiny_batches(ctx, n=6)
    loop = P.mas_importance(ctx.model, params, batches, size=1)
    batched = P.mas_importance(ctx.model, params, batches, size=4)
    assert batched_calls == [4, 2]
    assert close(loop, batched)
    assert sum(o.sum() for o in loop.values()) > 0


def test_the_batched_pass_returns_one_gradient_per_example(models):
    ctx = models["full"]
    params = P.trainable(ctx.model)
    batches = tiny_batches(ctx, n=4)
    chunk = PE.stack_chunk(batches)
    grads = PE.batched_grads(ctx.model, params, chunk, torch.zeros(chunk["valid"].shape),
                             lambda logits, valid, extra: (logits.pow(2).sum(-1) * valid).sum())
    for name, p in params.items():
        assert grads[name].shape == (4, *p.shape)
    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.allclose(grads[name][0], grads[name][1])  # each example its own
    # the first example's gradient is that of the first example alone
    alone = PE.batched_grads(ctx.model, params, PE.stack_chunk(batches[:1]),
                             torch.zeros(1, chunk["valid"].shape[1]),
                             lambda logits, valid, extra: (logits.pow(2).sum(-1) * valid).sum())
    assert torch.allclose(alone[name][0], grads[name][0], rtol=1e-4, atol=1e-6)


def test_stack_chunk_right_pads_and_flags_the_padded_answer_positions(models):
    ctx = models["full"]
    batches = tiny_batches(ctx, n=3)
    chunk = PE.stack_chunk(batches)
    lengths = [b["input_ids"].shape[1] for b in batches]
    assert chunk["input_ids"].shape == (3, max(lengths))
    for k, b in enumerate(batches):
        assert torch.equal(chunk["input_ids"][k, :lengths[k]], b["input_ids"][0])
        positions = PE.answer_positions(b["labels"][0])
        n = len(positions)
        assert torch.equal(chunk["positions"][k, :n], positions)
        assert chunk["valid"][k, :n].all() and not chunk["valid"][k, n:].any()
        assert (chunk["positions"][k, n:] == positions[-1]).all()


def test_chunk_size_bounds_the_per_example_gradients():
    small = {"a": torch.zeros(1000)}
    assert PE.chunk_size(small) == PE.MAX_CHUNK
    assert PE.chunk_size({"a": torch.zeros(10, 10)}, budget=4 * 100 * 3) == 3
    assert PE.chunk_size({"a": torch.zeros(10, 10)}, budget=10) == 1


class BranchyLM(nn.Module):
    """A position-wise LM whose forward branches on its input's values (``.item()``), which
    vmap cannot trace."""

    def __init__(self, vocab: int = 12, dim: int = 6):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = nn.Parameter(torch.randn(vocab, dim, generator=g))
        self.head = nn.Parameter(torch.randn(vocab, dim, generator=g))

    def forward(self, input_ids, attention_mask=None):
        scale = 2.0 if input_ids.sum().item() > 0 else 1.0
        return SimpleNamespace(logits=scale * torch.tanh(self.emb[input_ids]) @ self.head.T)


def test_the_loop_takes_over_where_vmap_cannot_run_the_model(caplog):
    from everlearn.data.encode import Encoded, collate

    model = BranchyLM()
    params = dict(model.named_parameters())
    batches = [collate([Encoded([1, 2 + i, 3, 4 + i % 2], [-100, -100, 3, 4 + i % 2])], 0)
               for i in range(5)]
    with caplog.at_level(logging.WARNING, logger=PE.__name__):
        batched = P.mas_importance(model, params, batches, size=2)
    assert "one forward and backward per example instead" in caplog.text
    loop = P.mas_importance(model, params, batches, size=1)
    assert close(loop, batched, rtol=1e-6) and loop["head"].sum() > 0
