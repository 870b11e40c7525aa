"""Helpers shared by several files of the fsdp tests."""

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
