"""What every run mode sets up before it trains: seeding, the accelerator, the environment
record and the tracker (the run directory's log is :mod:`everlearn.runs.run_log`'s).

The stream, text-stream, recycle and eval-only drivers all start the same way; doing it here,
once, keeps them from drifting apart (and from importing each other for it). The precision is
resolved once per driver (:func:`begin`) and handed down: the accelerator is built for it and
the model is placed in bf16 storage when it says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from everlearn.config import RunConfig
from everlearn.parallel import distributed as dist
from everlearn.parallel import zero
from everlearn.runs import environment
from everlearn.training.precision import resolve_precision

log = logging.getLogger("everlearn")


def seed_everything(seed: int) -> None:
    from accelerate.utils import set_seed

    set_seed(seed)


def run_device() -> torch.device:
    """The device a run trains on: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def new_run_dir(cfg: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.output_dir) / f"{cfg.name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def make_accelerator(precision: str, **kwargs: Any):
    """An Accelerator for the configured ``train.precision`` (resolved here); see
    :func:`accelerator_for`."""
    return accelerator_for(resolve_precision(precision, run_device()), **kwargs)


def accelerator_for(mixed: str, **kwargs: Any):
    """An Accelerator for this run with accelerate's ``mixed`` precision (already resolved).
    accelerate keeps one shared state per process; a run with another precision in the same
    process (an API user, a benchmark) resets it first. ``kwargs`` go to ``Accelerator``
    (``log_with``/``project_dir`` of a tracker). Under torchrun or ``accelerate launch`` it joins
    the process group (data parallel, see everlearn.parallel.distributed; FSDP, see
    everlearn.parallel.fsdp; DeepSpeed ZeRO 1/2, see everlearn.parallel.zero)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    dist.check_launcher()
    device = run_device()
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed:
        AcceleratorState._reset_state(True)
    with zero.hidden_from_accelerate():  # DeepSpeed: everlearn builds the engine per phase
        acc = Accelerator(mixed_precision=mixed, cpu=device.type == "cpu", **kwargs)
    dist.check_accelerator(acc)
    return acc


def record_environment(acc) -> dict[str, Any]:
    """This process's environment for results.json, logged in one line (log.txt)."""
    env = environment.collect(acc.device, acc.mixed_precision, acc.num_processes)
    log.info("environment: %s", environment.summary(env))
    return env


@dataclass
class Session:
    """What :func:`begin` set up: the accelerator, whether weights are stored in bf16, and the
    environment of this process and of the processes before it (a resumed run)."""

    acc: Any
    bf16: bool
    environment: dict[str, Any]
    environment_history: list[dict[str, Any] | None] = field(default_factory=list)


def begin(cfg: RunConfig, previous: dict[str, Any] | None, tracker=None,
          resume: bool = False) -> Session:
    """Seed from the run seed, resolve the precision once, build the accelerator, record the
    environment (against ``previous``, a resumed run's results) and start ``tracker``."""
    seed_everything(cfg.seed)
    mixed = resolve_precision(cfg.train.precision, run_device())
    kwargs = tracker.accelerator_kwargs() if tracker is not None else {}
    acc = accelerator_for(mixed, **kwargs)
    env = record_environment(acc)
    session = Session(acc, acc.mixed_precision == "bf16", env,
                      environment.history(previous, env))
    if tracker is not None:
        tracker.start(acc, resume)
    return session


def routes(strategy) -> bool:
    """Whether any member of a strategy stack chooses adapters per test record (evaluation then
    groups by it): the stream and eval-only drivers pass the stack's router only then."""
    from everlearn.strategies.base import Strategy

    return any(type(m).route is not Strategy.route for m in strategy.members)
