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


def generate(tiny, scripts, single_line, max_new_tokens=12):
    model, tok = tiny
    script = Scripted(model, tok, scripts)
    try:
        prompts = [tok.encode(f"q{i}") for i in range(len(scripts))]  # equal lengths: in order
        out = decode_batched(model, Encoder(tok, 64), prompts, max_new_tokens, device="cpu",
                             batch_size=len(scripts), single_line=single_line)
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
