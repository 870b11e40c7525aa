"""Self-synthesised rehearsal (SSR) and Progressive Prompts: each method's defining property on
hand-built points and on the tiny model (the strategy matrix covers resume and checkpoints)."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from everlearn.config import LoraConfig, ModelConfig, StrategySpec
from everlearn.data.encode import Encoded, Encoder, collate
from everlearn.data.records import Record
from everlearn.errors import ConfigError
from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer, make_trainable
from everlearn.runs.run_dir import RunDir
from everlearn.runs.runner import Run
from everlearn.stages.stream import Stage
from everlearn.strategies import build_strategy
from everlearn.strategies import ssr as ssr_module
from everlearn.strategies.base import RunContext
from everlearn.strategies.common import kmeans as K
from everlearn.strategies.progressive_prompts import (
    ProgressivePrompts,
    ProgressivePromptsOptions,
    extend_inputs,
)
from everlearn.strategies.ssr import SSR, SSROptions, demo_orders, icl_prompt, parse_input
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config

TOK = build_tiny_tokenizer()


# --- helpers ------------------------------------------------------------------------------
def _stage(index: int, n: int) -> Stage:
    train = [Record(prompt=f"s{index} question {i}", answers=[f"answer {index}"],
                    task=f"s{index}") for i in range(n)]
    return Stage(index=index, name=f"s{index}", kind="sft", metric="exact_match",
                 train=train, test=train[:2], task_id=f"s{index}")


def _model(scale: float = 0.3):
    """The tiny model with perturbed weights: a random init answers with one constant token
    (often the stop token), which would hide what the methods do."""
    model = build_tiny_model(TOK)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


def _ctx(tmp_path: Path, model, seed: int = 0, finetune: str = "full") -> RunContext:
    cfg = build_config(tiny_config(tmp_path, [constant_task(tmp_path, "red", "alpha")],
                                   model={"name": "tiny-llama", "finetune": finetune}))
    return RunContext(model=model, tokenizer=TOK, encoder=Encoder(TOK, 48), config=cfg,
                      stream=None, seed=seed)


def _blobs(sizes: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points in tight bundles around well-separated directions (SSR clusters directions: it
    L2-normalises), at random radii; returns (points, blob of each point)."""
    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 2 * np.pi, len(sizes), endpoint=False)
    points, owner = [], []
    for b, (a, n) in enumerate(zip(angles, sizes)):
        d = np.array([np.cos(a), np.sin(a), 0.5])
        for _ in range(n):
            points.append(rng.uniform(1, 5) * (d + 0.03 * rng.standard_normal(3)))
            owner.append(b)
    order = rng.permutation(len(points))  # blobs interleaved, not in index blocks
    return np.array(points)[order], np.array(owner)[order]


# --- SSR: the selection -------------------------------------------------------------------
def test_kmeans_selection_picks_the_member_nearest_each_obvious_cluster_centre():
    points, owner = _blobs([7, 5, 9, 6, 8])
    picked = K.select_diverse(points, 5, seed=3)
    assert len(picked) == 5
    assert sorted(owner[picked]) == [0, 1, 2, 3, 4]  # one per cluster
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    for i in picked:  # ... and within it, the one nearest its centroid
        members = np.flatnonzero(owner == owner[i])
        centre = unit[members].mean(0)
        assert i == members[np.argmin(((unit[members] - centre) ** 2).sum(1))]
    assert K.select_diverse(points, 5, seed=3) == picked  # a function of points and seed
    assert K.select_diverse(points, 40, seed=3) == list(range(len(points)))  # fewer than asked


def test_fewer_clusters_share_the_selection_in_proportion_to_their_size():
    points, owner = _blobs([12, 6])
    picked = K.select_diverse(points, 6, n_clusters=2, seed=0)
    assert Counter(owner[picked].tolist()) == {0: 4, 1: 2}  # 6 * 12/18 and 6 * 6/18
    assert K.quotas([5, 3, 2], 4) == [2, 1, 1]  # largest remainders 0.0 < 0.2 = 0.8 -> ties
    assert K.quotas([1, 9], 6) == [1, 5] and sum(K.quotas([3, 3, 3], 5)) == 5
    assert K.quotas([2, 1], 10) == [2, 1]  # never more than a cluster holds


def test_kmeans_selects_exactly_n_even_with_repeated_points():
    points = np.array([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5 + [[1.0, 1.0]])
    picked = K.select_diverse(points, 4, seed=0)
    assert len(set(picked)) == 4
    _, labels, _ = K.kmeans(points, 3, seed=0)
    assert len(set(labels.tolist())) == 3  # no cluster left empty


def test_ssr_prompt_pieces():
    prompt = icl_prompt("Classify the sentiment.", [("Great.", "pos"), ("Awful.", "neg")])
    assert prompt == ("Classify the sentiment.\n\nInput: Great.\nOutput: pos\n\n"
                      "Input: Awful.\nOutput: neg\n\nInput:")
    assert parse_input(" A fine day.\nOutput: pos\n\nInput: x") == "A fine day."
    assert parse_input(" two lines\n\nthen more") == "two lines"
    orders = demo_orders(3, 2, 8, __import__("random").Random(0))
    assert len(set(orders[:6])) == 6 and orders[6:] == orders[:2]  # all 3*2 permutations, cycled


# --- SSR: the strategy ----------------------------------------------------------------------
def _ssr(ctx, **options) -> SSR:
    s = SSR(SSROptions(max_input_tokens=10, max_answer_tokens=6, **options))
    s.setup(ctx)
    s.after_stage(_stage(1, 6))
    s.after_stage(_stage(2, 3))
    return s


def test_ssr_keeps_demos_within_budget_and_rehearses_earlier_stages_only(tmp_path):
    ctx = _ctx(tmp_path, _model())
    third = _stage(3, 20)
    strategy = _ssr(ctx, demos=4, ratio=0.3, input_model="latest")
    kept = {t["index"]: [Record.from_dict(d) for d in t["demos"]] for t in strategy.tasks}
    assert {i: len(d) for i, d in kept.items()} == {1: 4, 2: 3}  # budget, or all there is
    assert all(d.task == f"s{i}" for i, ds in kept.items() for d in ds)
    assert strategy.buffer_size() == 7

    rng_before = torch.get_rng_state()
    mixed = strategy.train_data(third, third.train)
    assert torch.equal(torch.get_rng_state(), rng_before)  # training's RNG is left alone
    assert mixed[:20] == third.train
    synthetic = mixed[20:]
    assert all(r.meta["ssr"] for r in synthetic)
    assert Counter(r.meta["ssr_stage"] for r in synthetic) == {1: 3, 2: 3}  # 0.3 * 20, split
    for r in synthetic:  # an earlier stage's template around a new input, with an answer
        stage = r.meta["ssr_stage"]
        assert r.task == f"s{stage}" and r.prompt.startswith(f"s{stage} question ")
        assert r.answers and r.prompt not in {d.prompt for d in kept[stage]}

    again = _ssr(ctx, demos=4, ratio=0.3, input_model="latest").train_data(third, third.train)
    assert [r.to_dict() for r in again] == [r.to_dict() for r in mixed]  # same seed, same data
    moved = _ssr(_ctx(tmp_path, ctx.model, seed=1), demos=4, ratio=0.3, input_model="latest")
    assert [r.prompt for r in moved.train_data(third, third.train)[20:]] != [
        r.prompt for r in synthetic]
    fixed = _ssr(ctx, per_stage=2, input_model="latest").train_data(third, third.train)
    assert Counter(r.meta["ssr_stage"] for r in fixed[20:]) == {1: 2, 2: 2}
    first = _stage(1, 20)
    fresh = SSR(SSROptions())
    fresh.setup(ctx)
    assert fresh.train_data(first, first.train) == first.train  # nothing earlier to rehearse


def _lora_disabled(model) -> bool:
    flags = [m.disable_adapters for m in model.modules() if hasattr(m, "_disable_adapters")]
    assert flags
    return all(flags)


def test_ssr_writes_inputs_with_the_base_model_and_outputs_with_the_latest(tmp_path,
                                                                            monkeypatch):
    seen: dict[str, object] = {}
    real_complete, real_generate = ssr_module.complete, ssr_module.generate

    def spy_complete(ctx, model, *args, **kwargs):
        seen["inputs"] = model
        seen["inputs_lora_off"] = _lora_disabled(model) if hasattr(model, "peft_config") else None
        seen["inputs_weights"] = {k: v.clone() for k, v in model.state_dict().items()}
        return real_complete(ctx, model, *args, **kwargs)

    def spy_generate(ctx, model, *args, **kwargs):
        seen["outputs"] = model
        seen["outputs_lora_off"] = _lora_disabled(model) if hasattr(model, "peft_config") else None
        return real_generate(ctx, model, *args, **kwargs)

    monkeypatch.setattr(ssr_module, "complete", spy_complete)
    monkeypatch.setattr(ssr_module, "generate", spy_generate)

    # LoRA: the base model is the current one with its adapters disabled, for inputs only.
    lora = make_trainable(_model(), ModelConfig(name="tiny-llama", lora=LoraConfig(r=4)))
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # a "trained" adapter
    ctx = _ctx(tmp_path, lora, finetune="lora")
    flags = {n: p.requires_grad for n, p in lora.named_parameters()}
    synthetic = _ssr(ctx, ratio=0.3).train_data(_stage(3, 20), [])
    assert synthetic
    assert seen["inputs"] is lora and seen["inputs_lora_off"] is True
    assert seen["outputs"] is lora and seen["outputs_lora_off"] is False
    assert not _lora_disabled(lora)
    assert {n: p.requires_grad for n, p in lora.named_parameters()} == flags

    # Full fine-tuning: a frozen copy of the model as it was at setup writes the inputs.
    model = _model()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    strategy = _ssr(_ctx(tmp_path, model), ratio=0.3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)  # "training" after setup
    strategy.train_data(_stage(3, 20), [])
    assert seen["inputs"] is not model and seen["outputs"] is model
    assert all(torch.equal(seen["inputs_weights"][k], v) for k, v in original.items())
    assert next(seen["inputs"].parameters()).device.type == "cpu"


def test_ssr_options_are_validated():
    for options, field in [({"demos": 0}, "demos"), ({"candidates": 0.5}, "candidates"),
                           ({"input_model": "teacher"}, "input_model"), ({"top_p": 0}, "top_p")]:
        with pytest.raises(ConfigError, match=f"options.{field}"):
            build_strategy([StrategySpec(name="ssr", options=options)])


# --- Progressive Prompts ------------------------------------------------------------------
def _prompts(tmp_path, n_tokens: int = 3, stages: int = 2, model=None):
    model = model if model is not None else _model()
    s = ProgressivePrompts(ProgressivePromptsOptions(num_virtual_tokens=n_tokens))
    s.setup(_ctx(tmp_path, model))
    for i in range(1, stages + 1):
        s.before_stage(_stage(i, 2))
        with torch.no_grad():  # as if trained: distinct, consequential prompts
            s.bank.get(i).mul_(5)
    return model, s


def _batch(texts: list[str], left: bool = False) -> dict:
    ids = [TOK.encode(t) for t in texts]
    return collate([Encoded(x, x) for x in ids], TOK.pad_token_id, left=left)


def test_extend_inputs_puts_the_prompt_first_and_masks_it_out_of_the_loss():
    prompt = torch.arange(6.0).reshape(3, 2)
    embeds = torch.ones(2, 4, 2)
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])  # left padding
    labels = torch.tensor([[-100, -100, 5, 6], [1, 2, 3, 4]])
    out = extend_inputs(prompt, embeds, mask, labels, past=0)
    assert out["inputs_embeds"].shape == (2, 7, 2)
    assert torch.equal(out["inputs_embeds"][0, :3], prompt)
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 1, 1], [1] * 7]
    assert out["labels"][:, :3].eq(-100).all() and torch.equal(out["labels"][:, 3:], labels)
    assert out["position_ids"].tolist() == [[0, 1, 2, 2, 2, 3, 4], list(range(7))]
    step = extend_inputs(prompt, torch.ones(2, 1, 2), torch.cat([mask, mask[:, :1] * 0 + 1], 1),
                         None, past=7)  # a decoding step: the cache already holds the prompt
    assert step["inputs_embeds"].shape == (2, 1, 2) and step["attention_mask"].shape == (2, 8)
    assert step["position_ids"].tolist() == [[5], [7]]


def test_progressive_prompts_grow_the_input_newest_prompt_first(tmp_path):
    model = _model()
    seen = []
    model.model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["inputs_embeds"].detach().clone()), with_kwargs=True)
    batch = _batch(["hello there", "hi"])
    x = model.get_input_embeddings()(batch["input_ids"]).detach()
    s = ProgressivePrompts(ProgressivePromptsOptions(num_virtual_tokens=3))
    s.setup(_ctx(tmp_path, model))
    lengths = []
    for stage in (1, 2, 3):
        s.before_stage(_stage(stage, 2))
        with torch.no_grad():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        assert out.logits.shape[1] == x.shape[1]  # callers still see their own positions
        lengths.append(seen[-1].shape[1])
    assert lengths == [x.shape[1] + 3, x.shape[1] + 6, x.shape[1] + 9]  # + P per stage
    P = {i: s.bank.get(i).detach() for i in (1, 2, 3)}
    assert torch.equal(seen[-1][0], torch.cat([P[3], P[2], P[1], x[0]]))  # [P_3; P_2; P_1; x]
    emb = model.get_input_embeddings().weight
    assert any(torch.equal(P[1][0], row) for row in emb)  # initialised from a vocabulary row


def test_only_the_newest_prompt_gets_gradients(tmp_path):
    model, s = _prompts(tmp_path)
    batch = _batch(["s2 question 1 answer", "s2 q"])
    assert s.train_data(_stage(2, 2), []) == []  # the "nothing else trains" check passes
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100))
    out.loss.backward()
    newest = s.bank.get(2)
    assert newest.grad is not None and newest.grad.abs().sum() > 0
    others = [(n, p) for n, p in model.named_parameters() if p is not newest]
    assert others and all(p.grad is None and not p.requires_grad for _, p in others)
    model.lm_head.weight.requires_grad_(True)  # what a weight-training strategy would do
    with pytest.raises(ConfigError, match="strategies"):
        s.train_data(_stage(2, 2), [])


def test_generation_with_prompts_matches_with_and_without_kv_cache(tmp_path):
    model, s = _prompts(tmp_path)
    model.eval()
    batch = _batch(["hello there", "a much longer prompt here"], left=True)
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  max_new_tokens=6, do_sample=False, pad_token_id=TOK.pad_token_id)
    cached = model.generate(use_cache=True, **kwargs)
    uncached = model.generate(use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)

    # The same greedy tokens by hand: embeddings [P_2; P_1; x], no hooks, no cache.
    joint = s.bank.joint().detach().clone()
    ids = TOK.encode("hello there")
    s.detach()
    assert not hasattr(model, "everlearn_prompts")
    plain = model.generate(use_cache=True, **kwargs)
    assert not torch.equal(plain, cached)  # the prompts changed what the model writes
    with torch.no_grad():
        for _ in range(6):
            x = model.get_input_embeddings()(torch.tensor([ids]))
            logits = model(inputs_embeds=torch.cat([joint[None], x], 1)).logits
            ids.append(int(logits[0, -1].argmax()))
    assert cached[0, -6:].tolist() == ids[-6:]


def test_lora_is_refused_and_bad_options_name_their_field():
    with pytest.raises(ConfigError, match="model.finetune"):
        build_strategy([StrategySpec(name="progressive_prompts")], finetune="lora")
    with pytest.raises(ConfigError, match="options.num_virtual_tokens"):
        build_strategy([StrategySpec(name="progressive_prompts",
                                     options={"num_virtual_tokens": 0})])


def test_prompts_past_the_model_positions_are_refused(tmp_path):
    s = ProgressivePrompts(ProgressivePromptsOptions(num_virtual_tokens=300))
    s.setup(_ctx(tmp_path, build_tiny_model(TOK)))
    s.before_stage(_stage(1, 2))  # 48 + 300 <= 512 positions
    with pytest.raises(ConfigError, match="train.max_length"):
        s.before_stage(_stage(2, 2))  # 48 + 600 > 512


def test_a_run_keeps_earlier_prompts_bit_identical_and_the_model_unchanged(tmp_path):
    stages = [constant_task(tmp_path, n, a, n_train=8, n_test=2)
              for n, a in (("red", "alpha"), ("green", "bravo"), ("blue", "charlie"))]
    cfg = build_config(tiny_config(
        tmp_path, stages, model={"name": "tiny-llama", "finetune": "full"},
        train={"lr": 0.05, "steps": 3, "batch_size": 4, "precision": "fp32", "max_length": 32},
        strategies=[{"name": "progressive_prompts", "options": {"num_virtual_tokens": 4}}]))
    run = Run(cfg, tmp_path / "run", quiet=True)
    results = run.execute()
    assert [c["trainable_params"] for c in results["cost"]] == [4 * 64] * 3  # P_t only
    states = [RunDir(tmp_path / "run").load_phase(t, need_weights=False)[1]["tensors"]
              for t in (1, 2, 3)]
    key = "0.progressive_prompts/prompt/stage{}".format  # the stack's key for member 0
    assert set(states[2]) == {key(1), key(2), key(3)}
    for t in (1, 2):
        for later in states[t:]:
            assert torch.equal(later[key(t)], states[t - 1][key(t)])
    fresh = build_tiny_model(TOK)
    init = ProgressivePrompts(ProgressivePromptsOptions(num_virtual_tokens=4))
    init.setup(_ctx(tmp_path, copy.deepcopy(fresh)))
    init.ctx.seed = cfg.seed
    init.before_stage(_stage(1, 2))
    assert not torch.equal(init.bank.get(1).detach(), states[0][key(1)])  # P_1 trained
    trained = {k: v for k, v in run.model.state_dict().items() if "everlearn_prompts" not in k}
    assert trained.keys() == fresh.state_dict().keys()
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in trained.items())
