"""Model merging (interpolation, task arithmetic, TIES) and block expansion (LLaMA-Pro): the
defining property of each, on hand-built tensors and on the tiny model."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from everlearn.config import LoraConfig, ModelConfig
from everlearn.errors import ConfigError
from everlearn.models.loading import (
    build_tiny_model,
    build_tiny_tokenizer,
    load_trainable_state,
    make_trainable,
)
from everlearn.runs.run_dir import RunDir
from everlearn.runs.runner import Run
from everlearn.strategies import build_strategy
from everlearn.strategies.base import RunContext
from everlearn.strategies.block_expansion import (
    BlockExpansion,
    BlockExpansionOptions,
    insertion_points,
)
from everlearn.strategies.common import merging as M
from everlearn.strategies.merge import Merge, MergeOptions
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config

TOK = build_tiny_tokenizer()


def _t(*values):
    return torch.tensor(values, dtype=torch.float32)


def _stage(index: int):
    return SimpleNamespace(index=index, name=f"s{index}")


def _ctx(model, finetune: str) -> RunContext:
    cfg = SimpleNamespace(model=SimpleNamespace(finetune=finetune))
    return RunContext(model=model, tokenizer=TOK, encoder=None, config=cfg, stream=None, seed=7)


def _ids():
    return torch.tensor([TOK.encode("merge these weights, then expand the blocks")])


# --- merging math ----------------------------------------------------------------------------

def test_ties_elects_the_sign_by_total_mass_and_averages_only_agreeing_values():
    taus = [{"w": _t(3, -1, 0, 2, -4)}, {"w": _t(-1, -1, 5, 2, 1)}, {"w": _t(-1, 2, 0, 0, 1)}]
    # Column sums 1, 0, 5, 4, -2: column 0 has two negative values of three, but the positive
    # mass wins; column 1 has no elected sign; zeros never count towards a mean.
    assert torch.equal(M.elect_sign([t["w"] for t in taus]), _t(1, 0, 1, 1, -1))
    assert torch.equal(M.ties_merge(taus)["w"], _t(3, 0, 5, 2, -4))
    merged = M.ties({"w": torch.full((5,), 10.0)}, taus, density=1.0, scale=0.5)
    assert torch.equal(merged["w"], _t(11.5, 10, 12.5, 11, 8))


def test_ties_trims_before_electing():
    # density 0.5 keeps {3, -2} of the first and {-3, 1} of the second task vector, so the
    # last column is 1 (only tau_2 survives there), not the untrimmed mean (0.5 + 1) / 2.
    taus = [{"w": _t(1, -2, 3, 0.5)}, {"w": _t(-3, 0.2, 0.1, 1)}]
    assert torch.equal(M.ties(None, taus, density=0.5, scale=1.0)["w"], _t(-3, -2, 3, 1))
    assert M.ties(None, taus, density=1.0, scale=1.0)["w"][3] == 0.75


@pytest.mark.parametrize("scope", ["model", "tensor"])
def test_trimming_keeps_exactly_the_top_density_magnitudes(scope):
    gen = torch.Generator().manual_seed(0)
    tau = {"a": torch.randn(7, 9, generator=gen), "b": torch.randn(50, generator=gen) * 3,
           "c": torch.ones(10)}  # tied magnitudes: still exactly k survive
    trimmed = M.trim_top_k(tau, 0.3, scope)
    groups = [list(tau)] if scope == "model" else [[k] for k in tau]
    for keys in groups:
        flat = torch.cat([tau[k].reshape(-1) for k in keys])
        kept = torch.cat([trimmed[k].reshape(-1) for k in keys])
        k = M.keep_count(flat.numel(), 0.3)
        assert int((kept != 0).sum()) == k
        assert torch.equal(kept[kept != 0], flat[kept != 0])  # survivors are unchanged
        if k < flat.numel():
            assert kept[kept != 0].abs().min() >= flat[kept == 0].abs().max()
    assert scope == "tensor" or int((trimmed["b"] != 0).sum()) > 15  # global: b (x3) wins


def test_interpolation_endpoints_and_task_arithmetic():
    gen = torch.Generator().manual_seed(1)
    prev, new = {"w": torch.randn(4, 4, generator=gen)}, {"w": torch.randn(4, 4, generator=gen)}
    assert torch.equal(M.interpolate(prev, new, 0.0)["w"], prev["w"])
    assert torch.equal(M.interpolate(prev, new, 1.0)["w"], new["w"])
    assert torch.allclose(M.interpolate(prev, new, 0.25)["w"], 0.75 * prev["w"] + 0.25 * new["w"])
    tau = {"w": new["w"] - prev["w"]}
    assert torch.allclose(M.task_arithmetic(prev, [tau], 1.0)["w"], new["w"], atol=1e-6)
    two = M.task_arithmetic(prev, [tau, {"w": torch.ones(4, 4)}], 0.5)["w"]
    assert torch.allclose(two, prev["w"] + 0.5 * (tau["w"] + 1))


@pytest.mark.parametrize("arch,layer", [("llama", "model.layers.0.self_attn.q_proj"),
                                        ("gpt2", "transformer.h.0.attn.c_attn")])
def test_lora_delta_matches_peft(arch, layer):
    module = _lora_model(arch).get_base_model().get_submodule(layer)
    torch.nn.init.normal_(module.lora_B["default"].weight)
    expected = module.get_delta_weight("default")
    got = M.lora_delta(module.lora_A["default"].weight, module.lora_B["default"].weight,
                       module.scaling["default"], module.fan_in_fan_out)
    assert got.shape == module.base_layer.weight.shape and torch.allclose(got, expected)


# --- merge strategy on the tiny model ----------------------------------------------------------

def _tiny_gpt2():
    """A seeded GPT-2: its Linear layers are ``Conv1D`` (weight (in, out); PEFT sets
    fan_in_fan_out), the layout the Llama tests never exercise."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=len(TOK), n_positions=64,
                        bos_token_id=TOK.bos_token_id, eos_token_id=TOK.eos_token_id,
                        pad_token_id=TOK.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return GPT2LMHeadModel(config)


def _plain(arch: str = "llama"):
    return _tiny_gpt2() if arch == "gpt2" else build_tiny_model(TOK)


def _lora_model(arch: str = "llama", targets="all-linear"):
    return make_trainable(_plain(arch), ModelConfig(
        name=f"tiny-{arch}", finetune="lora", lora=LoraConfig(r=4, target_modules=targets)))


def _train_lora(model, seed: int):
    """Stand-in for a stage's training: random adapter weights, B non-zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def _lora_taus(model) -> dict[str, torch.Tensor]:
    """The adapter's dense delta per adapted layer, by the plain model's module name."""
    return {n.removeprefix("base_model.model."): m.get_delta_weight("default")
            for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}


def _plain_with(deltas: dict[str, torch.Tensor], arch: str = "llama"):
    """The base tiny model with dense ``deltas`` (in each weight's own layout, as PEFT's
    ``get_delta_weight`` gives them) added to its weights: the merged model."""
    plain = _plain(arch)
    with torch.no_grad():
        for name, d in deltas.items():
            plain.get_submodule(name).weight += d
    return plain.eval()


def _logits(model):
    model.eval()
    with torch.no_grad():
        return model(_ids()).logits


@pytest.mark.parametrize("method,opts", [
    ("interpolate", {"ratio": 0.0}), ("interpolate", {"ratio": 1.0}),
    ("task_arithmetic", {"scale": 1.0}), ("ties", {"density": 1.0}),
])
def test_merge_with_lora_endpoints(method, opts):
    """ratio 0 keeps the old model, ratio 1 takes the new one; task arithmetic and TIES (no
    trimming) with scale 1 over one task give the fine-tuned model; base weights stay as they
    were."""
    model = _lora_model()
    base = copy.deepcopy(model.get_base_model().state_dict())
    before = _logits(model)
    strategy = Merge(MergeOptions(method=method, **opts))
    strategy.setup(_ctx(model, "lora"))
    strategy.before_stage(_stage(1))
    _train_lora(model, 0)
    trained = _logits(model)
    strategy.after_stage(_stage(1))
    expected = before if opts.get("ratio") == 0.0 else trained
    assert torch.allclose(_logits(model), expected, atol=1e-5)
    assert not torch.allclose(before, trained, atol=1e-3)
    assert all(torch.equal(v, base[k]) for k, v in model.get_base_model().state_dict().items()
               if "lora_" not in k)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("method,opts,expect", [
    # train_from merged: D1 = r*tau1, D2 = (1-r) D1 + r (D1 + tau2) = D1 + r*tau2
    ("interpolate", {"ratio": 0.3}, lambda t1, t2: {k: 0.3 * t1[k] + 0.3 * t2[k] for k in t1}),
    # train_from base (independent task vectors): theta_0 + scale * (tau1 + tau2)
    ("task_arithmetic", {"scale": 0.6}, lambda t1, t2: {k: 0.6 * (t1[k] + t2[k]) for k in t1}),
    # TIES over the dense deltas of all layers, trimmed over the whole task vector
    ("ties", {"density": 0.3, "scale": 0.8}, lambda t1, t2: M.ties(None, [t1, t2], 0.3, 0.8)),
])
def test_merge_with_lora_two_stages_equals_the_dense_formula(method, opts, expect, arch):
    model = _lora_model(arch)
    strategy = Merge(MergeOptions(method=method, **opts))
    strategy.setup(_ctx(model, "lora"))
    taus = []
    for index in (1, 2):
        strategy.before_stage(_stage(index))
        assert all(float(p.detach().abs().sum()) == 0 for n, p in model.named_parameters()
                   if "lora_B" in n)  # each stage trains a fresh adapter
        _train_lora(model, index)
        taus.append(_lora_taus(model))
        strategy.after_stage(_stage(index))
    reference = _plain_with(expect(*taus), arch)
    assert torch.allclose(_logits(model), _logits(reference), atol=1e-5)

    # Resume: a fresh model and strategy restored from the state (then the stage-2 adapter the
    # checkpoint holds) computes the same function.
    adapter = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    state = strategy.state_dict()
    again_model = _lora_model(arch)
    again = Merge(MergeOptions(method=method, **opts))
    again.setup(_ctx(again_model, "lora"))
    again.load_state_dict(state)
    params = dict(again_model.named_parameters())
    with torch.no_grad():
        for n, t in adapter.items():
            params[n].copy_(t)
    assert torch.equal(_logits(again_model), _logits(model))


@pytest.mark.parametrize("arch,targets", [
    ("llama", "all-linear"), ("gpt2", "all-linear"),
    ("gpt2", ["attn.c_proj"]),  # square Conv1D: a transposed delta fits, and is wrong
])
@pytest.mark.parametrize("method,opts,factor", [
    ("interpolate", {"ratio": 1.0}, 1.0), ("interpolate", {"ratio": 0.4}, 0.4),
    ("task_arithmetic", {"scale": 0.7}, 0.7), ("ties", {"density": 1.0, "scale": 0.5}, 0.5),
])
def test_merge_with_lora_one_stage_on_every_linear(arch, targets, method, opts, factor):
    """One stage, LoRA on all-linear (GPT-2's Conv1D layers included): the merged model is the
    base plus ``factor`` times PEFT's own delta, both with the stage's adapter in place and on
    its own before the next stage; at ratio 1 it is the PEFT model with the adapter active."""
    model = _lora_model(arch, targets)
    strategy = Merge(MergeOptions(method=method, **opts))
    strategy.setup(_ctx(model, "lora"))
    strategy.before_stage(_stage(1))
    _train_lora(model, 3)
    trained = _logits(model)
    taus = _lora_taus(model)
    strategy.after_stage(_stage(1))
    reference = _logits(_plain_with({k: factor * v for k, v in taus.items()}, arch))
    assert torch.allclose(_logits(model), reference, atol=1e-5)
    if factor == 1.0:
        assert torch.allclose(_logits(model), trained, atol=1e-5)
    strategy.before_stage(_stage(2))  # fresh adapter (B = 0): what remains is the merge
    if strategy.options.start == "merged":
        assert torch.allclose(_logits(model), reference, atol=1e-5)


def test_merge_full_finetuning_interpolates_and_restarts_from_the_base():
    model = build_tiny_model(TOK)
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    strategy = Merge(MergeOptions(method="interpolate", ratio=0.25))
    strategy.setup(_ctx(model, "full"))
    strategy.before_stage(_stage(1))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    strategy.after_stage(_stage(1))
    for n, p in model.named_parameters():
        assert torch.allclose(p, theta0[n] + 0.025, atol=1e-6)

    ties = Merge(MergeOptions(method="ties", density=1.0))  # train_from auto -> base
    model = build_tiny_model(TOK)
    ties.setup(_ctx(model, "full"))
    for index, step in ((1, 0.1), (2, -0.3)):
        ties.before_stage(_stage(index))
        for n, p in model.named_parameters():  # every stage starts from theta_0
            assert torch.equal(p, theta0[n])
        with torch.no_grad():
            for p in model.parameters():
                p.add_(step)
        ties.after_stage(_stage(index))
    for n, p in model.named_parameters():  # elected sign -: the disjoint mean keeps tau_2 only
        assert torch.allclose(p, theta0[n] - 0.3, atol=1e-6)
    assert set(ties.state_dict()["tensors"]) >= {"1/model.embed_tokens.weight/idx",
                                              "2/model.embed_tokens.weight/val"}


# --- block expansion ---------------------------------------------------------------------------

def test_insertion_points_follow_llama_pro():
    assert insertion_points(32, n_blocks=8) == [3, 7, 11, 15, 19, 23, 27, 31]
    assert insertion_points(32, every=4) == insertion_points(32)  # default: a quarter more
    assert insertion_points(2) == [1]
    assert insertion_points(6, n_blocks=4) == [1, 2, 4, 5]
    with pytest.raises(ConfigError, match="n_blocks"):
        insertion_points(2, n_blocks=3)


def _expanded(options: BlockExpansionOptions, layers: int = 4):
    model = build_tiny_model(TOK, layers=layers)
    strategy = BlockExpansion(options)
    strategy.setup(_ctx(model, "full"))
    return model, strategy


def test_expanded_model_computes_the_original_function_and_generates():
    model, strategy = _expanded(BlockExpansionOptions(every=2))
    original = copy.deepcopy(model).eval()
    ids = torch.tensor([TOK.encode("a longer prompt"),
                        TOK.encode("short") + [TOK.pad_token_id] * 10])
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    strategy.before_stage(_stage(1))
    assert [t[0] for t in strategy.layout] == ["orig", "orig", "new", "orig", "orig", "new"]
    assert model.config.num_hidden_layers == 6
    assert [b.self_attn.layer_idx for b in model.model.layers] == list(range(6))
    model.eval()
    with torch.no_grad():
        out = model(ids, attention_mask=mask).logits
        ref = original(ids, attention_mask=mask).logits
    assert torch.allclose(out, ref, atol=1e-5)
    gen = dict(max_new_tokens=6, do_sample=False, pad_token_id=TOK.pad_token_id)
    assert torch.equal(model.generate(_ids(), **gen), original.generate(_ids(), **gen))
    # Once the new blocks differ from identity, the KV cache must still address every block
    # by its own index: cached generation equals generation that recomputes everything.
    with torch.no_grad():
        for tag, block in zip(strategy.layout, model.model.layers):
            if tag[0] == "new":
                for p in block.parameters():
                    p.add_(torch.randn_like(p) * 0.5)
    assert torch.equal(model.generate(_ids(), **gen, use_cache=True),
                       model.generate(_ids(), **gen, use_cache=False))


def test_block_expansion_refuses_lora():
    with pytest.raises(ConfigError, match="model.finetune"):
        BlockExpansion().setup(_ctx(_lora_model(), "lora"))


def test_only_new_blocks_train_and_resume_rebuilds_them(tmp_path):
    """A real run with per_stage expansion: originals never change, stage-1 blocks are frozen
    during stage 2, and a fresh model restored from the phase-2 checkpoint is the same model."""
    stages = [constant_task(tmp_path, "red", "alpha", 8, 2),
              constant_task(tmp_path, "green", "bravo", 8, 2)]
    cfg = build_config(tiny_config(
        tmp_path, stages, train={"lr": 1e-2, "steps": 3, "batch_size": 4, "precision": "fp32",
                                 "max_length": 40},
        strategies=[{"name": "block_expansion", "per_stage": True}], keep_stage_weights="all"))
    run = Run(cfg, tmp_path / "run", quiet=True)
    res = run.execute()
    model = run.model
    strategy = run.strategy.members[0]
    assert strategy.expanded_at == [1, 2] and len(model.model.layers) == 4
    assert res["cost"][1]["trainable_params"] < res["cost"][1]["total_params"]
    fresh = build_tiny_model(TOK).state_dict()
    trained = model.state_dict()
    ckpt = tmp_path / "run" / "checkpoints"
    phase1 = load_file(ckpt / "phase-01" / "trainable.safetensors")
    for pos, tag in enumerate(strategy.layout):
        prefix = f"model.layers.{pos}."
        block = {k[len(prefix):]: v for k, v in trained.items() if k.startswith(prefix)}
        if tag[0] == "orig":
            src = f"model.layers.{tag[1]}."
            assert all(torch.equal(v, fresh[src + k]) for k, v in block.items())
        elif tag[1] == 1:  # trained in stage 1 (at position 2 then), frozen since
            assert all(torch.equal(v, phase1[f"model.layers.2.{k}"]) for k, v in block.items())
            assert block["mlp.down_proj.weight"].abs().sum() > 0  # it did train
        else:
            assert block["mlp.down_proj.weight"].abs().sum() > 0
    for k in ("model.embed_tokens.weight", "model.norm.weight"):
        assert torch.equal(trained[k], fresh[k])

    weights, state = RunDir(tmp_path / "run").load_phase(2, need_weights=True)
    again = build_tiny_model(TOK)
    restored = build_strategy(cfg.strategies)  # as the runner resumes: state, then weights
    restored.setup(RunContext(model=again, tokenizer=TOK, encoder=None, config=cfg,
                              stream=None, seed=cfg.seed))
    restored.load_state_dict(state)
    load_trainable_state(again, weights, "phase-02")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in trained.items())
