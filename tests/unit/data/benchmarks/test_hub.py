"""A benchmark read from a Hugging Face dataset (``data_dir: hf:OWNER/NAME[/FOLDER][@REV]``),
without the network: ``snapshot_download`` is replaced by one that serves a folder written
here, and the offline path runs against an empty cache."""

from pathlib import Path

import pytest

from everlearn.data.benchmarks import hub
from everlearn.data.benchmarks.layouts import benchmark_stages
from everlearn.errors import ConfigError
from everlearn.runs.config_source import benchmark_overrides
from tests.helpers.benchmark_layouts import write_olora


@pytest.mark.parametrize("text, parsed", [
    ("hf:org/cl", ("org/cl", "", None)),
    ("hf:org/cl/CL_Benchmark@v1.0", ("org/cl", "CL_Benchmark", "v1.0")),
    ("hf:org/cl/a/b/", ("org/cl", "a/b", None)),
])
def test_hub_source_parts(text, parsed):
    assert hub.parse_hub_source(text) == parsed


@pytest.mark.parametrize("text", ["hf:org", "hf:", "hf:org/cl@"])
def test_a_malformed_hub_source_is_a_one_line_error(text):
    with pytest.raises(ConfigError, match=r"^benchmark.data_dir: expected hf:OWNER/NAME"):
        hub.parse_hub_source(text)


def fake_hub(monkeypatch, snapshot: Path) -> list[dict]:
    calls: list[dict] = []

    def snapshot_download(repo_id, **kwargs):
        calls.append({"repo_id": repo_id, **kwargs})
        return str(snapshot)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    return calls


def test_a_folder_of_a_hub_dataset_reads_as_the_local_layout(tmp_path: Path, monkeypatch):
    write_olora(tmp_path / "snap" / "CL_Benchmark")
    calls = fake_hub(monkeypatch, tmp_path / "snap")
    _, stages = benchmark_stages({"name": "olora-standard", "order": 1,
                                  "data_dir": "hf:org/cl-data/CL_Benchmark@abc123"})
    _, local = benchmark_stages({"name": "olora-standard", "order": 1,
                                 "data_dir": str(tmp_path / "snap" / "CL_Benchmark")})
    assert stages == local  # the same stream as from the folder itself
    assert calls == [{"repo_id": "org/cl-data", "repo_type": "dataset", "revision": "abc123",
                      "allow_patterns": ["CL_Benchmark/**"], "local_files_only": False}]


def test_a_missing_folder_in_the_dataset_is_named(tmp_path: Path, monkeypatch):
    (tmp_path / "snap").mkdir()
    fake_hub(monkeypatch, tmp_path / "snap")
    with pytest.raises(ConfigError, match="the dataset org/cl has no folder 'CL_Benchmark'"):
        benchmark_stages({"name": "olora-standard", "data_dir": "hf:org/cl/CL_Benchmark"})


def test_offline_and_not_cached_is_a_one_line_error(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ConfigError) as info:
        benchmark_stages({"name": "olora-standard", "data_dir": "hf:org/never-fetched"})
    assert str(info.value) == ("benchmark.data_dir: hf:org/never-fetched: not in the Hugging "
                               "Face cache, and the Hub is offline (HF_HUB_OFFLINE is set)")


def test_the_cli_keeps_a_hub_source_and_resolves_a_folder(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert benchmark_overrides("trace", None, "hf:org/trace") == [
        "benchmark.name=trace", "benchmark.data_dir=hf:org/trace"]
    assert benchmark_overrides("trace", 1, "data")[1] == f"benchmark.data_dir={tmp_path / 'data'}"
