"""The model cache is built once when two processes need it at the same moment: the second
waits for the first, and never replaces the directory the first is reading."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from everlearn.models import embedded


def test_two_processes_building_one_cache_build_it_once(tmp_path):
    """Two processes start at once on an empty cache (the race two runs on a fresh machine
    had: the second deleted the first one's finished copy while it was loading it)."""
    script = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from everlearn.models.embedded import building, is_cached_model, write_model_dir
        from everlearn.models.embedded import build_tiny_model, build_tiny_tokenizer
        target = Path({str(tmp_path / "cache" / "m")!r})
        with building(target):
            if not is_cached_model(target):
                (target.parent / f"built-by-{{os.getpid()}}").touch()
                time.sleep(1.0)  # a slow conversion: the other process arrives meanwhile
                tok = build_tiny_tokenizer()
                write_model_dir(target, build_tiny_model(tok), tok)
        ino = (target / "model.safetensors").stat().st_ino
        time.sleep(0.5)
        assert (target / "model.safetensors").stat().st_ino == ino  # nobody replaced it
        print("ok")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-800:] for o in outs]
    assert len(list((tmp_path / "cache").glob("built-by-*"))) == 1
    assert embedded.is_cached_model(tmp_path / "cache" / "m")
    assert not list((tmp_path / "cache").glob(".tmp-*"))


@pytest.mark.slow  # converts the embedded GGUF (a few seconds, 540 MB on disk)
def test_converting_the_embedded_model_leaves_the_rng_as_it_was(tmp_path, monkeypatch):
    """The first run on a fresh machine converts the model; that must not move the seeded RNG
    (it did: the first run's LoRA initialisation and dropout differed from every later run's)."""
    import torch

    monkeypatch.setenv("EVERLEARN_CACHE", str(tmp_path))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    target = embedded.embedded_smollm2_dir()
    assert embedded.is_cached_model(target)
    assert torch.equal(torch.get_rng_state(), before)
