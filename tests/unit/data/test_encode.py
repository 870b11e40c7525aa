"""Token ids that get trained and scored (``data.encode``): label masks, packing, truncation of
long prompts, whitespace at the prompt/continuation boundary, BOS, batching and padding."""

from __future__ import annotations

import random

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
from everlearn.data.records import Record
from everlearn.evaluation.matrix import Evaluator
from everlearn.models.loading import build_tiny_tokenizer
from everlearn.stages.stream import Stage
from everlearn.validation import build_config
from tests.helpers.encode_tokens import DEFINITION

EVAL = build_config({"stages": [{"builtin": "cipher"}]}).eval


def evaluator(enc: Encoder) -> Evaluator:
    return Evaluator(None, enc, EVAL, quiet=True)


def cloze_items(enc: Encoder, recs: list[Record]):
    stage = Stage(1, "c", "cpt", "accuracy", [], recs)
    return evaluator(enc)._option_items(stage, recs)


# --- whitespace at the end of a prompt ----------------------------------------------------------
@pytest.fixture(scope="module")
def smol():
    from transformers import AutoTokenizer

    from everlearn.models.loading import embedded_smollm2_dir

    return AutoTokenizer.from_pretrained(embedded_smollm2_dir())


@pytest.mark.slow
def test_cloze_option_takes_the_prompts_trailing_space(smol):
    """GPT-2 style BPE writes the space into the next word ('ĠParis'): scoring 'Paris' after a
    lone 'Ġ' is a split the model never sees in training."""
    enc = Encoder(smol, 64)
    text = "The capital of France is Paris"
    paris = smol(" Paris", add_special_tokens=False)["input_ids"]
    space = smol.convert_tokens_to_ids("Ġ")
    for prompt in ("The capital of France is ", "The capital of France is"):
        item = cloze_items(enc, [Record(prompt=prompt, answers=["Paris"],
                                        options=["Paris", "London"])])[0]
        assert item.options[0][:len(paris)] == paris
        assert item.prompt[-1] != space
        trained = enc.encode_stage("cpt", [Record(text=text)])[0].input_ids
        assert item.prompt + item.options[0] == trained[:-1] == enc.ids(text)  # [-1]: EOS
    assert enc.bos_id is None  # SmolLM2 adds no BOS: its ids stay as they were


@pytest.mark.slow
def test_raw_edit_target_takes_the_prompts_trailing_space(smol):
    enc = Encoder(smol, 64)
    e = enc.encode_edit(Record(), "The capital of France is ", "Paris")
    target = [t for t in e.labels if t != IGNORE]
    assert target == smol(" Paris", add_special_tokens=False)["input_ids"]
    assert e.input_ids == enc.ids("The capital of France is Paris")
    assert enc.edit_prompt_ids(Record(), "The capital of France is ") == e.input_ids[:-1]


def test_byte_level_tokenizer_without_merges_keeps_its_split():
    """Whitespace that is a token of its own stays with the prompt (one-token edit targets)."""
    tok = build_tiny_tokenizer()
    enc = Encoder(tok, 64)
    item = cloze_items(enc, [Record(prompt="Colour of ab is ", answers=["x"],
                                    options=["x", "y"])])[0]
    assert item.prompt == enc.ids("Colour of ab is ") and item.options == [[enc.ids("x")[0]],
                                                                          [enc.ids("y")[0]]]
    e = enc.encode_edit(Record(), "Colour of ab is ", "x")
    assert [t for t in e.labels if t != IGNORE] == enc.ids("x")


# --- BOS ------------------------------------------------------------------------------------------
def bos_tokenizer(how: str):
    """The tiny tokenizer set to add its BOS, by attribute or by its post-processor."""
    tok = build_tiny_tokenizer()
    if how == "attribute":
        tok.add_bos_token = True
    else:
        from tokenizers import processors

        bos = tok.bos_token
        tok._tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.bos_token_id)])
    assert tok("ab")["input_ids"][0] == tok.bos_token_id
    return tok


def starts_with_one_bos(ids: list[int], bos: int) -> bool:
    return ids[0] == bos and ids[1] != bos


@pytest.mark.parametrize("how", ["attribute", "post_processor"])
def test_bos_at_the_start_of_every_sequence_when_the_tokenizer_adds_one(how):
    tok = bos_tokenizer(how)
    bos = tok.bos_token_id
    for chat in (False, True):  # chat: ChatML starts with <|im_start|>, this BOS: no second
        enc = Encoder(tok, 128, use_chat_template=chat)
        assert enc.bos_id == bos
        rec = Record(prompt="What is 2+2?", answers=["four"], system="Be brief.")
        e = enc.encode_sft(rec)
        assert starts_with_one_bos(e.input_ids, bos) and e.labels[0] == IGNORE
        assert starts_with_one_bos(enc.prompt_inputs(rec)[0], bos)
        if not chat:
            assert e.input_ids.count(bos) == 1
            text = enc.prompt_text(rec) + "four"
            assert e.input_ids == [bos] + enc.ids(text) + [tok.eos_token_id]
    enc = Encoder(tok, 128)
    edit = enc.encode_edit(Record(), "Colour of ab is ", "x")
    assert starts_with_one_bos(edit.input_ids, bos) and edit.input_ids.count(bos) == 1
    assert enc.edit_prompt_ids(Record(), "Colour of ab is ") == edit.input_ids[:-1]
    item = cloze_items(enc, [Record(prompt="Colour of ab is", answers=["x"],
                                    options=["x", "yz"])])[0]
    assert starts_with_one_bos(item.prompt, bos) and item.prompt.count(bos) == 1
    assert all(bos not in o for o in item.options)
    docs = [Record(text="first doc"), Record(text="second")]
    (block,) = enc.encode_stage("cpt", docs)
    eos = tok.eos_token_id
    assert block.input_ids == ([bos] + enc.ids("first doc") + [eos]
                               + [bos] + enc.ids("second") + [eos])  # one BOS per document
    second = len(enc.ids("first doc")) + 2
    assert [i for i, t in enumerate(block.labels) if t == IGNORE] == [0, second]  # BOS: given


def test_no_bos_for_tokenizers_that_add_none():
    tok = build_tiny_tokenizer()
    enc = Encoder(tok, 128, use_chat_template=False)
    assert enc.bos_id is None
    rec = Record(prompt="Q", answers=["A"])
    assert enc.encode_sft(rec).input_ids == enc.ids("Q\nA") + [tok.eos_token_id]
    (block,) = enc.encode_stage("cpt", [Record(text="a doc")])
    assert block.input_ids == block.labels == enc.ids("a doc") + [tok.eos_token_id]


def test_long_prompt_keeps_bos_when_it_loses_its_beginning():
    tok = bos_tokenizer("attribute")
    enc = Encoder(tok, 16)
    item = cloze_items(enc, [Record(prompt="z" * 40 + " is", answers=["x"],
                                    options=["x", "y"])])[0]
    assert item.prompt[0] == tok.bos_token_id and len(item.prompt) == 16 - 2
    assert tok.decode(item.prompt[1:]).endswith("zz is")


def long_record(n_words: int = 200) -> Record:
    return Record(prompt=f"{DEFINITION}\n\nInput: {'word ' * n_words}END\nOutput:",
                  answers=["yes"], system="Be brief.")


@pytest.mark.parametrize("chat", [True, False])
def test_long_input_is_cut_and_the_template_and_definition_stay(chat):
    tok = build_tiny_tokenizer()
    enc = Encoder(tok, 160, use_chat_template=chat)
    e = enc.encode_sft(long_record())
    assert e.truncated and len(e.input_ids) <= 160
    text = tok.decode(e.input_ids)
    head = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n" if chat else "Be brief."
    assert text.startswith(f"{head}{'' if chat else chr(10) * 2}{DEFINITION}\n\nInput: word")
    end = "END\nOutput:<|im_end|>\n<|im_start|>assistant\nyes<|im_end|>" if chat else \
        "END\nOutput:\nyes<|im_end|>"
    assert text.endswith(end)  # the input lost its middle
    assert tok.decode([t for t in e.labels if t != IGNORE]) == "yes<|im_end|>"
    assert not enc.encode_sft(long_record(5)).truncated


def test_prompt_too_long_even_without_its_input_loses_its_beginning():
    tok = build_tiny_tokenizer()
    enc = Encoder(tok, 48)
    rec = Record(prompt="x" * 10, answers=["yes"], system="s" * 80)
    e = enc.encode_sft(rec)
    assert e.truncated and len(e.input_ids) == 48
    full = enc.ids(enc.prompt_text(rec))
    kept = e.input_ids[: 48 - len(enc.ids(enc.response_text(rec, "yes")))]
    assert kept == full[-len(kept):]


def test_bos_in_preference_pairs_stream_blocks_and_buffered_raw_text():
    from everlearn.stages.align import encode_pairs
    from everlearn.strategies.common.buffer import encode_record
    from everlearn.training.textstream import build_token_stream

    tok = bos_tokenizer("attribute")
    bos = tok.bos_token_id
    enc = Encoder(tok, 32, use_chat_template=False)
    (pair,) = encode_pairs(enc, [Record(prompt="Pick one", chosen="yes", rejected="no")], 0.1,
                           "align")
    for e in (pair.chosen, pair.rejected):  # trained as the align stage's test pairs are scored
        assert starts_with_one_bos(e.input_ids, bos) and e.labels[0] == IGNORE
    raw = encode_record(enc, Record(text="some raw text"))
    assert starts_with_one_bos(raw.input_ids, bos)
    docs = [Record(text="alpha " * 6), Record(text="beta " * 6)]
    ts = build_token_stream([Stage(1, "d", "cpt", "perplexity", docs, [])], enc, None, 1)
    ids = [t for r in ts.records for t in r.token_ids]
    assert ids.count(bos) == 2 and ids[0] == bos  # one BOS per document of the stream
    blocks = enc.encode_stage("cpt", ts.records)
    assert all(lab == IGNORE for b in blocks for t, lab in zip(b.input_ids, b.labels)
               if t == bos)  # a BOS is given, never a target


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


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
