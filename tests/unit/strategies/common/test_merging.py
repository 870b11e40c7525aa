"""Merging arithmetic (``strategies.common.merging``): interpolation, task arithmetic, TIES and
the LoRA delta, on hand-built tensors."""

from __future__ import annotations

import pytest
import torch

from everlearn.strategies.common import merging as M
from tests.helpers.merge_expansion import lora_model


def _t(*values):
    return torch.tensor(values, dtype=torch.float32)


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
    module = lora_model(arch).get_base_model().get_submodule(layer)
    torch.nn.init.normal_(module.lora_B["default"].weight)
    expected = module.get_delta_weight("default")
    got = M.lora_delta(module.lora_A["default"].weight, module.lora_B["default"].weight,
                       module.scaling["default"], module.fan_in_fan_out)
    assert got.shape == module.base_layer.weight.shape and torch.allclose(got, expected)
