"""Data readers (``data.readers``): files -> Records, each bad file, line or record refused in one
line that names the file (and line or field), also as a hostile or unlucky user hands it over."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from everlearn.data.readers import read_source
from everlearn.errors import DataError
from tests.conftest import write_jsonl


def read(path: Path, kind: str = "sft", fmt: str = "auto", fields=None, split=None):
    return read_source(str(path), fmt, kind, fields or {}, split, "task")


def data_error(path: Path, **kw) -> str:
    with pytest.raises(DataError) as info:
        read(path, **kw)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(path))
    return msg


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


def test_sharegpt_conversations_read_like_messages(tmp_path: Path):
    # LLaMA-Factory's sharegpt format: the last gpt turn is the target, earlier turns context
    convo = [
        {"from": "system", "value": "You are terse."},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello."},
        {"from": "human", "value": "Name a colour."},
        {"from": "gpt", "value": "Red."},
    ]
    path = write_jsonl(tmp_path / "sharegpt.jsonl", [
        {"conversations": convo},
        {"conversations": convo[1:3], "system": "Column system."},  # LLaMA-Factory's system
        {"conversations": [{"from": "user", "value": "Q"}, {"from": "assistant", "value": "A"}]},
    ])
    r, s, t = read(path)
    same = read(write_jsonl(tmp_path / "chat.jsonl", [{"messages": [
        {"role": {"human": "user", "gpt": "assistant"}.get(m["from"], m["from"]),
         "content": m["value"]} for m in convo]}]))[0]
    assert (r.system, r.context, r.prompt, r.answers) == (same.system, same.context,
                                                          same.prompt, same.answers)
    assert r.context == [{"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello."}]
    assert r.prompt == "Name a colour." and r.response == "Red." and r.system == "You are terse."
    assert (s.system, s.prompt, s.response, s.context) == ("Column system.", "Hi", "Hello.", [])
    assert (t.prompt, t.response) == ("Q", "A")


def test_sharegpt_conversations_in_a_json_list(tmp_path: Path):
    rows = [{"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (r,) = read(tmp_path / "d.json")
    assert (r.prompt, r.answers, r.context) == ("2+2?", ["4"], [])


@pytest.mark.parametrize("conversations, field, says", [
    ([{"from": "human", "value": "Hi"}], "conversations", "end with a user turn"),
    ([{"from": "human", "value": "Hi"}, {"from": "bot", "value": "x"}], "conversations.1",
     '"from": "bot"'),
    ([{"from": "human", "value": "Hi"}, {"from": "function_call", "value": "{}"}],
     "conversations.1", "human|gpt|system"),
    ([{"from": "human", "value": 3}, {"from": "gpt", "value": "x"}], "conversations.0", "value"),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "x"}],
     "conversations.0", "from"),
    ([], "conversations", "non-empty list"),
    ("Hi", "conversations", "non-empty list"),
])
def test_sharegpt_errors_name_the_turn(tmp_path: Path, conversations, field, says):
    path = write_jsonl(tmp_path / "sharegpt.jsonl", [{"conversations": conversations}])
    msg = data_error(path)
    assert f"record 0: {field}:" in msg and says in msg


def test_messages_take_the_record_system_when_they_have_none(tmp_path: Path):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": msgs, "system": "Be brief."},
        {"messages": [{"role": "system", "content": "Own."}] + msgs, "system": "Be brief."}])
    r, s = read(path)
    assert r.system == "Be brief." and s.system == "Own."  # the conversation's own system wins


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
    (tmp_path / "d.xml").write_text("<a/>\n")
    assert "unknown data format" in data_error(tmp_path / "d.xml")
    (tmp_path / "dir").mkdir()
    assert "not a saved Hugging Face dataset" in data_error(tmp_path / "dir")


def test_csv_rows_as_pandas_writes_them(tmp_path: Path):
    """A header row, quoted cells with commas and newlines, a field mapping; a cpt stage's
    text column named by ``fields`` (CKL's ``original``)."""
    path = tmp_path / "d.csv"
    path.write_text('input,output,original\n"x, y",z,"line 1\nline 2"\nq,,t\n',
                    encoding="utf-8")
    recs = read(path, kind="cpt", fields={"text": "original"})
    assert [r.text for r in recs] == ["line 1\nline 2", "t"]
    recs = read(path, fields={"prompt": "input", "response": "original"})
    assert recs[0].prompt == "x, y" and recs[0].answers == ["line 1\nline 2"]
    assert "field 'nope' (mapped to text) is missing" in data_error(path, kind="cpt",
                                                                     fields={"text": "nope"})
    assert "record 0: text: expected a non-empty string" in data_error(path, kind="cpt")


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path):
    rows = [{"prompt": "a\u2028b\u2029c\x85d", "response": "e"}, {"prompt": "f", "response": "g"}]
    path = tmp_path / "d.jsonl"  # the separators raw in the file, as JSON allows
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    assert "\u2028" in path.read_text(encoding="utf-8")
    records = read_source(str(path), "jsonl", "sft", {}, None, "t")
    assert [r.prompt for r in records] == ["a\u2028b\u2029c\x85d", "f"]


@pytest.mark.parametrize("suffix", ["jsonl", "json"])
def test_json_nested_too_deeply_is_one_line(tmp_path, suffix):
    path = tmp_path / f"deep.{suffix}"
    path.write_text('{"prompt": "ok", "response": "ok"}\n' + "[" * 100_000 + "]" * 100_000
                    if suffix == "jsonl" else "[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError) as err:
        read_source(str(path), suffix, "sft", {}, None, "t")
    line = "line 2: " if suffix == "jsonl" else ""
    assert str(err.value) == f"{path}: {line}nested too deeply to be a record" + (
        "" if suffix == "jsonl" else " file")


def test_an_empty_response_is_refused_with_its_record_number(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": " "}\n')
    with pytest.raises(DataError) as err:
        read_source(str(path), "jsonl", "sft", {}, None, "t")
    assert f"{path}: record 1: response: empty" in str(err.value)  # records count from 0
