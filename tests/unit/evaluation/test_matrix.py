"""The evaluator (``evaluation.matrix``): edits scored teacher-forced, perplexity pooled over every
adapter group, and a bounded cache of routed subsets."""

from __future__ import annotations

import pytest
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


# --- TRACE's scorers on known generations ---------------------------------------------------
def scripted_score(metric: str, rows: list[tuple[str, str, str]]):
    """The stage of ``rows`` (prompt, answer, what the model writes) scored by ``metric``, with
    the tiny model made to write each row's text; and how many decoding steps it took."""
    from tests.helpers.scripted import Scripted

    tok, model, _, evaluator = tiny_setup()
    records = [Record(prompt=p, response=a) for p, a, _ in rows]
    stage = Stage(1, "s", "sft", metric, records, records)
    script = Scripted(model, tok, [w for _, _, w in rows])
    try:
        return evaluator.score(model, stage), script.steps
    finally:
        script.handle.remove()


def test_strict_match_scores_the_whole_generation_not_its_first_line():
    score, _ = scripted_score("strict_match", [("q0", "A", "A"), ("q1", "B", "B\nmore"),
                                               ("q2", "5", "5.")])
    assert score.predictions[0] == "A" and score.predictions[1].startswith("B\n")
    assert score.score == 100 / 3  # exact_match (first line, normalised) would give 100


def test_first_char_match_stops_once_the_letter_is_written():
    score, steps = scripted_score("first_char_match", [
        ("q0", "B\nBecause magnets attract iron.", "B. because magnets pull"),
        ("q1", "A\nBecause it is warm.", "C\nBecause it is warm.")])
    assert score.score == 50.0 and score.predictions == ["B", "C"]
    assert steps <= 2  # the prefill and one token: the rest cannot change the score


def test_edit_similarity_through_the_evaluator():
    """kitten / sitting 62, a Py150 placeholder rewritten 100, and "ab\\ncd" against "ab":
    the whole generation, 4 / 7 -> 57 (the first line alone would score 100)."""
    score, _ = scripted_score("edit_similarity", [("q0", "kitten", "sitting"),
                                                  ("q1", "f(<NUM_LIT>)", "f(0)"),
                                                  ("q2", "ab", "ab\ncd")])
    assert [s["score"] for s in score.samples] == pytest.approx([62.0, 100.0, 57.0])
    assert score.score == pytest.approx((62 + 100 + 57) / 3)


def test_sari_takes_the_prompt_as_the_source():
    score, _ = scripted_score("sari", [("the cat sat", "cat sat", "the cat")])
    assert score.score == pytest.approx(100 * (0.625 + 0.5 + 1.0) / 3)
    assert score.samples[0]["prompt"] == "the cat sat"
