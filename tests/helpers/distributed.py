"""Helpers shared by several files of the distributed tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_checkpoints_close(ckpt1: Path, ckpt2: Path, tensors: str, rtol: float) -> None:
    """Two stage checkpoints hold the same strategy state and the same tensors in ``tensors``
    (names, shapes, dtypes), each within ``rtol`` of its norm."""
    assert (json.loads((ckpt2 / "strategy.json").read_text())
            == json.loads((ckpt1 / "strategy.json").read_text()))
    t1, t2 = load_file(ckpt1 / tensors), load_file(ckpt2 / tensors)
    assert t1.keys() == t2.keys()
    for k in t1:
        assert (t2[k].shape, t2[k].dtype) == (t1[k].shape, t1[k].dtype), k
        assert float((t2[k] - t1[k]).norm()) <= rtol * float(t1[k].norm()) + 1e-8, k


def torchrun(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "everlearn", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
