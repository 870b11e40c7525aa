"""Building the stream (``stages.stream``): sampling by seed, default metrics, inferred labels and
the label options a class-incremental stream pools."""

from __future__ import annotations

from pathlib import Path

import pytest

from everlearn.errors import DataError
from everlearn.stages.stream import MAX_INFERRED_LABELS, build_stream
from everlearn.validation import build_config
from tests.conftest import write_jsonl


# --- stream: sampling, metrics, labels -----------------------------------------------------
def qa_rows(n: int, answers: list[str] | None = None) -> list[dict]:
    return [{"prompt": f"question {i}", "response": answers[i % len(answers)] if answers
             else f"answer {i}"} for i in range(n)]


def stream_for(tmp_path: Path, stage: dict, seed: int = 0):
    cfg = build_config({"seed": seed, "stages": [stage]}, "s.yaml")
    return build_stream(cfg, "s.yaml")


def test_max_train_max_test_sampling_is_deterministic_by_seed(tmp_path: Path):
    train = write_jsonl(tmp_path / "t_train.jsonl", qa_rows(40))
    test = write_jsonl(tmp_path / "t_test.jsonl", qa_rows(30))
    stage = {"name": "t", "train": str(train), "test": str(test), "max_train": 6, "max_test": 5}

    def picked(seed):
        st = stream_for(tmp_path, stage, seed).stages[0]
        return [r.prompt for r in st.train], [r.prompt for r in st.test]

    tr0, te0 = picked(0)
    assert len(tr0) == 6 and len(te0) == 5
    assert picked(0) == (tr0, te0)
    tr1, te1 = picked(1)
    assert tr1 != tr0 and te1 != te0
    # a sample keeps the file's order and has no repeats
    order = [f"question {i}" for i in range(40)]
    assert tr0 == sorted(tr0, key=order.index) and len(set(tr0)) == 6
    # no limit, or a limit above the size: everything
    full = stream_for(tmp_path, {**stage, "max_train": 100, "max_test": None}).stages[0]
    assert len(full.train) == 40 and len(full.test) == 30


def test_default_metric_and_inferred_labels(tmp_path: Path):
    train = write_jsonl(tmp_path / "s_train.jsonl", qa_rows(12, ["pos", "neg", "neu"]))
    test = write_jsonl(tmp_path / "s_test.jsonl", qa_rows(4, ["neg", "pos"]))
    stage = {"name": "s", "train": str(train), "test": str(test)}
    # a closed set of recurring short answers is a classification task: accuracy by default
    st = stream_for(tmp_path, stage).stages[0]
    assert st.metric == "accuracy" and st.labels == ["neg", "neu", "pos"]
    st = stream_for(tmp_path, {**stage, "metric": "exact_match"}).stages[0]
    assert st.metric == "exact_match" and st.labels == []
    st = stream_for(tmp_path, {**stage, "metric": "accuracy"}).stages[0]
    assert st.metric == "accuracy"
    assert st.labels == ["neg", "neu", "pos"]
    assert all(r.options == ["neg", "neu", "pos"] for r in st.test)
    st = stream_for(tmp_path, {**stage, "labels": ["pos", "neg", "neu", "other"]}).stages[0]
    assert st.metric == "accuracy" and st.labels == ["pos", "neg", "neu", "other"]
    assert st.test[0].options == st.labels


@pytest.mark.parametrize("train_answers, test_answers", [
    (["pos", "neg", "neu"] * 2, ["neg", "pos"]),  # too few records per label
    (["pos", "neg"] * 8, ["neg", "maybe"]),  # a test answer never seen in training
    (["a long free-form answer"] * 8 + ["x"] * 8, ["x", "x"]),  # answers are not short labels
    (["yes"] * 16, ["yes"] * 4),  # one answer is not a choice
])
def test_open_answers_default_to_exact_match(tmp_path: Path, train_answers, test_answers):
    train = write_jsonl(tmp_path / "o_train.jsonl", [
        {"prompt": f"q{i}", "response": a} for i, a in enumerate(train_answers)])
    test = write_jsonl(tmp_path / "o_test.jsonl", [
        {"prompt": f"t{i}", "response": a} for i, a in enumerate(test_answers)])
    st = stream_for(tmp_path, {"name": "o", "train": str(train), "test": str(test)}).stages[0]
    assert st.metric == "exact_match" and st.labels == []


def test_too_many_inferred_labels(tmp_path: Path):
    n = MAX_INFERRED_LABELS + 8
    train = write_jsonl(tmp_path / "m_train.jsonl", qa_rows(n))
    test = write_jsonl(tmp_path / "m_test.jsonl", qa_rows(4))
    stage = {"name": "m", "train": str(train), "test": str(test), "metric": "accuracy"}
    with pytest.raises(DataError) as info:
        stream_for(tmp_path, stage)
    msg = str(info.value)
    assert msg.startswith("s.yaml: stages.0: labels:") and f"{n} distinct answers" in msg


def test_cpt_stage_metric_and_builtin_stage(tmp_path: Path):
    (tmp_path / "n_train.txt").write_text("one\n\ntwo\n")
    (tmp_path / "n_test.txt").write_text("three\n")
    cfg = build_config({"stages": [
        {"name": "news", "kind": "cpt", "train": str(tmp_path / "n_train.txt"),
         "test": str(tmp_path / "n_test.txt")},
        {"builtin": "classify", "max_train": 10, "max_test": 3},
    ]}, "s.yaml")
    news, classify = build_stream(cfg, "s.yaml").stages
    assert news.metric == "perplexity" and not news.higher_is_better and len(news.train) == 2
    assert classify.metric == "accuracy" and len(classify.train) == 10 and len(classify.test) == 3
    assert classify.labels and all(r.options == classify.labels for r in classify.test)
    assert classify.index == 2 and classify.task_id == "classify"


def test_stream_data_errors_name_the_file(tmp_path: Path):
    empty = tmp_path / "e_train.jsonl"
    empty.write_text("\n")
    ok = write_jsonl(tmp_path / "ok.jsonl", qa_rows(2))
    with pytest.raises(DataError, match=r"e_train\.jsonl: no records found"):
        stream_for(tmp_path, {"train": str(empty), "test": str(ok)})


def test_cil_pools_the_label_options_of_every_label_stage(tmp_path: Path):
    a_train = write_jsonl(tmp_path / "a_train.jsonl", qa_rows(12, ["cat", "dog"]))
    a_test = write_jsonl(tmp_path / "a_test.jsonl", qa_rows(4, ["cat", "dog"]))
    b_train = write_jsonl(tmp_path / "b_train.jsonl", qa_rows(12, ["red", "blue"]))
    b_test = write_jsonl(tmp_path / "b_test.jsonl", qa_rows(4, ["red", "blue"]))
    stages = [{"name": "a", "train": str(a_train), "test": str(a_test)},
              {"name": "b", "train": str(b_train), "test": str(b_test)},
              {"name": "c", "train": str(a_train), "test": str(a_test), "metric": "exact_match"}]
    for scenario, want in (("TIL", [["cat", "dog"], ["blue", "red"]]),
                           ("CIL", [["cat", "dog", "blue", "red"]] * 2)):
        cfg = build_config({"scenario": scenario, "stages": stages}, "s.yaml")
        stream = build_stream(cfg, "s.yaml")
        assert [st.labels for st in stream.stages[:2]] == want
        assert [st.test[0].options for st in stream.stages[:2]] == want
        assert stream.stages[2].labels == [] and stream.stages[2].test[0].options == []
