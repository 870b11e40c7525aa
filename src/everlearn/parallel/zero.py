"""DeepSpeed ZeRO stages 1 and 2 under an accelerate DeepSpeed config.

``accelerate launch --config_file examples/accelerate/deepspeed_zero2.yaml`` (or torchrun with
the same ``ACCELERATE_USE_DEEPSPEED`` / ``ACCELERATE_DEEPSPEED_*`` variables) shards the
optimizer state (stage 1) and also the gradients (stage 2) over the processes with DeepSpeed's
own ZeRO optimizer. Everything else stays as in the hand-written data parallelism of
everlearn.parallel.data_parallel: every process holds the whole model, draws the one-process
batch plan and trains on its rows of every batch with its share of the loss, and the strategies
run their hooks on whole weights as usual.

Each training phase wraps the model and its AdamW in a DeepSpeed engine
(``deepspeed.initialize``) and tears it down when the phase ends, because strategies add
adapters, prompts and blocks between stages. The engine runs with unmanaged gradient
accumulation: everlearn's loop calls ``engine.backward`` per micro-batch and ``engine.step`` once
per optimizer step, and DeepSpeed reduces the gradients (averaged over ranks, so the loss is
scaled by the world size to get the one-process sum), clips them to ``train.max_grad_norm`` and
updates its shard. The forward pass goes through the model itself, not the engine: under stages
1 and 2 the weights are whole on every rank, so evaluation, checkpoints and the strategies read
them as they are. Stage 3 (sharded weights) is refused: use the FSDP config, whose
``fsdp_reshard_after_forward: true`` shards what ZeRO-3 shards.

Refused under DeepSpeed: strategies that read or rewrite gradients (``agem``) or train outside
the loop (``grace``), edit stages, text streams and step checkpoints (the optimizer state lives
in DeepSpeed's flat partitions; a killed run resumes from its last stage checkpoint). See
docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from everlearn.errors import ConfigError
from everlearn.parallel.data_parallel import DataParallel
from everlearn.stages import get_kind

_WHERE = "accelerate config: deepspeed_config"


def requested() -> bool:
    """Whether the launcher asked for DeepSpeed (``accelerate launch`` with a DeepSpeed config
    sets ``ACCELERATE_USE_DEEPSPEED=true``) in a multi-process run."""
    return (os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
            and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1)


@dataclass
class Settings:
    """What everlearn takes from the accelerate DeepSpeed config."""

    stage: int  # ZeRO stage: 1 (optimizer state sharded) or 2 (and gradients)


def settings() -> Settings:
    """The ZeRO settings of the launcher's environment; a one-line error for those everlearn
    does not honour (stage 0 or 3, offloading, a separate DeepSpeed JSON file) or when
    DeepSpeed is not installed."""
    if os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", ""):
        raise ConfigError(f"{_WHERE}.deepspeed_config_file: not read by everlearn; set "
                          "zero_stage (1 or 2) in the accelerate config instead "
                          "(examples/accelerate/deepspeed_zero2.yaml)")
    raw = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    if raw not in ("1", "2"):
        raise ConfigError(f"{_WHERE}.zero_stage: {raw} is not supported: everlearn runs ZeRO "
                          "stage 1 or 2 (whole weights on every process); for sharded weights "
                          "use distributed_type FSDP (examples/accelerate/fsdp.yaml)")
    for var, key in (("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "offload_optimizer_device"),
                     ("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "offload_param_device")):
        value = os.environ.get(var, "none").lower()
        if value not in ("none", ""):
            raise ConfigError(f"{_WHERE}.{key}: {value} is not supported by everlearn; set it "
                              "to none")
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise ConfigError(f"{_WHERE}: DeepSpeed is not installed; pip install "
                          "'everlearn[deepspeed]'") from None
    return Settings(int(raw))


def check_run(strategies: list[str], stage_kinds: list[str], recycle: bool, text_stream: bool,
              checkpoint_every: int, source: str) -> None:
    """A one-line error, before anything is written, for what everlearn cannot run under
    DeepSpeed."""
    if not requested():
        return
    settings()
    alternative = "run without DeepSpeed (examples/accelerate/ddp.yaml)"
    if recycle:
        raise ConfigError(f"{source}: recycle: not supported under DeepSpeed; {alternative}")
    for name in strategies:
        why = refusal(name)
        if why is not None:
            raise ConfigError(f"{source}: strategies: '{name}' is not supported under DeepSpeed "
                              f"({why}); {alternative}")
    if any(get_kind(k).edits for k in stage_kinds):
        raise ConfigError(f"{source}: stages: edit stages are not supported under DeepSpeed; "
                          f"{alternative}")
    if text_stream:
        raise ConfigError(f"{source}: text_stream: not supported under DeepSpeed (it carries "
                          f"AdamW state across segments); {alternative}")
    if checkpoint_every:
        raise ConfigError(f"{source}: train.checkpoint_every: step checkpoints are not taken "
                          "under DeepSpeed (its optimizer state lives in flat partitions); set "
                          f"it to 0 (a killed run resumes from its last stage) or {alternative}")


def refusal(name: str) -> str | None:
    """Why strategy ``name`` cannot run under DeepSpeed ZeRO, as it declares (None: it can)."""
    from everlearn.strategies import STRATEGIES, Strategy

    return STRATEGIES.get(name, Strategy).unsupported_parallel.get("zero")


@contextlib.contextmanager
def hidden_from_accelerate() -> Iterator[None]:
    """Create accelerate's state and Accelerator as for plain data parallelism: with
    ``ACCELERATE_USE_DEEPSPEED`` set, accelerate would route ``backward`` through an engine
    that ``prepare`` builds, and everlearn never calls ``prepare`` (it builds one per phase)."""
    if not requested():
        yield
        return
    saved = os.environ["ACCELERATE_USE_DEEPSPEED"]
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "false"
    try:
        yield
    finally:
        os.environ["ACCELERATE_USE_DEEPSPEED"] = saved


class Engine:
    """One phase's DeepSpeed engine around the model's trainable weights and their AdamW."""

    def __init__(self, model, optimizer: torch.optim.Optimizer, max_grad_norm: float | None,
                 cfg: Settings) -> None:
        import deepspeed

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        config = {
            "train_micro_batch_size_per_gpu": 1,  # not used: everlearn feeds the batches
            "gradient_accumulation_steps": 1,
            "managed_gradient_accumulation": False,  # the loop says when a step is complete
            "gradient_clipping": float(max_grad_norm or 0.0),
            # buckets of 16M elements (64 MB in fp32) instead of DeepSpeed's 500M: with the
            # default the reduce bucket holds every gradient of a small model at once
            "zero_optimization": {"stage": cfg.stage, "reduce_bucket_size": 1 << 24,
                                  "allgather_bucket_size": 1 << 24},
            "zero_allow_untested_optimizer": True,  # torch's AdamW as the client optimizer
            "steps_per_print": 1 << 30,
            "wall_clock_breakdown": False,
        }
        self.world = torch.distributed.get_world_size()
        # counted before ZeRO replaces the groups' tensors with this rank's flat partition
        n = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
        # a guard: the one-process run makes no such call, so whatever it might draw from
        # torch's RNG (deepspeed 0.19.8 draws nothing) must not shift later adapters or dropout
        cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=cuda):
            self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                        config=config)
        logging.getLogger("everlearn").info(
            "DeepSpeed ZeRO stage %d over %d processes: %d trainable weights, each process "
            "keeps the AdamW state%s of about %d", cfg.stage, self.world, n,
            " and gradients" if cfg.stage == 2 else "", n // self.world)

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate this rank's gradient of ``loss``; DeepSpeed averages over the ranks at
        the step, and the ranks' losses already add up to the batch's loss."""
        self.engine.backward(loss * self.world, scale_wrt_gas=False)

    def step(self) -> None:
        """Reduce the gradients, clip, update this rank's shard, gather the weights, zero the
        gradients."""
        self.engine.step()

    def close(self) -> None:
        """Remove the engine's gradient hooks (a later backward, e.g. a Fisher estimate, must
        not feed a finished phase's partitions)."""
        self.engine.destroy()
        for name in ("module_forward_pre_hook", "module_forward_post_hook"):
            hook = getattr(self.engine, name, None)  # destroy() leaves them on the model, and
            if hook is not None:  # they would keep this engine and its partitions alive
                hook.remove()
        self.engine = None


class ZeRO(DataParallel):
    """The training loop's DeepSpeed mode: the data-parallel split; one :class:`Engine` per
    phase reduces, clips, steps and zeroes the gradients (it starts every rank from rank 0's
    weights). Step checkpoints are neither taken nor resumed: the AdamW state lives in
    DeepSpeed's flat partitions."""

    step_checkpoints = False
    resume_refusal = "a step checkpoint is not resumed under DeepSpeed"

    def __init__(self, accelerator, model) -> None:
        super().__init__(accelerator, model)
        self.engine: Engine | None = None

    def start_from_rank_zero(self) -> None:
        """The phase's engine (which starts every rank from rank 0's weights)."""
        self.engine = Engine(self.model, self.optimizer, self.max_grad_norm, settings())

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def reduce(self) -> None:
        """Nothing: the engine reduces at its step."""

    def step(self) -> None:
        self.engine.step()  # reduce, clip, step and zero the gradients

    def zero_grad(self) -> None:
        """Nothing: the engine's step zeroed them."""
