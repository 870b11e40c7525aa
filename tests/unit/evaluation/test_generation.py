"""Batched decoding (``evaluation.generation``): answers of one line stop at the end of the
line, row by row, and the newline is not part of the returned answer."""

from __future__ import annotations

import pytest

from everlearn.data.encode import Encoder
from everlearn.data.records import Record
from everlearn.evaluation.generation import decode_batched, first_line_end
from everlearn.evaluation.matrix import single_line_answers
from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer
from everlearn.stages.stream import Stage
from tests.helpers.scripted import Scripted


@pytest.fixture(scope="module")
def tiny():
    tok = build_tiny_tokenizer()
    return build_tiny_model(tok), tok


def generate(tiny, scripts, single_line, max_new_tokens=12, first_sentence=False):
    model, tok = tiny
    script = Scripted(model, tok, scripts)
    try:
        prompts = [tok.encode(f"q{i}") for i in range(len(scripts))]  # equal lengths: in order
        out = decode_batched(model, Encoder(tok, 64), prompts, max_new_tokens, device="cpu",
                             batch_size=len(scripts), single_line=single_line,
                             first_sentence=first_sentence)
    finally:
        script.handle.remove()
    return out, script.steps


def test_single_line_answers_stop_at_the_first_newline_row_by_row(tiny):
    scripts = ["ab\ncdefghijk", "\nwxyz\nqq rest", "nonewline long"]
    out, steps = generate(tiny, scripts, single_line=True)
    # the first line, without its newline; a leading newline does not end the answer
    assert out == ["ab", "wxyz", "nonewline lo"]
    # each row stopped on its own; the one without a newline ran to max_new_tokens
    assert steps == 12
    out, steps = generate(tiny, scripts[:2], single_line=True)
    assert out == ["ab", "wxyz"]
    assert steps == 6  # "\nwxyz\n" is the longer first line: decoding ended there, not at 12


def test_without_single_line_the_continuation_goes_on_past_the_newline(tiny):
    out, steps = generate(tiny, ["ab\ncdefghijk", "\nwxyz\nqq rest"], single_line=False)
    assert out == ["ab\ncdefghijk", "wxyz\nqq res"]
    assert steps == 12


def test_a_cloze_continuation_ends_after_its_first_full_stop(tiny):
    out, steps = generate(tiny, [" Paris. It is big", " Rome is. Yes", " no stop here"],
                          single_line=True, first_sentence=True)
    assert out == ["Paris.", "Rome is.", "no stop her"]
    assert steps == 12  # the row without a full stop ran on; the others stopped at theirs
    out, steps = generate(tiny, [" Paris. It is big", " Rome is. Yes"], single_line=True,
                          first_sentence=True)
    assert out == ["Paris.", "Rome is."] and steps == 9


def test_cpt_probes_generate_from_the_raw_prompt_and_feed_the_temporal_counts(tiny,
                                                                             monkeypatch):
    """A cpt stage scored by exact match continues each probe's prompt as raw text (the cloze
    ids, no chat template) cut at the first sentence; its predictions are what the temporal
    counts score per split."""
    from everlearn.config import EvalConfig
    from everlearn.evaluation import matrix
    from everlearn.evaluation.temporal import row_counts, temporal_section
    from everlearn.runs.session import make_accelerator

    model, tok = tiny
    seen = {}

    def fake_decode(model, encoder, prompt_ids, max_new, **kw):
        seen["prompts"], seen["first_sentence"] = prompt_ids, kw["first_sentence"]
        return replies[:len(prompt_ids)]

    monkeypatch.setattr(matrix, "decode_batched", fake_decode)
    probes = [Record(prompt="Rome is the capital of", answers=["Italy"],
                     meta={"split": "invariant"}),
              Record(prompt="The mayor is", answers=["Ann"], meta={"split": "updated"}),
              Record(prompt="The winner was", answers=["Team A"], meta={"split": "new"})]
    stage = Stage(1, "news", "cpt", "exact_match", [Record(text="doc")], probes)
    enc = Encoder(tok, 64)
    ev = matrix.Evaluator(make_accelerator("fp32"), enc, EvalConfig(batch_size=4), True)
    replies = ["Italy.", "Bob", "Team B"]
    before = ev.score(model, stage)
    assert seen["prompts"][0] == enc.cloze_prompt_ids("Rome is the capital of")
    assert seen["prompts"][0] != enc.prompt_inputs(probes[0])[0] and seen["first_sentence"]
    replies = ["France", "Ann.", "the Team A"]
    after = ev.score(model, stage)
    assert (before.score, after.score) == (100 / 3, 200 / 3)
    rows = [row_counts([stage], [sc]) for sc in (before, after)]
    assert rows[1]["news"] == {"invariant": [0, 1], "updated": [1, 1], "new": [1, 1]}
    section = temporal_section(["news"], [["news"]], rows)
    assert section["fuar"] == 0.5  # 100 forgotten / (100 updated + 100 acquired)


def test_first_line_end_skips_leading_whitespace():
    assert first_line_end("yes\nno") == 3
    assert first_line_end("  \n yes\n") == 7
    assert first_line_end("  \n yes") is None and first_line_end("") is None


def test_a_stage_is_single_line_when_every_reference_is():
    def stage(*answers):
        test = [Record(prompt=f"p{i}", response=a) for i, a in enumerate(answers)]
        return Stage(index=0, name="s", kind="sft", metric="exact_match", train=test,
                     test=test)

    assert single_line_answers(stage("yes", "no\n"))  # a trailing newline is not a line
    assert not single_line_answers(stage("yes", "line one\nline two"))
