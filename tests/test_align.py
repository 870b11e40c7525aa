"""Align stages: the DPO loss, preference accuracy, pair data, and runs on the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from everlearn.data.builtin import get_builtin_task, list_builtin_tasks
from everlearn.data.encode import IGNORE
from everlearn.data.readers import read_source
from everlearn.errors import ConfigError, DataError, TrainingError
from everlearn.evaluation.matrix import Evaluator
from everlearn.runs.runner import resume_run, start_run
from everlearn.stages.align import credit, dpo_loss, preference_accuracy, sequence_logprobs
from everlearn.stages.stream import Stage, build_stream
from everlearn.validation import build_config
from tests.conftest import constant_task, killed_at_phase, tiny_config, write_jsonl

PREF_STREAM = ("pref_concise", "pref_format", "pref_refuse")


def pref_stage(name: str, **kw) -> dict:
    return {"builtin": name, "max_train": 32, "max_test": 8, **kw}


def _run(tmp_path, stages, name="run", **overrides):
    cfg = build_config(tiny_config(tmp_path, stages, **overrides))
    return start_run(cfg, tmp_path / name, quiet=True)


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
    base = ev._preference(a, [1.0, -2.0, 0.5])
    assert base.score == 50.0 and base.side["mean_margin"] == 0.0  # base row: against itself
    ev._preference(b, [0.0, 0.0])
    ev.begin_phase([a])  # stage a trains: its reference becomes the model entering it (= base)
    row1 = ev._preference(a, [2.0, -3.0, 0.5])  # margins +1, -1, 0
    assert row1.score == pytest.approx(50.0) and row1.predictions == ["+1.0000", "-1.0000",
                                                                        "+0.0000"]
    assert ev._preference(b, [0.4, -0.2]).score == 50.0  # b not reached: base is its reference
    ev.begin_phase([b])  # b's reference is now the model after stage a
    assert ev._preference(b, [0.5, -0.1]).score == 100.0  # margins +0.1, +0.1
    assert ev._preference(a, [3.0, -1.0, 0.0]).score == pytest.approx(100 * 2 / 3)  # +2 +1 -.5
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


def test_builtin_preference_stream_is_deterministic_and_disjoint():
    names = {t.name for t in list_builtin_tasks()}
    assert set(PREF_STREAM) <= names
    for name in PREF_STREAM:
        task = get_builtin_task(name)
        assert task.kind == "align" and task.metric == "preference_accuracy"
        train = task.generate(200, seed=0, split="train")
        test = task.generate(50, seed=0, split="test")
        assert [r.to_dict() for r in train] == [r.to_dict() for r in
                                                task.generate(200, seed=0, split="train")]
        assert not {r.prompt for r in train} & {r.prompt for r in test}
        assert all(r.chosen and r.rejected and r.chosen != r.rejected for r in train + test)
    concise = get_builtin_task("pref_concise").generate(20, seed=1)
    assert all(len(r.chosen) < len(r.rejected) for r in concise)
    fmt = get_builtin_task("pref_format").generate(20, seed=1)
    assert all(r.chosen.startswith("Answer: ") and "Answer:" not in r.rejected for r in fmt)
    refuse = get_builtin_task("pref_refuse").generate(60, seed=1)
    forbidden = [r for r in refuse if "quellstone" in r.prompt]
    assert 10 < len(forbidden) < 50  # refusing is learned beside ordinary answering
    assert all(r.chosen.startswith("Sorry") for r in forbidden)
    assert all(r.rejected.startswith("Sorry") for r in refuse if r not in forbidden)


# --- runs on the tiny model -----------------------------------------------------------------


def test_loss_starts_at_log_2(tmp_path):
    """One step: the loss is taken before the update, with policy == reference."""
    _, res = _run(tmp_path, [pref_stage("pref_concise")],
                  train={"steps": 1, "precision": "fp32", "max_length": 96})
    assert res["cost"][0]["final_loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_sft_then_align_stream_end_to_end(tmp_path):
    stages = [constant_task(tmp_path, "red", "alpha"), pref_stage("pref_concise"),
              pref_stage("pref_format")]
    path, res = _run(tmp_path, stages, train={"lr": 1e-3, "steps": 20, "precision": "fp32",
                                              "max_length": 96, "warmup_ratio": 0.0})
    R = res["R"]
    assert res["status"] == "complete" and len(R) == 4 and all(len(r) == 3 for r in R)
    assert all(math.isfinite(v) for row in R for v in row)
    assert R[0][1:] == [50.0, 50.0]  # the base model against itself: ties, half credit each
    assert R[2][1] > 75.0 and R[3][2] > 75.0  # each preference is learned on held-out pairs
    assert [s["kind"] for s in res["stages"]] == ["sft", "align", "align"]
    assert [s["metric"] for s in res["stages"]][1:] == ["preference_accuracy"] * 2
    side = res["side_metrics"]
    assert len(side) == 4 and side[0]["pref_concise"]["mean_margin"] == 0.0
    assert side[2]["pref_concise"]["mean_margin"] > 0 and "red" not in side[2]
    assert len(res["preference_logratios"]) == 4
    for c in res["cost"]:
        assert math.isfinite(c["final_loss"]) and c["tokens_trained"] > 0
        assert 0.0 <= c["padding_fraction"] < 1.0
    assert res["cost"][1]["examples"] == 32  # pairs
    # 2 rows per pair, each at least as long as the prompt: more tokens than sft on chosen only
    assert res["cost"][1]["tokens_trained"] > 20 * 8 * 2 * 10
    assert res["metrics"]["final_ap"] == pytest.approx(sum(R[3]) / 3)
    assert json.loads((path / "results.json").read_text())["side_metrics"] == side


def test_resume_after_crash_equals_uninterrupted(tmp_path, monkeypatch):
    stages = [constant_task(tmp_path, "red", "alpha"), pref_stage("pref_concise"),
              pref_stage("pref_refuse")]
    train = {"lr": 1e-3, "steps": 6, "precision": "fp32", "max_length": 96}
    _, full = _run(tmp_path, stages, name="full", train=train)

    with killed_at_phase(monkeypatch, 3):
        _run(tmp_path, stages, name="crashed", train=train)
    _, resumed = resume_run(tmp_path / "crashed", quiet=True)
    for key in ("R", "metrics", "side_metrics", "preference_logratios"):
        assert resumed[key] == full[key], key
    assert [c["final_loss"] for c in resumed["cost"]] == [c["final_loss"] for c in full["cost"]]


@pytest.mark.parametrize("strategy", ["replay", "lwf", "ewc"])
def test_strategies_run_on_align_stages(tmp_path, strategy):
    """Pairs replay into a later align stage; extra_loss hooks see the 2B-row pair batch."""
    spec = {"name": "replay", "buffer_size": 8} if strategy == "replay" else strategy
    _, res = _run(tmp_path, [pref_stage("pref_concise"), pref_stage("pref_format")],
                  strategies=[spec], train={"steps": 3, "precision": "fp32", "max_length": 96})
    assert all(math.isfinite(c["final_loss"]) for c in res["cost"])
    if strategy == "replay":
        assert res["cost"][1]["examples"] > 32  # the buffered pairs joined the stage


def test_instruction_records_cannot_join_an_align_stage(tmp_path):
    stages = [constant_task(tmp_path, "red", "alpha"), pref_stage("pref_concise")]
    with pytest.raises(TrainingError, match="not preference pairs"):
        _run(tmp_path, stages, strategies=[{"name": "replay", "buffer_size": 8}],
             train={"steps": 2, "precision": "fp32", "max_length": 96})


def test_pairs_replayed_into_an_sft_stage_train_on_the_chosen_answer(tmp_path):
    stages = [pref_stage("pref_concise"), constant_task(tmp_path, "red", "alpha")]
    _, res = _run(tmp_path, stages, strategies=[{"name": "replay", "buffer_size": 8}],
                  train={"steps": 2, "precision": "fp32", "max_length": 96})
    assert res["cost"][1]["examples"] > 24 and math.isfinite(res["cost"][1]["final_loss"])


def test_example_config_validates():
    from everlearn.validation import load_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "examples" / "continual_alignment.yaml")
    stream = build_stream(cfg)
    assert [s.kind for s in stream] == ["align"] * 3
    assert [s.name for s in stream] == list(PREF_STREAM)
