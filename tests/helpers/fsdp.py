"""Helpers shared by several files of the fsdp tests.

FSDP2 under two processes (torchrun, gloo on CPU) gives the matrix of one process.

The launch environment is the one ``accelerate launch --config_file
examples/accelerate/fsdp.yaml`` sets, derived by accelerate's own launcher code from the
example file, so the example is tested as shipped. Tolerance: every cell of R within one test
example's worth (100 / n_test points); in practice the matrices come out equal and the final
losses agree to ~1e-5 relative. The checkpoints of the sharded run are the one-process files
(same names, shapes and dtypes, whole tensors), and a one-process run resumes from them. A run
stopped by SIGTERM in the middle of a phase resumes under FSDP from its gathered step
checkpoint to the uninterrupted run's results. Strategies FSDP cannot run, FSDP1 and
Megatron-LM configs stop with a one-line error."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FSDP_YAML = ROOT / "examples" / "accelerate" / "fsdp.yaml"


def launch_env(config: Path) -> dict[str, str]:
    """The FSDP_* / ACCELERATE_USE_* variables ``accelerate launch --config_file config``
    gives the processes (accelerate's launcher code, run in this process)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config), "x.py"])
    args = _validate_launch_command(args)[0]
    env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith(("FSDP_", "ACCELERATE_USE_"))}
