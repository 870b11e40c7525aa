"""General-data mixing (``strategies.general_mix``): the ratio of corpus records, and a corpus
file fitted to the stage kind."""

from __future__ import annotations

from collections import Counter

import pytest

from everlearn.strategies.common.general_data import GENERAL_PAIRS
from everlearn.strategies.general_mix import GeneralMix, GeneralMixOptions
from tests.conftest import write_jsonl
from tests.helpers.replay_family import run_context, toy_stage


# --- general-data mixing ------------------------------------------------------------------
def _mix(ctx, **options) -> GeneralMix:
    s = GeneralMix(GeneralMixOptions(**options))
    s.setup(ctx)
    return s


def test_general_mix_adds_the_ratio_of_corpus_records(tmp_path):
    ctx = run_context(tmp_path)
    mix = _mix(ctx, ratio=0.2)
    stage = toy_stage(1, 80)
    mixed = mix.train_data(stage, stage.train)
    general = mixed[80:]
    assert mixed[:80] == stage.train
    assert len(general) / len(mixed) == pytest.approx(0.2)
    assert {(r.prompt, r.response) for r in general} <= set(GENERAL_PAIRS)
    assert len({r.prompt for r in general}) == 20  # without replacement while it lasts
    assert [r.prompt for r in mix.train_data(stage, stage.train)[80:]] == [
        r.prompt for r in general]
    big = toy_stage(2, 360)
    counts = Counter(r.prompt for r in mix.train_data(big, big.train)[360:])
    assert sum(counts.values()) == 90 and set(counts.values()) == {1, 2}  # 1.5 passes


def test_general_mix_reads_a_corpus_file_and_fits_it_to_the_stage_kind(tmp_path):
    ctx = run_context(tmp_path)
    rows = [{"instruction": f"general task {i}", "output": f"result {i}"} for i in range(30)]
    corpus = write_jsonl(tmp_path / "general.jsonl", rows)
    mix = _mix(ctx, path=str(corpus), ratio=0.5)
    stage = toy_stage(1, 10)
    general = mix.train_data(stage, stage.train)[10:]
    assert len(general) == 10
    assert all(r.prompt.startswith("general task") and r.response.startswith("result")
               for r in general)
    text_stage = toy_stage(2, 10, kind="cpt")
    as_text = mix.train_data(text_stage, text_stage.train)[10:]
    assert all(r.text.startswith("general task") and not r.answers for r in as_text)

    raw = tmp_path / "general.txt"
    raw.write_text("\n\n".join(f"General sentence number {i}." for i in range(12)))
    mixed = _mix(ctx, path=str(raw), ratio=0.5).train_data(stage, stage.train)
    assert all(r.text.startswith("General sentence") for r in mixed[10:])
    examples = ctx.encoder.encode_stage("sft", mixed)  # raw text packed with full loss
    packed = [e for e in examples if e.record == -1]
    assert packed and all(e.labels == e.input_ids for e in packed)
