"""Training throughput: everlearn's loop vs a plain PyTorch loop vs ``transformers.Trainer``.

Same model (embedded SmolLM2-135M-Instruct + PEFT LoRA r=8 on all linear layers, fresh and
identically seeded for every contender), same tokenised examples, the same padded batches in the
same order, AdamW with the same lr / cosine schedule / warm-up / grad clipping, and the same
precision. Contenders run in the same process, interleaved in rounds (ABC, BCA, ...), so a
noisy machine slows all of them alike.

What is timed, per round of n steps (tokens = non-padding tokens, i.e. attention_mask sum):

* everlearn: the wall time of ``everlearn.training.trainer.Trainer.train_phase(model, [stage],
phase)``
  (optimizer + schedule set-up, the loop, progress bar and memory sampling). Its ``encode`` is
  served from the shared pre-tokenised examples, so tokenisation is not timed (it is measured
  once, separately, and reported as a note).
* plain: the wall time of ``train_plain()``: AdamW + schedule, then collate / autocast forward /
  backward / clip / step per batch.
* trainer: the wall time of ``transformers.Trainer.train()`` with ``max_steps=n`` (its
  sampler is replaced by a sequential one over the batches laid out in order).

Usage::

    .venv/bin/python benchmarks/throughput.py                      # both precisions, ~5 min
    .venv/bin/python benchmarks/throughput.py --steps 3 --warmup 1 --precision bf16
    .venv/bin/python benchmarks/throughput.py --json throughput.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from everlearn.config import ModelConfig, StrategySpec, TrainConfig
from everlearn.data.builtin import get_builtin_task
from everlearn.data.encode import Encoded, Encoder, collate, length_grouped_batches
from everlearn.data.readers import read_source
from everlearn.models.loading import load_base_model, make_trainable
from everlearn.runs.session import make_accelerator, seed_everything
from everlearn.stages.stream import Stage
from everlearn.strategies import StrategyStack, build_strategy
from everlearn.strategies.base import Strategy
from everlearn.training.trainer import Trainer as EverlearnTrainer

REPO = Path(__file__).resolve().parents[1]
SUPERNI_TASK = REPO.parent / "shared/data/superni/task1687_sentiment140_classification/train.json"
CONTENDERS = ("everlearn", "plain", "trainer")
SEED = 0


@dataclass
class Setup:
    """What every contender shares: examples, batch size, lr and the step budget."""

    examples: list[Encoded]
    encoder: Encoder
    data_name: str
    batch_size: int = 8
    max_length: int = 128
    lr: float = 2e-4
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    device: torch.device = torch.device("cpu")

    @property
    def pad_id(self) -> int:
        return self.encoder.pad_id

    @property
    def lengths(self) -> list[int]:
        return [len(e.input_ids) for e in self.examples]


@dataclass
class Result:
    """One contender at one precision, summed over its timed rounds."""

    contender: str
    precision: str
    steps: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    step_s: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.wall_s, 1e-9)

    @property
    def median_step_s(self) -> float:
        return statistics.median(self.step_s) if self.step_s else self.wall_s / max(1, self.steps)


# --- data --------------------------------------------------------------------------------------
def load_records(n: int, source: str):
    """``n`` SFT records: SuperNI task1687 when present (or ``source=builtin``), else cipher."""
    if source != "builtin" and SUPERNI_TASK.is_file():
        records = read_source(str(SUPERNI_TASK), "superni", "sft", {}, None, "task1687")
        return records[:n], "superni task1687 (sentiment140)"
    if source == "superni":
        raise SystemExit(f"{SUPERNI_TASK}: not found (use --data builtin)")
    return get_builtin_task("cipher").generate(n, SEED, "train"), "builtin cipher"


def build_setup(args) -> tuple[Setup, float]:
    """Tokenise once with everlearn's Encoder; returns the setup and the encoding time."""
    _, tok = load_base_model(ModelConfig())
    encoder = Encoder(tok, args.max_length, use_chat_template=True)
    records, name = load_records(args.examples, args.data)
    t0 = time.perf_counter()
    examples = encoder.encode_stage("sft", records)
    encode_s = time.perf_counter() - t0
    examples = [e for e in examples if any(lab != -100 for lab in e.labels)]
    examples = examples[: len(examples) - len(examples) % args.batch_size]  # only full batches
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # as everlearn picks
    setup = Setup(examples, encoder, name, args.batch_size, args.max_length, device=device)
    return setup, encode_s


def batch_plan(setup: Setup, phase: int, steps: int) -> list[list[int]]:
    """The batches everlearn's loop draws for ``phase`` (same rng, same length grouping)."""
    rng = random.Random(f"{SEED}:{phase}:order")
    plan: list[list[int]] = []
    while len(plan) < steps:
        plan.extend(length_grouped_batches(setup.lengths, setup.batch_size, rng, True))
    return plan[:steps]


def plan_tokens(setup: Setup, plan: list[list[int]]) -> int:
    return sum(len(setup.examples[i].input_ids) for b in plan for i in b)


def fresh_model(device: torch.device):
    """The embedded model with fresh LoRA adapters, seeded identically for every contender."""
    cfg = ModelConfig()
    model, _ = load_base_model(cfg)
    seed_everything(SEED)
    model = make_trainable(model, cfg)
    model.train()
    return model.to(device)


def warmup_steps(setup: Setup, steps: int) -> int:
    return int(round(setup.warmup_ratio * steps))


# --- contenders --------------------------------------------------------------------------------
class StepClock(Strategy):
    """A no-op strategy that stamps the time once per step (``after_backward``)."""

    name = "step-clock"

    def __init__(self):
        super().__init__()
        self.stamps: list[float] = []

    def after_backward(self, model) -> None:
        self.stamps.append(time.perf_counter())


class PreEncodedTrainer(EverlearnTrainer):
    """everlearn's Trainer fed the shared pre-tokenised examples instead of re-encoding."""

    def __init__(self, *args, examples: list[Encoded], **kwargs):
        super().__init__(*args, **kwargs)
        self.examples = examples

    def encode(self, stage: Stage, records: list) -> list[Encoded]:
        return self.examples


def run_everlearn(model, setup: Setup, precision: str, phase: int, steps: int,
                  progress: bool) -> tuple[float, int, list[float]]:
    """One ``train_phase`` call of seqft on a one-stage phase of ``steps`` steps."""
    acc = make_accelerator(precision)
    assert acc.mixed_precision == ("bf16" if precision == "bf16" else "no")
    clock = StepClock()
    strategy = StrategyStack(build_strategy([StrategySpec()]).members + [clock])
    cfg = TrainConfig(lr=setup.lr, batch_size=setup.batch_size, steps=steps,
                      warmup_ratio=setup.warmup_ratio, max_grad_norm=setup.max_grad_norm,
                      max_length=setup.max_length, precision=precision, schedule="cosine")
    trainer = PreEncodedTrainer(acc, setup.encoder, cfg, strategy, SEED, quiet=not progress,
                                examples=setup.examples)
    stage = Stage(index=1, name="bench", kind="sft", metric="exact_match", train=[], test=[],
                  steps=steps)
    t0 = time.perf_counter()
    cost = trainer.train_phase(model, [stage], phase)
    wall = time.perf_counter() - t0
    return wall, cost.tokens_trained, diffs(clock.stamps)


def train_plain(model, setup: Setup, plan: list[list[int]], precision: str,
                stamps: list[float]) -> int:
    """The hand-written reference loop; returns the non-padding tokens it trained on."""
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=setup.lr, weight_decay=0.0)
    scheduler = get_scheduler("cosine", optimizer, warmup_steps(setup, len(plan)), len(plan))
    tokens = 0
    for idx in plan:
        batch = collate([setup.examples[i] for i in idx], setup.pad_id)
        tokens += int(batch["attention_mask"].sum())
        batch = {k: v.to(setup.device) for k, v in batch.items()}
        with torch.autocast(setup.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, setup.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    return tokens


def run_plain(model, setup: Setup, precision: str, phase: int, steps: int,
              progress: bool) -> tuple[float, int, list[float]]:
    plan = batch_plan(setup, phase, steps)
    stamps: list[float] = []
    t0 = time.perf_counter()
    tokens = train_plain(model, setup, plan, precision, stamps)
    return time.perf_counter() - t0, tokens, diffs(stamps)


def run_hf_trainer(model, setup: Setup, precision: str, phase: int, steps: int,
                   progress: bool) -> tuple[float, int, list[float]]:
    """``transformers.Trainer.train()`` over the same batches, in the same order."""
    from torch.utils.data import SequentialSampler
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    plan = batch_plan(setup, phase, steps)
    ordered = [setup.examples[i] for b in plan for i in b]
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    class InOrder(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset or self.train_dataset)

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=setup.batch_size, max_steps=steps,
            learning_rate=setup.lr, weight_decay=0.0, lr_scheduler_type="cosine",
            warmup_steps=warmup_steps(setup, steps), max_grad_norm=setup.max_grad_norm,
            optim="adamw_torch", bf16=precision == "bf16", use_cpu=setup.device.type == "cpu",
            report_to=[],
            save_strategy="no", logging_strategy="no", eval_strategy="no",
            dataloader_num_workers=0, dataloader_pin_memory=False, remove_unused_columns=False,
            disable_tqdm=not progress, seed=SEED,
        )
        trainer = InOrder(model=model, args=args, train_dataset=ordered,
                          data_collator=lambda items: collate(items, setup.pad_id),
                          callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)  # keeps its final metrics line off stdout
        assert trainer.accelerator.mixed_precision == ("bf16" if precision == "bf16" else "no")
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
    return wall, plan_tokens(setup, plan), diffs(stamps)


RUNNERS = {"everlearn": run_everlearn, "plain": run_plain, "trainer": run_hf_trainer}


def diffs(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:])]


# --- driver ------------------------------------------------------------------------------------
def reset_accelerate() -> None:
    """accelerate keeps one process-wide mixed-precision setting; clear it between precisions."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def split_steps(steps: int, rounds: int) -> list[int]:
    rounds = max(1, min(rounds, steps))
    return [steps // rounds + (r < steps % rounds) for r in range(rounds)]


def bench_precision(setup: Setup, precision: str, args) -> dict[str, Result]:
    """Fresh models, warm-up (phase 0), then timed rounds in rotating contender order."""
    reset_accelerate()
    models = {c: fresh_model(setup.device) for c in CONTENDERS}
    results = {c: Result(c, precision) for c in CONTENDERS}
    if args.warmup:
        for c in CONTENDERS:
            log(f"[{precision}] warm-up {c}: {args.warmup} step(s)")
            RUNNERS[c](models[c], setup, precision, 0, args.warmup, args.progress)
    for r, steps in enumerate(split_steps(args.steps, args.rounds)):
        order = CONTENDERS[r % 3:] + CONTENDERS[:r % 3]
        expected = plan_tokens(setup, batch_plan(setup, r + 1, steps))
        for c in order:
            wall, tokens, step_s = RUNNERS[c](models[c], setup, precision, r + 1, steps,
                                              args.progress)
            if tokens != expected:
                raise RuntimeError(f"{c}: trained {tokens} tokens, expected {expected}")
            res = results[c]
            res.steps, res.tokens, res.wall_s = res.steps + steps, res.tokens + tokens, \
                res.wall_s + wall
            res.step_s.extend(step_s)
            log(f"[{precision}] round {r + 1} {c}: {steps} steps, {wall:.2f} s, "
                f"{tokens / wall:.0f} tok/s")
    return results


def machine() -> dict[str, object]:
    import transformers

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        cpu += f" + {torch.cuda.get_device_name()}"
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def table(results: dict[str, dict[str, Result]]) -> str:
    rows = ["| contender | precision | steps | tokens | wall s | tokens/s | median s/step "
            "| vs plain | vs Trainer |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for precision, by_name in results.items():
        plain, hf = by_name["plain"].tokens_per_s, by_name["trainer"].tokens_per_s
        for r in by_name.values():
            rows.append(f"| {r.contender} | {precision} | {r.steps} | {r.tokens} | "
                        f"{r.wall_s:.2f} | {r.tokens_per_s:.0f} | {r.median_step_s:.3f} | "
                        f"{r.tokens_per_s / plain:.3f}x | {r.tokens_per_s / hf:.3f}x |")
    return "\n".join(rows)


def verdict(results: dict[str, dict[str, Result]]) -> list[str]:
    lines = []
    for precision, by_name in results.items():
        ev = by_name["everlearn"].tokens_per_s
        vs_plain = ev / by_name["plain"].tokens_per_s
        vs_hf = ev / by_name["trainer"].tokens_per_s
        lines.append(f"- {precision}: everlearn {vs_plain:.3f}x plain (goal >= 0.97: "
                     f"{'met' if vs_plain >= 0.97 else 'NOT met'}), {vs_hf:.3f}x Trainer "
                     f"(goal >= 1.0: {'met' if vs_hf >= 1.0 else 'NOT met'})")
    return lines


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=12, help="timed optimizer steps per contender")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds the steps split into")
    p.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--examples", type=int, default=256, help="records to tokenise")
    p.add_argument("--data", choices=["auto", "superni", "builtin"], default="auto")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--progress", action="store_true",
                   help="show everlearn's and Trainer's progress bars (both off by default)")
    p.add_argument("--json", metavar="PATH", help="also write the raw numbers here")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    setup, encode_s = build_setup(args)
    precisions = ["bf16", "fp32"] if args.precision == "both" else [args.precision]
    results = {p: bench_precision(setup, p, args) for p in precisions}
    info = machine()
    lengths = setup.lengths
    print(f"# Training throughput ({info['date']})\n")
    print(f"Machine: {info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch "
          f"threads); torch {info['torch']}, transformers {info['transformers']}, "
          f"python {info['python']}\n")
    print(f"Model: smollm2-135m-instruct + LoRA r=8 (all linear). Data: {setup.data_name}, "
          f"{len(lengths)} examples (mean {statistics.mean(lengths):.0f} tokens, max "
          f"{max(lengths)}), batch {setup.batch_size}, max length {setup.max_length}; "
          f"{args.warmup} warm-up + {args.steps} timed steps in "
          f"{len(split_steps(args.steps, args.rounds))} interleaved round(s).\n")
    print(table(results) + "\n")
    print("\n".join(verdict(results)) + "\n")
    print(f"Not timed: everlearn's per-phase tokenisation of these {args.examples} records "
          f"took {encode_s:.2f} s (once per phase, before its loop).")
    if args.json:
        raw = {"machine": info, "args": vars(args), "data": setup.data_name,
               "encode_s": encode_s,
               "results": {p: {c: asdict(r) | {"tokens_per_s": r.tokens_per_s,
                                                "median_step_s": r.median_step_s}
                               for c, r in by.items()} for p, by in results.items()}}
        Path(args.json).write_text(json.dumps(raw, indent=2) + "\n")


if __name__ == "__main__":
    main()
