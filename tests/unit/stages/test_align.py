"""Align stages (``stages.align``): the DPO loss, preference accuracy, pair data and the config's
kind, metric and beta."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from everlearn.data.encode import IGNORE
from everlearn.data.readers import read_source
from everlearn.errors import ConfigError, DataError
from everlearn.evaluation.matrix import Evaluator
from everlearn.stages.align import credit, dpo_loss, preference_accuracy, sequence_logprobs
from everlearn.stages.stream import Stage, build_stream
from everlearn.validation import build_config
from tests.conftest import constant_task, write_jsonl
from tests.helpers.align import PREF_STREAM, pref_stage


# --- the loss and the metric, by hand ------------------------------------------------------
def test_dpo_loss_matches_a_hand_computed_value():
    # margin = (-1 - -1.5) - (-2 - -1) = 0.5 + 1 = 1.5; loss = -log sigmoid(0.5 * 1.5)
    loss = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]),
                    torch.tensor([-1.0]), beta=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.75)), abs=1e-6)
    # policy == reference: log 2 whatever beta is
    same = dpo_loss(torch.tensor([-3.0]), torch.tensor([-4.0]), torch.tensor([-3.0]),
                    torch.tensor([-4.0]), beta=torch.tensor([7.0]))
    assert same.item() == pytest.approx(math.log(2), abs=1e-7)


def test_sequence_logprobs_sum_the_labelled_tokens_only():
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 1], [IGNORE, 2, IGNORE, IGNORE]])
    logp = torch.log_softmax(logits, -1)
    want = [logp[0, 1, 3] + logp[0, 2, 1], logp[1, 0, 2]]  # position t predicts token t + 1
    got = sequence_logprobs(logits, labels)
    assert got.tolist() == pytest.approx([w.item() for w in want], abs=1e-6)


def test_preference_accuracy_counts_ties_as_half():
    assert [credit(m) for m in (0.3, -0.1, 0.0)] == [1.0, 0.0, 0.5]
    assert preference_accuracy([1.0, -1.0, 0.0, 2.0]) == pytest.approx(62.5)
    assert preference_accuracy([0.0] * 5) == 50.0  # a model against itself: chance


def test_reference_is_the_base_until_the_stage_starts():
    """Hand-built log-ratios d = log pi(c) - log pi(r): margins are d minus the reference's d."""
    ev = Evaluator.__new__(Evaluator)
    ev.pref_reference, ev.pref_last = {}, {}
    a, b = (Stage(i, n, "align", "preference_accuracy", [], []) for i, n in ((1, "a"), (2, "b")))
    base = ev.preference_score(a, [1.0, -2.0, 0.5])
    assert base.score == 50.0 and base.side["mean_margin"] == 0.0  # base row: against itself
    ev.preference_score(b, [0.0, 0.0])
    ev.begin_phase([a])  # stage a trains: its reference becomes the model entering it (= base)
    row1 = ev.preference_score(a, [2.0, -3.0, 0.5])  # margins +1, -1, 0
    assert row1.score == pytest.approx(50.0) and row1.predictions == ["+1.0000", "-1.0000",
                                                                        "+0.0000"]
    assert ev.preference_score(b, [0.4, -0.2]).score == 50.0  # b not reached: base is its reference
    ev.begin_phase([b])  # b's reference is now the model after stage a
    assert ev.preference_score(b, [0.5, -0.1]).score == 100.0  # margins +0.1, +0.1
    assert ev.preference_score(a, [3.0, -1.0, 0.0]).score == pytest.approx(100 * 2 / 3)  # +2 +1 -.5
    rebuilt = Evaluator.__new__(Evaluator)
    rebuilt.pref_reference, rebuilt.pref_last = {}, {}
    rows = [{"a": [1.0, -2.0, 0.5], "b": [0.0, 0.0]}, {"a": [2.0, -3.0, 0.5], "b": [0.4, -0.2]}]
    rebuilt.restore_preference(rows, [[a], [b]])  # resumed after phase 1
    assert rebuilt.pref_reference == {"a": [1.0, -2.0, 0.5], "b": [0.0, 0.0]}
    rebuilt.begin_phase([b])
    assert rebuilt.pref_reference["b"] == [0.4, -0.2]


# --- data -----------------------------------------------------------------------------------
def test_pair_records_from_jsonl_and_chat_messages(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon.", "id": "x"},
        {"chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
         "rejected": [{"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "5"}]},
    ])
    first, chat = read_source(str(path), "auto", "align", {}, None, "t")
    assert (first.prompt, first.chosen, first.rejected) == ("Capital of France?", "Paris.", "Lyon.")
    assert first.response == "Paris." and first.answers == ["Paris."]  # sft view: the chosen one
    assert (chat.prompt, chat.chosen, chat.rejected) == ("2+2?", "4", "5")
    mapped = write_jsonl(tmp_path / "m.jsonl", [{"question": "Hi?", "good": "Hello.",
                                                 "bad": "Go away."}])
    (rec,) = read_source(str(mapped), "auto", "align", {"prompt": "question", "chosen": "good",
                                                        "rejected": "bad"}, None, "t")
    assert (rec.prompt, rec.chosen, rec.rejected) == ("Hi?", "Hello.", "Go away.")


@pytest.mark.parametrize("row, field", [
    ({"prompt": "p", "chosen": "a"}, "rejected"),
    ({"prompt": "p", "chosen": "", "rejected": "b"}, "chosen"),
    ({"prompt": "p", "chosen": "a", "rejected": "a"}, "rejected"),
    ({"chosen": "a", "rejected": "b"}, "prompt"),
    ({"prompt": "p", "chosen": [{"role": "user", "content": "q"}], "rejected": "b"}, "chosen"),
])
def test_reader_errors_name_file_record_and_field(tmp_path, row, field):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "chosen": "a", "rejected": "b"},
                                                row])
    with pytest.raises(DataError) as info:
        read_source(str(path), "auto", "align", {}, None, "t")
    assert str(info.value).startswith(f"{path}: record 1: {field}")


def test_config_kind_metric_and_beta(tmp_path):
    cfg = build_config({"stages": [pref_stage("pref_concise"), {"builtin": "cipher"}]})
    assert [s.kind for s in cfg.stages] == ["align", "sft"]  # the built-in task's kind
    assert cfg.stages[0].beta == 0.1
    for bad, where in (({"metric": "accuracy"}, "stages.0.metric"),
                       ({"beta": 0}, "stages.0.beta")):
        with pytest.raises(ConfigError, match=where):
            build_config({"stages": [pref_stage("pref_concise", **bad)]})
    with pytest.raises(ConfigError, match="stages.0.metric: preference_accuracy"):
        build_config({"stages": [{"builtin": "cipher", "metric": "preference_accuracy"}]})
    with pytest.raises(DataError, match="an align stage needs preference pairs"):
        build_stream(build_config({"stages": [{"builtin": "cipher", "kind": "align"}]}))
    sft_data = constant_task(tmp_path, "red", "alpha")
    with pytest.raises(DataError, match="red_train.jsonl: record 0: chosen"):
        build_stream(build_config({"stages": [{**sft_data, "kind": "align"}]}))


def test_example_config_validates():
    from everlearn.validation import load_config

    root = Path(__file__).resolve().parents[3]
    cfg = load_config(root / "examples" / "continual_alignment.yaml")
    stream = build_stream(cfg)
    assert [s.kind for s in stream] == ["align"] * 3
    assert [s.name for s in stream] == list(PREF_STREAM)
