"""The worldline suite (``data.builtin.worldline``): a deterministic changing world, its probe
splits, its config form and cloze probes."""

from __future__ import annotations

from collections import Counter

import pytest

from everlearn.data.builtin.worldline import (
    SPLITS,
    WorldlineOptions,
    build_periods,
    probe_prompt,
    sample_probes,
    simulate,
)
from everlearn.errors import ConfigError
from everlearn.stages.stream import build_stream
from everlearn.validation import build_config
from tests.conftest import tiny_config
from tests.helpers.worldline import SMALL


def _dump(periods):
    return [([d.text for d in docs], [(p.prompt, p.answers, p.options, p.meta) for p in probes])
            for docs, probes in periods]


def test_generator_is_deterministic_and_longer_worlds_extend_shorter_ones():
    opt = WorldlineOptions()
    assert _dump(build_periods(4, 3, opt)) == _dump(build_periods(4, 3, opt))
    assert _dump(build_periods(4, 3, opt)) != _dump(build_periods(4, 4, opt))
    assert _dump(build_periods(6, 3, opt))[:3] == _dump(build_periods(3, 3, opt))


def test_splits_follow_the_fact_table():
    opt = WorldlineOptions(**SMALL)
    world = simulate(5, 1, opt)
    periods = build_periods(5, 1, opt)
    for t, (_docs, probes) in enumerate(periods, 1):
        prev = world.timeline[t - 2] if t > 1 else {}
        cur = world.timeline[t - 1]
        assert len(probes) == len(cur)  # one probe per fact of the period
        for p in probes:
            fact, split = (p.meta["subject"], p.meta["relation"]), p.meta["split"]
            assert p.answers == [cur[fact]] and cur[fact] in p.options
            assert p.prompt == probe_prompt(*fact)
            if split == "new":
                assert fact not in prev  # absent before
            elif split == "updated":
                assert prev[fact] != cur[fact] == p.answers[0]  # the answer really changed
                assert p.meta["previous"] == prev[fact] and prev[fact] in p.options
            else:
                assert split == "invariant" and prev[fact] == cur[fact]
    first = Counter(p.meta["split"] for p in periods[0][1])
    assert set(first) == {"new"}  # everything is new in the first period
    later = Counter(p.meta["split"] for _, probes in periods[1:] for p in probes)
    assert set(later) == set(SPLITS)
    assert later["new"] == 4 * SMALL["new_people"] * 3  # 3 facts per arriving person


def test_training_text_states_new_and_updated_facts():
    opt = WorldlineOptions(**SMALL)
    for docs, probes in build_periods(3, 0, opt):
        text = " ".join(d.text for d in docs)
        assert len(docs) >= 1 and all(d.text for d in docs)
        for p in probes:
            sentence = f"{p.prompt} {p.answers[0]}."
            if p.meta["split"] == "invariant":
                assert sentence not in text  # restate = 0: unchanged facts are not repeated
            else:
                assert sentence in text  # probe_in_text: the probe's own sentence is there
                assert text.count(p.meta["subject"]) >= opt.mentions
    paraphrased = build_periods(1, 0, WorldlineOptions(**SMALL, probe_in_text=False))
    text = " ".join(d.text for d in paraphrased[0][0])
    assert not any(f"{p.prompt} {p.answers[0]}." in text for p in paraphrased[0][1])


def test_sampled_probes_cover_every_split():
    _, probes = build_periods(2, 0, WorldlineOptions())[1]
    picked = sample_probes(probes, 9, seed=0, key="x")
    assert Counter(p.meta["split"] for p in picked) == {"invariant": 3, "updated": 3, "new": 3}
    assert picked == sample_probes(probes, 9, seed=0, key="x")
    assert sample_probes(probes, None, 0, "x") is probes


def test_config_form_expands_into_cpt_stages(tmp_path):
    cfg = build_config(tiny_config(tmp_path, [
        {"builtin": "worldline", "periods": 3, "max_test": 12, "builtin_options": SMALL},
        {"builtin": "cipher", "max_train": 8, "max_test": 4}]))
    assert cfg.stages[0].kind == "cpt" and cfg.stages[0].name == "worldline"
    stream = build_stream(cfg)
    assert stream.names == ["worldline-01", "worldline-02", "worldline-03", "cipher"]
    assert [s.index for s in stream] == [1, 2, 3, 4]
    wl = stream.stages[1]
    assert wl.kind == "cpt" and wl.metric == "accuracy" and len(wl.test) == 12
    assert all(r.task == "worldline-02" for r in wl.train + wl.test)


@pytest.mark.parametrize("stage, where", [
    ({"builtin": "cipher", "periods": 3}, "stages.0.periods"),
    ({"builtin": "cipher", "builtin_options": {"people": 3}}, "stages.0.builtin_options"),
    ({"builtin": "worldline", "periods": 0}, "stages.0.periods"),
    ({"builtin": "worldline", "kind": "sft"}, "stages.0.kind"),
    ({"builtin": "worldline", "builtin_options": {"change_rate": 2}},
     "stages.0.builtin_options.change_rate"),
    ({"builtin": "worldline", "builtin_options": {"planets": 2}},
     "stages.0.builtin_options.planets"),
    ({"builtin": "worldline", "metric": "accuracy"}, "stages.0.metric"),
])
def test_config_errors_name_the_field(tmp_path, stage, where):
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        build_config(tiny_config(tmp_path, [stage]))


def test_cloze_probes_are_scored_without_the_chat_template(tmp_path):
    from everlearn.data.encode import Encoder
    from everlearn.evaluation.matrix import Evaluator
    from everlearn.models.loading import build_tiny_tokenizer

    cfg = build_config(tiny_config(tmp_path, [{"builtin": "worldline", "periods": 1,
                                               "max_test": 2, "builtin_options": SMALL}]))
    stage = build_stream(cfg).stages[0]
    tok = build_tiny_tokenizer()
    ev = Evaluator(None, Encoder(tok, 64), cfg.eval, quiet=True)
    items = ev._option_items(stage, stage.test)
    rec = stage.test[0]
    first = tok.decode(items[0].prompt + items[0].options[0])
    assert first == f"{rec.prompt} {rec.options[0]}"  # raw text, no <|im_start|> turn markers
    assert [len(it.options) for it in items] == [len(r.options) for r in stage.test]
