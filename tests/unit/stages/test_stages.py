"""The registry of stage kinds (everlearn.stages): each kind declares itself in its own module."""

import pytest

from everlearn.data.encode import Encoder
from everlearn.data.records import Record
from everlearn.errors import ConfigError
from everlearn.models.embedded import build_tiny_tokenizer
from everlearn.stages import get_kind, kind_of_metric, kinds, kinds_with


def test_kinds_in_order():
    assert kinds() == ["sft", "cpt", "align", "edit"]
    assert [get_kind(k).name for k in kinds()] == kinds()


def test_unknown_kind_is_one_line():
    with pytest.raises(ConfigError) as info:
        get_kind("rlhf")
    message = str(info.value)
    assert "\n" not in message
    assert "'rlhf'" in message and "sft, cpt, align, edit" in message


@pytest.mark.parametrize("kind, default, loss, edits, raw", [
    ("sft", None, "tokens", False, False),
    ("cpt", "perplexity", "tokens", False, True),
    ("align", "preference_accuracy", "dpo", False, False),
    ("edit", "reliability", "tokens", True, False),
])
def test_what_each_kind_declares(kind, default, loss, edits, raw):
    k = get_kind(kind)
    assert (k.default_metric, k.loss, k.edits, k.raw_text) == (default, loss, edits, raw)
    assert default is None or default in k.metrics


def test_kind_of_metric_and_flags():
    assert kind_of_metric("preference_accuracy") == "align"
    assert kind_of_metric("accuracy") == "sft"
    assert kind_of_metric("reliability") == "edit"
    assert kinds_with("plain_text_files") == "cpt"
    assert kinds_with("superni_files") == "sft"


def test_record_checks():
    no_answer = [Record(prompt="q")]
    assert get_kind("sft").check_records("train", no_answer, "t")
    assert get_kind("sft").check_records("test", no_answer, "t") is None
    problem = get_kind("align").check_records("test", no_answer, "src")
    assert "preference pairs" in problem and "'src'" in problem
    assert get_kind("cpt").check_records is None


def test_encode_dispatches_on_the_kind():
    enc = Encoder(build_tiny_tokenizer(), 64)
    records = [Record(prompt="capital of France?", response="Paris")]
    sft = enc.encode_stage("sft", records)
    edit = enc.encode_stage("edit", records)
    assert len(sft) == len(edit) == 1 and sft[0].record == edit[0].record == 0
    assert sft[0].input_ids != edit[0].input_ids  # chat template vs raw prompt -> target
    (block,) = enc.encode_stage("cpt", [Record(text="a document")])
    assert block.record == -1
