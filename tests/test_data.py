"""Data: readers -> Records, stream sampling and labels, encoding, batching and padding."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from everlearn.data.encode import (
    IGNORE,
    Encoded,
    Encoder,
    collate,
    length_grouped_batches,
    padding_fraction,
)
from everlearn.data.readers import read_source
from everlearn.data.records import Record
from everlearn.errors import DataError
from everlearn.models.loading import build_tiny_tokenizer
from everlearn.stages.stream import MAX_INFERRED_LABELS, build_stream
from everlearn.validation import build_config
from tests.conftest import write_jsonl


def read(path: Path, kind: str = "sft", fmt: str = "auto", fields=None, split=None):
    return read_source(str(path), fmt, kind, fields or {}, split, "task")


def data_error(path: Path, **kw) -> str:
    with pytest.raises(DataError) as info:
        read(path, **kw)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(path))
    return msg


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


# --- readers -------------------------------------------------------------------------------


def test_jsonl_prompt_response(tmp_path: Path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "2+2?", "response": "4", "id": "q1"},
        {"prompt": "Capital of France?", "answers": ["Paris", "paris"]},
        {"prompt": "Colour?", "output": "red", "system": "Be brief.", "options": ["red", "blue"]},
    ])
    a, b, c = read(path)
    assert (a.prompt, a.response, a.answers, a.task, a.meta) == ("2+2?", "4", ["4"], "task",
                                                                 {"id": "q1"})
    assert b.response == "Paris" and b.answers == ["Paris", "paris"]
    assert b.meta == {"id": "1"}  # the record index when there is no id
    assert c.response == "red" and c.system == "Be brief." and c.options == ["red", "blue"]


def test_response_and_answers_merge_without_duplicates(tmp_path: Path):
    path = write_jsonl(tmp_path / "d.jsonl",
                       [{"prompt": "p", "response": "b", "answers": ["a", "b"]}])
    (r,) = read(path)
    assert r.response == "b" and r.answers == ["b", "a"]


def test_alpaca(tmp_path: Path):
    path = write_jsonl(tmp_path / "alpaca.jsonl", [
        {"instruction": "Translate to French.", "input": "hello", "output": "bonjour"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
    ])
    a, b = read(path)
    assert a.prompt == "Translate to French.\n\nhello" and a.answers == ["bonjour"]
    assert b.prompt == "Say hi." and b.response == "hi"


def test_chat_messages(tmp_path: Path):
    msgs = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Red."},
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": msgs},
                                                 {"messages": msgs[1:2] + msgs[4:]}])
    r, s = read(path)
    assert r.system == "You are terse."
    assert r.context == [{"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello."}]
    assert r.prompt == "Name a colour." and r.answers == ["Red."]
    assert s.system is None and s.context == [] and s.prompt == "Hi" and s.response == "Red."


@pytest.mark.parametrize("messages, field", [
    ([{"role": "user", "content": "Hi"}], "messages"),  # no assistant turn
    ([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}], "messages"),
    ([{"role": "user", "content": "Hi"}, {"role": "bot", "content": "x"}], "messages.1"),
    ([{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}], "messages.0"),
    ([], "messages"),
])
def test_chat_errors(tmp_path: Path, messages, field):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": messages}])
    assert f"record 0: {field}:" in data_error(path)


def test_json_list_and_data_key(tmp_path: Path):
    rows = [{"prompt": "a", "response": "1"}, {"prompt": "b", "response": "2"}]
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": rows}))
    for name in ("list.json", "wrapped.json"):
        recs = read(tmp_path / name)
        assert [(r.prompt, r.response) for r in recs] == [("a", "1"), ("b", "2")]


def superni_task() -> dict:
    return {
        "Definition": ["Answer with the opposite word. "],
        "Positive Examples": [{"input": "up", "output": "down"}],
        "Instances": [
            {"id": "task1-1", "input": "hot", "output": ["cold", "cool"]},
            {"id": "task1-2", "input": " big ", "output": "small"},
        ],
    }


def test_superni(tmp_path: Path):
    path = tmp_path / "task1_opposites.json"
    path.write_text(json.dumps(superni_task()))
    a, b = read(path)  # auto: a .json object with Instances is SuperNI
    assert a.prompt == "Answer with the opposite word.\n\nInput: hot\nOutput:"
    assert a.answers == ["cold", "cool"] and a.response == "cold"
    assert a.meta == {"id": "task1-1"}
    assert b.answers == ["small"] and "Input: big\n" in b.prompt
    assert [r.prompt for r in read(path, fmt="superni")] == [a.prompt, b.prompt]


@pytest.mark.parametrize("change, field", [
    (lambda t: t["Instances"][1].update(output=[]), "Instances.1.output"),
    (lambda t: t["Instances"][0].update(output=[3]), "Instances.0.output"),
    (lambda t: t["Instances"][1].pop("output"), "Instances.1"),
    (lambda t: t["Instances"][0].update(input=7), "Instances.0.input"),
    (lambda t: t.update(Definition=5), "Definition"),
    (lambda t: t.update(Instances={"a": 1}), "Instances"),
])
def test_superni_errors(tmp_path: Path, change, field):
    task = superni_task()
    change(task)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(task))
    assert f": {field}: expected" in data_error(path)


def test_superni_in_a_cpt_stage_is_an_error(tmp_path: Path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(superni_task()))
    assert "only for sft stages" in data_error(path, kind="cpt")


def test_superni_format_on_a_list_is_an_error(tmp_path: Path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([{"prompt": "a", "response": "b"}]))
    assert "SuperNI" in data_error(path, fmt="superni")


def test_plain_text_for_cpt(tmp_path: Path):
    path = tmp_path / "news.txt"
    path.write_text("First doc,\nsecond line.\n\n\n\nSecond doc.\n  \nThird.\n\t\nFourth\n")
    recs = read(path, kind="cpt")
    # a line of only spaces or tabs is a blank line too
    assert [r.text for r in recs] == ["First doc,\nsecond line.", "Second doc.", "Third.",
                                      "Fourth"]
    assert all(r.prompt == "" and r.answers == [] for r in recs)
    assert "cpt" in data_error(path, kind="sft")


def test_jsonl_text_for_cpt(tmp_path: Path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "doc a"}, {"body": "doc b"}])
    assert "record 1: text:" in data_error(path, kind="cpt")
    (rec,) = read(write_jsonl(tmp_path / "c2.jsonl", [{"body": "doc b"}]), kind="cpt",
                  fields={"text": "body"})
    assert rec.text == "doc b"


def test_hf_saved_dataset_with_fields(tmp_path: Path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"question": ["q1", "q2", "q3"], "answer": ["a1", "a2", "a3"]})
    ds.save_to_disk(str(tmp_path / "qa"))
    recs = read(tmp_path / "qa", fields={"prompt": "question", "response": "answer"})
    assert [(r.prompt, r.response) for r in recs] == [("q1", "a1"), ("q2", "a2"), ("q3", "a3")]
    assert "field 'query' (mapped to prompt) is missing" in data_error(
        tmp_path / "qa", fields={"prompt": "query", "response": "answer"})

    dd = datasets.DatasetDict({"train": ds, "test": ds.select([2])})
    dd.save_to_disk(str(tmp_path / "qa_dict"))
    (r,) = read(tmp_path / "qa_dict", fields={"prompt": "question", "response": "answer"},
                split="test")
    assert (r.prompt, r.response) == ("q3", "a3")
    msg = data_error(tmp_path / "qa_dict", fields={"prompt": "question"})
    assert "split: expected one of train, test" in msg


def test_bad_json_line_number(tmp_path: Path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "c", "response": \n')
    assert data_error(path).startswith(f"{path}: line 3: invalid JSON")
    path = tmp_path / "d.json"
    path.write_text('[\n {"prompt": "a",\n  "response": }\n]')
    assert data_error(path).startswith(f"{path}: line 3: invalid JSON")


def test_record_errors_name_record_and_field(tmp_path: Path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c"}])
    assert data_error(path) == (f"{path}: record 1: response: missing "
                                "(expected response, output or answers)")
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "response": 5}])
    assert data_error(path) == f"{path}: record 0: response: expected a string, got int"
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": ["a"], "response": "x"}])
    assert f"{path}: record 0: prompt: expected a non-empty string" in data_error(path)
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "response": "x", "options": 3}])
    assert f"{path}: record 0: options: expected a list of strings" in data_error(path)
    path = write_jsonl(tmp_path / "d.jsonl", [["a", "b"]])
    assert data_error(path) == f"{path}: record 0: expected an object, got list"
    (tmp_path / "o.json").write_text('{"a": 1}')
    assert "expected a list of records" in data_error(tmp_path / "o.json")


def test_missing_file_and_unknown_format(tmp_path: Path):
    assert data_error(tmp_path / "nope.jsonl") == f"{tmp_path / 'nope.jsonl'}: file not found"
    (tmp_path / "d.csv").write_text("a,b\n")
    assert "unknown data format" in data_error(tmp_path / "d.csv")
    (tmp_path / "dir").mkdir()
    assert "not a saved Hugging Face dataset" in data_error(tmp_path / "dir")


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


# --- encoding ------------------------------------------------------------------------------


def test_sft_labels_mask_exactly_the_prompt(tok):
    enc = Encoder(tok, max_length=128)
    assert enc.chat
    rec = Record(prompt="What is 2+2?", answers=["four"], system="Be brief.",
                 context=[{"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "hello"}])
    prompt_ids = enc.ids(enc.prompt_text(rec))
    e = enc.encode_sft(rec)
    n = len(prompt_ids)
    assert len(e.input_ids) == len(e.labels)
    assert e.input_ids[:n] == prompt_ids
    assert e.labels[:n] == [IGNORE] * n
    assert e.labels[n:] == e.input_ids[n:] and IGNORE not in e.labels[n:]
    assert tok.decode(e.labels[n:]) == "four<|im_end|>"
    assert e.labels[-1] in enc.stop_ids and e.labels[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    text = tok.decode(e.input_ids)
    assert "Be brief." in text and "hello" in text and text.endswith("assistant\nfour<|im_end|>")


def test_sft_without_chat_template(tok):
    enc = Encoder(tok, max_length=128, use_chat_template=False)
    rec = Record(prompt="Q", answers=["A"])
    e = enc.encode_sft(rec)
    assert tok.decode(e.input_ids) == "Q\nA<|im_end|>"
    assert [t for t in e.labels if t != IGNORE] == enc.ids("A") + [tok.eos_token_id]


def test_truncation_keeps_the_response(tok):
    enc = Encoder(tok, max_length=32)
    rec = Record(prompt="x" * 200 + " THE END?", answers=["yes"])
    e = enc.encode_sft(rec)
    assert len(e.input_ids) == 32
    loss = [t for t in e.labels if t != IGNORE]
    assert tok.decode(loss) == "yes<|im_end|>"
    assert e.truncated
    kept = tok.decode(e.input_ids[: 32 - len(loss)])
    # the input lost its middle; the template around it stays whole
    assert kept.startswith("<|im_start|>user\nxx") and "x" * 10 not in kept
    assert kept.endswith("END?<|im_end|>\n<|im_start|>assistant\n")
    # an answer longer than max_length still leaves one prompt token and fits
    long = enc.encode_sft(Record(prompt="q", answers=["z" * 100]))
    assert len(long.input_ids) == 32 and long.labels[0] == IGNORE


def test_cpt_packing(tok):
    enc = Encoder(tok, max_length=16)
    docs = [Record(text="The first document is here."), Record(text="A second one."),
            Record(text="And a third, a little longer than the others.")]
    blocks = enc.encode_stage("cpt", docs)
    stream = []
    for d in docs:
        stream += enc.ids(d.text) + [tok.eos_token_id]
    assert all(len(b.input_ids) == 16 for b in blocks[:-1])
    assert 2 <= len(blocks[-1].input_ids) <= 16
    assert all(b.labels == b.input_ids for b in blocks)
    joined = [t for b in blocks for t in b.input_ids]
    assert joined == stream[: len(joined)] and len(stream) - len(joined) <= 1
    assert len(blocks) == len(stream) // 16 + (len(stream) % 16 >= 2)


def test_encode_stage_sft(tok):
    enc = Encoder(tok, max_length=64)
    recs = [Record(prompt="a", answers=["b"]), Record(prompt="cc", answers=["dd"])]
    out = enc.encode_stage("sft", recs)
    assert len(out) == 2 and all(isinstance(e, Encoded) for e in out)


# --- batching ------------------------------------------------------------------------------


def test_length_grouped_batches_cover_every_index_once():
    rng = random.Random(0)
    lengths = [rng.choice([4, 8, 300]) + rng.randrange(20) for _ in range(203)]
    for group in (True, False):
        batches = length_grouped_batches(lengths, 8, random.Random(1), group=group)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(203))
        assert all(1 <= len(b) <= 8 for b in batches)
        assert sum(len(b) < 8 for b in batches) == 1  # only one ragged batch
    again = length_grouped_batches(lengths, 8, random.Random(1))
    assert again == length_grouped_batches(lengths, 8, random.Random(1))


def test_grouping_reduces_padding():
    rng = random.Random(0)
    lengths = [int(rng.lognormvariate(3, 1.2)) + 1 for _ in range(512)]
    grouped = padding_fraction(length_grouped_batches(lengths, 16, random.Random(2)), lengths)
    plain = padding_fraction(length_grouped_batches(lengths, 16, random.Random(2), group=False),
                             lengths)
    assert grouped < plain / 2


def test_padding_fraction_value():
    assert padding_fraction([[0, 1], [2]], [2, 4, 3]) == pytest.approx(1 - 9 / 11)
    assert padding_fraction([[0, 1]], [5, 5]) == 0.0


def test_collate_left_and_right_padding():
    ex = [Encoded([1, 2, 3], [IGNORE, 2, 3]), Encoded([4], [4])]
    right = collate(ex, pad_id=0)
    assert right["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["labels"].tolist() == [[IGNORE, 2, 3], [4, IGNORE, IGNORE]]
    left = collate(ex, pad_id=9, left=True)
    assert left["input_ids"].tolist() == [[1, 2, 3], [9, 9, 4]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert left["labels"].tolist() == [[IGNORE, 2, 3], [IGNORE, IGNORE, 4]]
    assert left["input_ids"].dtype == torch.long


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
