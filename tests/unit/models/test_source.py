"""Where ``model.name`` points (``everlearn.models.source``): names resolved beside the config,
Hub ids checked against the cache, and the one-line error offline instead of download retries.

Nothing here touches the network: every test runs with ``HF_HUB_OFFLINE=1`` and a Hub cache
in a temporary directory."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from everlearn.config import ModelConfig
from everlearn.errors import ModelError
from everlearn.models.source import (
    check_hub_id,
    check_model,
    in_hub_cache,
    locate,
    resolve_model_name,
)


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch, tmp_path):
    """No network, and an empty Hub cache of our own (a cached model on this machine must not
    make a test pass)."""
    import huggingface_hub.constants as hub

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    return cache


def fake_cached(cache: Path, repo: str) -> None:
    """A Hub id in the cache's layout (models--org--name/refs/main -> snapshots/SHA/)."""
    sha = "0" * 40
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(sha)
    (root / "snapshots" / sha).mkdir(parents=True)
    (root / "snapshots" / sha / "config.json").write_text("{}")


def save_tiny(path: Path) -> Path:
    from everlearn.models.embedded import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    build_tiny_model(tok).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


# --- resolving a name ----------------------------------------------------------------------
def test_embedded_names_and_hub_ids_stay_names(tmp_path: Path):
    assert resolve_model_name("tiny-llama", tmp_path) == "tiny-llama"
    assert resolve_model_name("smollm2-135m-instruct", tmp_path) == "smollm2-135m-instruct"
    assert resolve_model_name("HuggingFaceTB/SmolLM2-135M", tmp_path) == \
        "HuggingFaceTB/SmolLM2-135M"
    assert resolve_model_name("mymodel", tmp_path) == "mymodel"  # nothing there: a Hub id


def test_bare_and_dotted_names_resolve_beside_the_config_alike(tmp_path: Path, monkeypatch):
    (tmp_path / "mymodel").mkdir()
    (tmp_path / "org" / "name").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory plays no part
    assert resolve_model_name("mymodel", tmp_path) == str(tmp_path / "mymodel")
    assert resolve_model_name("./mymodel", tmp_path) == str(tmp_path / "mymodel")
    assert resolve_model_name("org/name", tmp_path) == str(tmp_path / "org" / "name")
    assert resolve_model_name("./missing", tmp_path) == str(tmp_path / "missing")  # a path
    assert resolve_model_name("/abs/m", tmp_path) == "/abs/m"
    assert resolve_model_name("m.gguf", tmp_path) == str(tmp_path / "m.gguf")


def test_load_config_stores_the_absolute_model_path(tmp_path: Path, monkeypatch):
    """A bare name beside the config resolves there from any cwd, and the dumped config
    (what a run directory's config.yaml holds) loads to the same path from anywhere."""
    from everlearn.config import dump_yaml
    from everlearn.validation import load_config

    conf = tmp_path / "configs"
    (conf / "mymodel").mkdir(parents=True)
    data = {"name": "s", "model": {"name": "mymodel"},
            "stages": [{"name": "a", "builtin": "arithmetic"}]}
    (conf / "s.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("configs/s.yaml"))
    assert cfg.model.name == str(conf.resolve() / "mymodel")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    monkeypatch.chdir(run_dir)
    assert load_config(run_dir / "config.yaml").model.name == cfg.model.name


def test_without_a_config_file_names_resolve_against_the_working_directory(
        tmp_path: Path, monkeypatch):
    from everlearn.validation import load_config

    (tmp_path / "mymodel").mkdir()
    monkeypatch.chdir(tmp_path)
    base = {"name": "s", "stages": [{"name": "a", "builtin": "arithmetic"}]}
    cfg = load_config(None, ["model.name=mymodel"], base=base)
    assert cfg.model.name == str(tmp_path / "mymodel")


# --- locating and checking -----------------------------------------------------------------
@pytest.mark.parametrize(("name", "says"), [
    ("/nonexistent", "path '/nonexistent' not found"),
    ("/nope/m.gguf", "GGUF file '/nope/m.gguf' not found"),
    ("a/b/c", "is not an embedded name"),
])
def test_locate_refuses_what_is_not_there(name, says):
    with pytest.raises(ModelError, match="^model.name: ") as info:
        locate(name)
    assert says in str(info.value) and "\n" not in str(info.value)


def test_locate_a_directory_needs_a_config(tmp_path: Path):
    with pytest.raises(ModelError, match="has no config.json"):
        locate(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert locate(str(tmp_path)).kind == "dir"
    assert locate("org/name").kind == "hub"


def test_an_uncached_hub_id_offline_fails_at_once_in_one_line():
    start = time.monotonic()
    with pytest.raises(ModelError) as info:
        check_hub_id("someone/no-such-model")
    assert time.monotonic() - start < 2.0  # not the minute of retries transformers spends
    msg = str(info.value)
    assert msg.startswith("model.name: 'someone/no-such-model' is not a local directory")
    assert "Hugging Face cache" in msg and "HF_HUB_OFFLINE" in msg and "\n" not in msg


def test_a_cached_hub_id_passes_offline(offline_hub: Path):
    assert not in_hub_cache("org/cached")
    fake_cached(offline_hub, "org/cached")
    assert in_hub_cache("org/cached")
    check_hub_id("org/cached")  # no error, no network


def test_load_base_model_offline_fails_fast_for_an_uncached_name():
    from everlearn.models.loading import load_base_model

    start = time.monotonic()
    with pytest.raises(ModelError, match="^s.yaml: model.name: 'mymodel' is not a local"):
        load_base_model(ModelConfig(name="mymodel"), source="s.yaml")
    assert time.monotonic() - start < 2.0


def test_check_model_reads_config_and_tokenizer_of_a_directory(tmp_path: Path):
    path = save_tiny(tmp_path / "m")
    assert check_model(str(path)) == f"local directory {path}"
    (path / "tokenizer.json").write_text("not json")
    (path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ModelError, match="cannot load the config and tokenizer of"):
        check_model(str(path))


def test_check_model_embedded_and_field_name():
    assert check_model("tiny-llama") == "embedded model tiny-llama"
    with pytest.raises(ModelError, match="^recycle.new_base: path '/nope' not found"):
        check_model("/nope", field="recycle.new_base")
