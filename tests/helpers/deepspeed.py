"""Helpers shared by several files of the deepspeed tests."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

ZERO2_YAML = ROOT / "examples" / "accelerate" / "deepspeed_zero2.yaml"


def launch_env(config: Path) -> dict[str, str]:
    """The ACCELERATE_* variables ``accelerate launch --config_file config`` gives the
    processes (accelerate's launcher code, run in this process)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args = launch_command_parser().parse_args(["--config_file", str(config), "x.py"])
    args, defaults, _ = _validate_launch_command(args)
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    return {k: v for k, v in env.items() if k.startswith("ACCELERATE_")}


def zero_env(monkeypatch, **extra: str) -> None:
    for k, v in {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
                 "WORLD_SIZE": "2", **extra}.items():
        monkeypatch.setenv(k, v)
