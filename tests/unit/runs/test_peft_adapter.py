"""everlearn.runs.peft_adapter: which strategies export as which adapter, PEFT's key format,
and adapters that plain PEFT loads into the same function as everlearn's model."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from everlearn.errors import ExportError
from everlearn.runs.peft_adapter import (
    CONFIG_NAME,
    STAGES_NAME,
    WEIGHTS_NAME,
    export_form,
    peft_adapters,
    peft_key,
    stage_entries,
    write_adapter_dir,
)
from tests.helpers.export import (
    assert_same_logits,
    logits,
    plain_peft,
    randomise_lora,
    save_tiny_base,
)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("base"))


def lora_model(base, r: int = 4, seed: int = 0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))
    randomise_lora(peft, seed)
    return peft


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("strategies, finetune, form", [
    (["seqft"], "lora", "adapter"), (["replay", "ewc"], "lora", "adapter"),
    (["joint"], "full", "full"), (["merge"], "full", "full"),
    (["inc_lora"], "lora", "adapter_sum"), (["replay", "olora"], "lora", "adapter_sum"),
    (["routed_lora"], "lora", "stage_adapters"),
    # gradient projection and masking change how LoRA trains, not what the model is
    (["gem"], "lora", "adapter"), (["migu"], "lora", "adapter"),
    (["rome"], "full", "full"), (["alphaedit"], "full", "full")])  # edited weights
def test_export_form(strategies, finetune, form):
    assert export_form(strategies, finetune) == form


@pytest.mark.parametrize("strategies, finetune, named", [
    (["replay", "merge"], "lora", "'merge' is not exportable: under LoRA"),
    (["grace"], "lora", "'grace' is not exportable: its edits are a codebook"),
    (["progressive_prompts"], "full", "'progressive_prompts' is not exportable"),
    (["some_new_method"], "lora", "'some_new_method' is not exportable: its state is more"),
    (["inc_lora"], "full", "'inc_lora' is not exportable")])
def test_export_form_refuses_state_beyond_the_weights(strategies, finetune, named):
    with pytest.raises(ExportError, match=named):
        export_form(strategies, finetune, "run/config.yaml")


def test_peft_key_takes_out_exactly_the_adapter_name():
    assert peft_key("m.q_proj.lora_A.default.weight", "default") == "m.q_proj.lora_A.weight"
    assert peft_key("m.q_proj.lora_B.stage1.weight", "stage1") == "m.q_proj.lora_B.weight"
    assert peft_key("m.q_proj.lora_A.stage10.weight", "stage1") is None
    assert peft_key("m.q_proj.base_layer.weight", "default") is None


def test_single_adapter_is_what_peft_saves_and_loads_to_the_same_logits(base, tmp_path):
    model = lora_model(base)
    model.save_pretrained(tmp_path / "peft")  # PEFT's own writer, for comparison
    lora = model.peft_config["default"]
    adapters = peft_adapters("adapter", lora, trainable(model), {}, ["seqft"])
    files = write_adapter_dir(tmp_path / "ours", adapters, str(base))
    assert files == [CONFIG_NAME, WEIGHTS_NAME]
    theirs, ours = (load_file(tmp_path / d / WEIGHTS_NAME) for d in ("peft", "ours"))
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    config = json.loads((tmp_path / "ours" / CONFIG_NAME).read_text())
    assert config["inference_mode"] is True and config["base_model_name_or_path"] == str(base)
    assert_same_logits(logits(plain_peft(base, tmp_path / "ours")), logits(model))


def test_a_trainable_weight_outside_lora_is_refused(base):
    model = lora_model(base)
    weights = {**trainable(model), "model.norm.weight": torch.ones(64)}
    with pytest.raises(ExportError, match="'model.norm.weight' is not part of the LoRA"):
        peft_adapters("adapter", model.peft_config["default"], weights, {}, ["seqft"])


def stacked_model(base, names):
    """A PEFT model with one randomised adapter per name, all of them active (inc_lora's sum),
    and its state as a StrategyStack of [replay, inc_lora] stores it."""
    model = lora_model(base, seed=0)
    lora = copy.deepcopy(model.peft_config["default"])
    for name in names:
        model.add_adapter(name, copy.deepcopy(lora))
    model.delete_adapter("default")
    model.base_model.set_adapter(list(names))
    randomise_lora(model, seed=1)
    tensors = {f"1.inc_lora/adapter/{n}": p.detach().clone()
               for n, p in model.named_parameters() if ".lora_" in n}
    entries = [{"name": n, "stage": i + 1, "stage_name": f"s{i + 1}", "task_id": f"t{i + 1}"}
               for i, n in enumerate(names)]
    state = {"meta": {"0.replay": {}, "1.inc_lora": {"adapters": entries}},
             "tensors": {"0.replay/buffer": torch.zeros(1), **tensors}}
    return model, lora, state


def test_summed_adapter_is_one_adapter_with_the_function_of_the_sum(base, tmp_path):
    names = ["stage1", "stage2", "stage3"]
    model, lora, state = stacked_model(base, names)
    assert model.base_model.active_adapters == names
    adapters = peft_adapters("adapter_sum", lora, {}, state, ["replay", "inc_lora"])
    assert len(adapters) == 1 and adapters[0].config.r == 3 * lora.r
    assert adapters[0].config.lora_alpha == 3 * lora.lora_alpha  # the scaling stays alpha / r
    write_adapter_dir(tmp_path / "sum", adapters, str(base))
    assert_same_logits(logits(plain_peft(base, tmp_path / "sum")), logits(model))


def test_stage_adapters_are_one_directory_each_with_their_stage(base, tmp_path):
    names = ["stage1", "stage2"]
    model, lora, state = stacked_model(base, names)
    strategies = ["replay", "routed_lora"]
    state = {"meta": {"0.replay": {}, "1.routed_lora": state["meta"]["1.inc_lora"]},
             "tensors": {k.replace("inc_lora", "routed_lora"): v
                         for k, v in state["tensors"].items()}}
    adapters = peft_adapters("stage_adapters", lora, {}, state, strategies)
    write_adapter_dir(tmp_path / "per", adapters, str(base),
                      stage_entries("stage_adapters", state, strategies))
    stages = json.loads((tmp_path / "per" / STAGES_NAME).read_text())
    assert [(s["adapter"], s["stage"], s["task_id"]) for s in stages] == [
        ("stage1", 1, "t1"), ("stage2", 2, "t2")]
    for name in names:
        model.base_model.set_adapter([name])
        assert_same_logits(logits(plain_peft(base, tmp_path / "per" / name)), logits(model))


def test_write_adapter_dir_replaces_an_older_directory_whole(base, tmp_path):
    model = lora_model(base)
    adapters = peft_adapters("adapter", model.peft_config["default"], trainable(model), {},
                             ["seqft"])
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "stale.txt").write_text("old")
    write_adapter_dir(tmp_path / "adapter", adapters, None)
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [CONFIG_NAME,
                                                                          WEIGHTS_NAME]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temporary left
