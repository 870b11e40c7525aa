"""The evaluator (``evaluation.matrix``): edits scored teacher-forced, perplexity pooled over every
adapter group, and a bounded cache of routed subsets."""

from __future__ import annotations

import torch

from everlearn.config import EvalConfig
from everlearn.data.records import Record
from everlearn.evaluation.matrix import SUBSETS_KEPT, Evaluator
from everlearn.stages.stream import Stage
from tests.helpers.edit import greedy_char, tiny_setup


def test_evaluator_scores_edits_teacher_forced():
    """Hand-computed case: an edit whose target is the model's own top-1 token is reliable,
    any other is not; locality against the base is 100 until the model changes."""
    _, model, encoder, evaluator = tiny_setup()
    own = greedy_char(model, encoder, "Colour of ab is ")
    other = "x" if own != "x" else "y"
    recs = [Record(prompt="Colour of ab is ", response=own,
                   rephrase_prompt=["Colour of ab is ", "The colour of ab is "],
                   locality_prompt=["Size of zz is "], locality_ground_truth=[""]),
            Record(prompt="Colour of ab is ", response=other)]
    stage = Stage(1, "e", "edit", "reliability", recs, recs)
    evaluator.prepare_edits(model, [stage])
    score = evaluator.score(model, stage)
    assert score.score == 50.0 and score.predictions == [own, own]
    assert score.side["generalisation"] in (50.0, 100.0)  # the first paraphrase is the prompt
    assert score.side["locality"] == 100.0  # the base model against itself
    with torch.no_grad():  # another model: a random final norm turns its predictions
        model.model.norm.weight.copy_(torch.randn(64, generator=torch.Generator().manual_seed(1)))
    assert evaluator.score(model, stage).side["locality"] == 0.0


def test_perplexity_pools_every_adapter_group(tmp_path):
    """A router that sends the test texts to two (identical) adapters must give the perplexity
    of all the texts, not of one group's."""
    from everlearn.config import EvalConfig, ModelConfig
    from everlearn.data.encode import Encoder
    from everlearn.data.records import Record
    from everlearn.evaluation.matrix import Evaluator
    from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer, make_trainable
    from everlearn.runs.session import make_accelerator
    from everlearn.stages.stream import Stage

    tok = build_tiny_tokenizer()
    model = make_trainable(build_tiny_model(tok, seed=2), ModelConfig(finetune="lora"))
    model.add_adapter("other", model.peft_config["default"])  # B = 0: same function
    docs = [Record(text="short text " * n) for n in (2, 9, 4, 12)]
    stage = Stage(index=1, name="t", kind="cpt", metric="perplexity", train=docs, test=docs)
    ev = Evaluator(make_accelerator("fp32"), Encoder(tok, 64), EvalConfig(batch_size=2), True)
    pooled = ev.score(model, stage).score
    split = ev.score(model, stage, router=lambda r: "default" if len(r.text) < 40 else "other")
    # packing per group moves block boundaries a little; one group alone is far off
    assert abs(split.score - pooled) < 5e-3 * pooled
    alone = ev.score(model, Stage(index=1, name="t2", kind="cpt", metric="perplexity",
                                  train=docs, test=[d for d in docs if len(d.text) < 40])).score
    assert abs(alone - pooled) > 2e-2 * pooled


# --- what must not grow with the rows of a long stream -------------------------------------
def test_evaluator_cache_keeps_a_bounded_number_of_routed_subsets():
    from everlearn.data.records import Record
    from everlearn.stages.stream import Stage

    records = [Record(prompt=f"p{i}", response="a") for i in range(60)]
    stage = Stage(index=1, name="s", kind="sft", metric="accuracy", train=[], test=records)
    ev = Evaluator(None, None, EvalConfig())
    full = ev._subset_key(stage, "options", records)
    ev._cache[full] = "whole test set"
    for i in range(50):  # routing sends another part of the test set to an adapter each row
        key = ev._subset_key(stage, "options", records[i:i + 5])
        ev._cache.setdefault(key, i)
    assert len(ev._cache) == SUBSETS_KEPT
    assert ev._subset_key(stage, "options", records[49:54]) in ev._cache  # recent ones stay
