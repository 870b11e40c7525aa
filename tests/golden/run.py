"""Golden outputs: results.json of a fixed set of tiny-model runs, to prove a refactor keeps
behaviour (the foundation issue: commit goldens first, then move code, then reproduce them).

    .venv/bin/python -m tests.golden.run write          # run every case, write tests/golden/*.json
    .venv/bin/python -m tests.golden.run check          # run every case, compare exactly
    .venv/bin/python -m tests.golden.run check -k sft_  # only the cases whose name has 'sft_'

The cases cover every stage kind (sft, cpt, align, edit), every strategy (stage_projector on the
tiny LLaVA), a text stream with the shift detector, recycling, a run killed mid-phase and
resumed from its step checkpoint, and a 2-process run (torchrun). What a run measures about the
machine (times, memory, tokens per second, the environment) and its temporary paths are removed.

This is a script, not a test: floating-point results depend on the CPU's kernels (AVX2 and
AVX-512 give different low bits, and on the tiny model sometimes a different greedy token), so
goldens are compared on the machine that wrote them, before and after a change. ``MACHINE.json``
beside them says which machine that was.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VOLATILE = {"wall_time_s", "train_time_s", "eval_time_s", "strategy_time_s", "tokens_per_s",
            "peak_memory_mb", "base_eval_time_s", "environment", "environment_history"}


def normalise(value, tmp: str):
    """``value`` without machine measurements, with the temporary directory as ``<tmp>``."""
    if isinstance(value, dict):
        return {k: normalise(v, tmp) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [normalise(v, tmp) for v in value]
    if isinstance(value, str):
        return value.replace(tmp, "<tmp>")
    return value


# --- the cases ------------------------------------------------------------------------------
def _three(tmp: Path) -> list[dict]:
    from tests.conftest import constant_task

    # label stages (scored by option log-likelihood: every run moves the scores, and any
    # change to the numbers shows) with one generated stage (exact match, greedy decoding)
    labels = ["alpha", "bravo", "charlie"]
    stages = [constant_task(tmp, "red", "alpha", n_train=16, n_test=6),
              constant_task(tmp, "green", "bravo", n_train=16, n_test=6),
              constant_task(tmp, "blue", "charlie", n_train=16, n_test=6)]
    for st in stages[:2]:
        st["labels"] = labels
    return stages


def _small(tmp: Path, stages: list[dict], **overrides) -> dict:
    from tests.conftest import tiny_config

    train = {"lr": 1e-2, "steps": 24, "batch_size": 4, "precision": "fp32", "max_length": 48,
             "schedule": "cosine", "warmup_ratio": 0.25}
    train.update(overrides.pop("train", {}))
    return tiny_config(tmp, stages, train=train, **overrides)


def _run(cfg: dict, tmp: Path) -> dict:
    from everlearn.runs.runner import start_run
    from everlearn.validation import build_config

    return start_run(build_config(cfg), tmp / "run", quiet=True)[1]


def strategy_case(name: str) -> Callable[[Path], dict]:
    def case(tmp: Path) -> dict:
        from everlearn.strategies import STRATEGIES

        finetune = STRATEGIES[name].requires_finetune or "lora"
        return _run(_small(tmp, _three(tmp), strategies=[{"name": name}],
                           model={"name": "tiny-llama", "finetune": finetune,
                                  "lora": {"r": 4, "dropout": 0.1}}), tmp)
    return case


def cpt_case(tmp: Path) -> dict:
    from tests.helpers.recycle import news_stage

    return _run(_small(tmp, [_three(tmp)[0], news_stage(tmp)], strategies=["replay"]), tmp)


def align_case(tmp: Path) -> dict:
    from tests.helpers.align import pref_stage

    return _run(_small(tmp, [pref_stage("pref_concise"), pref_stage("pref_format")]), tmp)


def edit_case(editor: str) -> Callable[[Path], dict]:
    def case(tmp: Path) -> dict:
        from tests.helpers.edit import GRACE, three_batches

        strategies = [GRACE] if editor == "grace" else []
        return _run(_small(tmp, three_batches(tmp), strategies=strategies), tmp)
    return case


def text_stream_case(tmp: Path) -> dict:
    from tests.helpers.text_stream import stream_config

    cfg = stream_config(tmp, {"mode": "detector", "threshold": 8.0}, budget=12000,
                        strategies=[{"name": "replay", "buffer_size": 40, "mix_ratio": 0.2}])
    return _run(cfg, tmp)


def recycle_case(tmp: Path) -> dict:
    from tests.helpers.recycle import recycle_config

    return _run(recycle_config(tmp), tmp)


def vision_case(tmp: Path) -> dict:
    from tests.helpers.vision import tiny_vision_config

    cfg = tiny_vision_config(tmp, [
        {"name": "vis", "builtin": "visual_shapes",
         "builtin_options": {"tasks": ["colour", "shape"], "train_size": 16, "test_size": 6}}],
        scenario="DIL", strategies=["stage_projector"],
        eval={"batch_size": 16, "general_probes": ["kl"], "general_max_new_tokens": 2})
    return _run(cfg, tmp)


def resume_case(tmp: Path) -> dict:
    """Killed after step 5 of phase 2 (its step checkpoint is from step 4), then resumed."""
    from everlearn.runs.runner import resume_run, start_run
    from everlearn.runs.tracking import Tracker
    from everlearn.validation import build_config

    cfg = _small(tmp, _three(tmp), strategies=[{"name": "replay", "buffer_size": 8}],
                 train={"steps": 6, "checkpoint_every": 2})
    original = Tracker.on_step

    def on_step(self, loss, lr):
        original(self, loss, lr)
        if self.step == 6 + 5:
            raise KeyboardInterrupt  # a killed run seen from the inside

    Tracker.on_step = on_step
    try:
        start_run(build_config(cfg), tmp / "run", quiet=True)
        raise SystemExit("resume case: the run was not interrupted")
    except KeyboardInterrupt:
        pass
    finally:
        Tracker.on_step = original
    return resume_run(tmp / "run", quiet=True)[1]


def two_process_case(tmp: Path) -> dict:
    import yaml

    from tests.helpers.distributed import torchrun

    cfg = _small(tmp, _three(tmp), strategies=["replay"])
    (tmp / "stream.yaml").write_text(yaml.safe_dump(cfg))
    proc = torchrun("run", str(tmp / "stream.yaml"), "--output", str(tmp / "run"), "-q")
    if proc.returncode != 0:
        raise SystemExit(f"two_process: torchrun failed:\n{proc.stderr[-2000:]}")
    return json.loads((tmp / "run" / "results.json").read_text())


# Strategies of issue 18 that have no golden case yet; each has its own property tests and its
# row in tests/e2e/test_strategy_matrix.py.
NO_GOLDEN_YET = ("gem", "migu", "osf", "sapt_lora")


def cases() -> dict[str, Callable[[Path], dict]]:
    from everlearn.strategies import STRATEGIES

    out = {f"sft_{n}": strategy_case(n) for n in sorted(STRATEGIES)
           if n not in ("grace", "stage_projector", "wise")}
    for n in NO_GOLDEN_YET:  # strategies added after the goldens were written
        out.pop(f"sft_{n}", None)
    out.update(cpt_replay=cpt_case, align_dpo=align_case, edit_ft=edit_case("ft"),
               edit_grace=edit_case("grace"), text_stream_detector=text_stream_case,
               recycle=recycle_case, vision_stage_projector=vision_case,
               resume_mid_phase=resume_case, two_process_replay=two_process_case)
    return out


# --- write / check --------------------------------------------------------------------------
def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), platform.processor())
    flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("flags")), "")
    import torch
    import transformers

    return {"cpu": cpu, "avx512_bf16": "avx512_bf16" in flags, "torch": torch.__version__,
            "transformers": transformers.__version__,
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                     capture_output=True, text=True).stdout.strip()}


def warn_other_machine() -> None:
    """Say so when the goldens were written on another CPU, torch or transformers: then a
    difference may be the kernels', not the change's (write them at the commit before it)."""
    written = json.loads((HERE / "MACHINE.json").read_text())
    here = machine()
    differ = [k for k in ("cpu", "avx512_bf16", "torch", "transformers") if written[k] != here[k]]
    if differ:
        print("note: the goldens were written with " + ", ".join(
            f"{k}={written[k]!r} (here {here[k]!r})" for k in differ) + "; run `write` at the "
            "commit before your change, then `check`", file=sys.stderr)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["write", "check"])
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # as the test suite runs: one thread, the same kernels' order
    if args.mode == "check":
        warn_other_machine()
    failed = []
    for name, case in cases().items():
        if args.k not in name:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            got = normalise(case(Path(tmp)), tmp)
        path = HERE / f"{name}.json"
        if args.mode == "write":
            path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
            print(f"wrote {path.name}")
        elif not path.exists() or json.loads(path.read_text()) != got:
            failed.append(name)
            print(f"DIFFERS {name}" + ("" if path.exists() else " (no golden)"))
        else:
            print(f"same    {name}")
    if args.mode == "write" and not args.k:
        (HERE / "MACHINE.json").write_text(json.dumps(machine(), indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
