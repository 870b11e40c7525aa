"""The base row's shared cache (``runs.base_cache``): a second run with the same model, data and
scoring settings reads the base row instead of scoring it and gets the same results; any
component that differs (weights, tokenizer, data, sampling, scoring settings) is a miss."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from everlearn.config import ModelConfig
from everlearn.data.records import Record
from everlearn.evaluation.evaluator_base import StageScore
from everlearn.evaluation.matrix import Evaluator
from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer, make_trainable
from everlearn.runs import base_cache as BC
from everlearn.runs.runner import start_run
from everlearn.stages.stream import Stage
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config


def stage(answers=("alpha", "bravo"), metric="exact_match", name="red") -> Stage:
    test = [Record(prompt=f"q{i}", response=a) for i, a in enumerate(answers)]
    return Stage(index=1, name=name, kind="sft", metric=metric, train=test, test=test)


@pytest.fixture(scope="module")
def tiny():
    tok = build_tiny_tokenizer()
    return build_tiny_model(tok), tok


def key(cache, model, st):
    return cache._path(cache.parts(model, st)).name


def fresh(settings, tok) -> BC.BaseRowCache:
    return BC.BaseRowCache("unused", settings, BC.tokenizer_fingerprint(tok))


def test_every_component_of_the_key_changes_it(tiny, tmp_path):
    model, tok = tiny
    cfg = build_config(tiny_config(tmp_path, [constant_task(tmp_path, "red", "alpha")]))
    settings = BC.scoring_settings(cfg, "no", "cpu")
    base = key(fresh(settings, tok), model, stage())
    assert key(fresh(settings, tok), model, stage()) == base  # stable across instances
    # the model's weights
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters())[0, 0] += 1e-3
    assert key(fresh(settings, tok), other, stage()) != base
    # a hook or a replaced forward (what a strategy may add) changes the model
    same = copy.deepcopy(model)
    assert key(fresh(settings, tok), same, stage()) == base
    handle = same.model.layers[0].register_forward_hook(lambda *a: None)
    assert key(fresh(settings, tok), same, stage()) != base
    handle.remove()
    assert key(fresh(settings, tok), same, stage()) == base
    same.model.layers[1].mlp.forward = lambda x: x
    assert key(fresh(settings, tok), same, stage()) != base
    # the tokenizer (its chat template)
    tok2 = copy.deepcopy(tok)
    tok2.chat_template = tok.chat_template + " "
    assert key(fresh(settings, tok2), model, stage()) != base
    # the data: another answer, fewer records (sampling), another metric
    assert key(fresh(settings, tok), model, stage(("alpha", "brave"))) != base
    assert key(fresh(settings, tok), model, stage(("alpha",))) != base
    assert key(fresh(settings, tok), model, stage(metric="rouge_l")) != base
    assert key(fresh(settings, tok), model, stage(name="renamed")) == base  # name is no content
    # the scoring settings
    for change in [{"eval": dataclasses.replace(cfg.eval, max_new_tokens=3)},
                   {"eval": dataclasses.replace(cfg.eval, batch_size=3)},
                   {"train": dataclasses.replace(cfg.train, max_length=17)}]:
        changed = dataclasses.replace(cfg, **change)
        assert key(fresh(BC.scoring_settings(changed, "no", "cpu"), tok), model,
                   stage()) != base
    assert key(fresh(BC.scoring_settings(cfg, "bf16", "cpu"), tok), model, stage()) != base
    assert key(fresh(BC.scoring_settings(cfg, "no", "cuda"), tok), model, stage()) != base


def test_a_zero_lora_b_makes_its_a_irrelevant_and_a_nonzero_b_does_not(tiny):
    model, _ = tiny
    lora = make_trainable(copy.deepcopy(model), ModelConfig(name="tiny-llama", finetune="lora"))
    a_name = next(n for n, _ in lora.named_parameters() if ".lora_A." in n)
    b_name = a_name.replace(".lora_A.", ".lora_B.")
    params = dict(lora.named_parameters())
    before = BC.model_fingerprint(lora)
    with torch.no_grad():
        params[a_name].add_(0.5)  # another seed's A: the adapter still adds exactly zero
    assert BC.model_fingerprint(lora) == before
    with torch.no_grad():
        params[b_name][0, 0] = 0.25
    nonzero_b = BC.model_fingerprint(lora)
    assert nonzero_b != before
    with torch.no_grad():
        params[a_name].add_(0.5)
    assert BC.model_fingerprint(lora) != nonzero_b  # now A matters


def test_an_entry_is_used_only_when_its_stored_parts_match(tmp_path):
    cache = BC.BaseRowCache(tmp_path, {"eval": 1}, "tok")
    parts = {"model": "m", "tokenizer": "tok", "data": "d", "scoring": {"eval": 1}}
    cache.put(parts, StageScore(12.5, 2, ["a", "b"], {"x": 1.0}), 0.5)
    assert cache.get(parts) == (StageScore(12.5, 2, ["a", "b"], {"x": 1.0}), 0.5)
    path = cache._path(parts)
    entry = json.loads(path.read_text())
    entry["parts"]["data"] = "other"  # a file under the right name that says otherwise
    path.write_text(json.dumps(entry))
    assert cache.get(parts) is None
    assert cache.get({**parts, "model": "n"}) is None


def test_a_second_run_reads_the_base_row_and_a_changed_setting_scores_it(tmp_path,
                                                                        monkeypatch):
    scored = []
    real = Evaluator.score

    def counting(self, model, st, router=None):
        scored.append(st.name)
        return real(self, model, st, router)

    monkeypatch.setattr(Evaluator, "score", counting)
    stages = [constant_task(tmp_path, "red", "alpha", n_train=8, n_test=3),
              constant_task(tmp_path, "green", "bravo", n_train=8, n_test=3)]
    stages[0]["labels"] = ["alpha", "bravo"]

    def run(name, **overrides):
        raw = tiny_config(tmp_path, stages, **overrides)
        raw["model"] = {"name": "tiny-llama", "finetune": "lora"}
        raw["train"] = {**raw["train"], "steps": 1}
        scored.clear()
        res = start_run(build_config(raw), tmp_path / name, quiet=True,
                        base_cache=tmp_path / "cache")[1]
        return res, list(scored)

    first, n_first = run("a", seed=1)
    second, n_second = run("b", seed=2)  # another seed draws another LoRA A: B is still 0
    assert n_first == ["red", "green"] * 3  # base row + two rows
    assert n_second == ["red", "green"] * 2  # the base row came from the cache
    assert second["R"][0] == first["R"][0]
    assert second["stages"] == first["stages"]  # truncation shares restored too
    changed, n_changed = run("c", seed=2, eval={"batch_size": 4, "max_new_tokens": 3})
    assert n_changed == ["red", "green"] * 3  # other scoring settings: scored again
