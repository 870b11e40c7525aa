"""Run a stream end to end: base row, then train each phase and score every stage after it.

After each phase the run directory gets the phase checkpoint and a rewritten ``results.json``,
so ``--resume`` continues after the last finished phase and ends with the same results as an
uninterrupted run (every phase is seeded from the run seed and its index, not from leftover
random state). Inside a phase, step checkpoints (``train.checkpoint_every``, or Ctrl-C /
SIGTERM) let ``--resume`` continue the phase in progress from its latest saved step.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from everlearn import __version__

from everlearn.runs import environment

from everlearn.parallel import fsdp, zero

from everlearn.training import stepstate
from everlearn.parallel import distributed as dist
from everlearn.runs.run_dir import (
    RunDir,
    check_new_run_dir,
    check_resumable,
    claim_run_dir,
    write_atomic,
    write_json,
)
from everlearn.config import RESUME_MAY_CHANGE, RunConfig, changed_fields, dump_yaml
from everlearn.validation import load_config
from everlearn.data.encoders import make_encoder
from everlearn.stages.edit import editing_section
from everlearn.errors import ConfigError, ResumeError
from everlearn.evaluation.matrix import Evaluator
from everlearn.evaluation.metrics import summarize_columns
from everlearn.models.loading import (
    count_parameters,
    load_base_model,
    load_trainable_state,
    trainable_on_device,
    trainable_state,
)
from everlearn.evaluation.probes import GeneralProbes, general_sections, rows_from_results
from everlearn.training.resources import PeakMemory
from everlearn.evaluation.schedule import describe as describe_schedule
from everlearn.evaluation.schedule import scored_columns
from everlearn.strategies import StrategyStack, build_strategy
from everlearn.strategies.base import RunContext
from everlearn.stages.stream import Stage, Stream, build_stream
from everlearn.evaluation.temporal import row_counts, temporal_section
from everlearn.training.textstream import TextStreamRun, build_token_stream, stream_metrics
from everlearn.runs.tracking import Tracker
from everlearn.training.precision import resolve_precision
from everlearn.training.trainer import Trainer
from everlearn.vision.training import plan_vision

log = logging.getLogger("everlearn")


def seed_everything(seed: int) -> None:
    from accelerate.utils import set_seed

    set_seed(seed)


def new_run_dir(cfg: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.output_dir) / f"{cfg.name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def make_accelerator(precision: str, **kwargs: Any):
    """An Accelerator for this run. accelerate keeps one shared state per process; a run with
    another precision in the same process (an API user, a benchmark) resets it first.
    ``kwargs`` go to ``Accelerator`` (``log_with``/``project_dir`` of a tracker). Under
    torchrun or ``accelerate launch`` it joins the process group (data parallel, see
    everlearn.parallel.distributed; FSDP, see everlearn.parallel.fsdp; DeepSpeed ZeRO 1/2, see everlearn.parallel.zero)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    dist.check_launcher()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mixed = resolve_precision(precision, device)
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed:
        AcceleratorState._reset_state(True)
    with zero.hidden_from_accelerate():  # DeepSpeed: everlearn builds the engine per phase
        acc = Accelerator(mixed_precision=mixed, cpu=device.type == "cpu", **kwargs)
    dist.check_accelerator(acc)
    return acc


def compute_metrics(R: list[list[float | None]], stages: list[Stage],
                    phases: list[list[Stage]]):
    """CL metrics on R; one phase per stage gives the full set, joint gives final AP only.
    Cells an evaluation schedule skipped (None) are left out (see everlearn.evaluation.metrics)."""
    if len(phases) != len(stages):
        last = R[-1]
        cols = [j for j, s in enumerate(stages) if s.higher_is_better]
        return {"final_ap": sum(last[j] for j in cols) / len(cols) if cols else None,
                "note": "stages trained together (joint): only the final average is defined"}
    out: dict[str, Any] = {}
    for direction, scope in ((True, "main"), (False, "perplexity")):
        cols = [j for j, s in enumerate(stages) if s.higher_is_better == direction]
        if not cols:
            continue
        summary = summarize_columns(R, cols, higher_is_better=direction, allow_missing=True)
        summary["stages"] = [stages[c].name for c in cols]
        if not direction:
            summary["note"] = ("perplexity: lower is better; BWT, forgetting and FWT are signed "
                               "as for scores (negative BWT: perplexity rose)")
        out[scope] = summary
    return out["main"] if set(out) == {"main"} else out


class Run:
    """One run directory being filled: the model, the strategies and the matrix so far."""

    def __init__(self, cfg: RunConfig, run_dir: Path, quiet: bool = False,
                 source: str = "config"):
        self.cfg = cfg
        self.dir = RunDir(run_dir)
        self.quiet = quiet
        self.source = source
        self.stream: Stream = build_stream(cfg, source)
        self.strategy: StrategyStack = build_strategy(cfg.strategies, source,
                                                      cfg.model.finetune)
        stages = self.stream.stages
        dist.check_run(self.strategy.names, [s.kind for s in stages], source,
                       text_stream=cfg.text_stream is not None,
                       checkpoint_every=cfg.train.checkpoint_every)
        planned = self.strategy.plan(stages)
        # a text stream (everlearn.training.textstream): the phases are its segments, found as it trains
        self.text: TextStreamRun | None = None
        if cfg.text_stream is not None and planned is not None:
            who = next(m.name for m in self.strategy.members if m.plan(stages) is not None)
            raise ConfigError(f"{source}: strategies: '{who}' groups stages into phases; a "
                              "text_stream has no stages to group")
        self.phases: list[list[Stage]] = (
            [] if cfg.text_stream is not None else planned or [[s] for s in stages])
        self.temporal_rows: list[dict] = []  # per row: temporal stage -> split -> [correct, n]
        self.general_rows: list[dict] = []  # per row: general probe -> value
        self.probes: GeneralProbes | None = None
        self.side_rows: list[dict[str, dict[str, float]]] = []  # per row: stage -> side metrics
        self.pref_rows: list[dict[str, list[float]]] = []  # per row: align stage -> log-ratios
        self.environment: dict[str, Any] | None = None  # this process's (everlearn.runs.environment)
        self.environment_history: list[dict[str, Any] | None] = []  # earlier ones, if resumed
        self.tracker = Tracker(cfg, self.dir.path)  # a missing tracker package fails here
        self.truncated: dict[str, dict[str, float]] = {}  # the encoder's, once it is made
        self.started_config: dict[str, Any] = yaml.safe_load(dump_yaml(cfg))

    def _results(self, R, cost, status, base_eval_s) -> dict[str, Any]:
        stages = self.stream.stages
        res: dict[str, Any] = {
            "everlearn_version": __version__,
            "status": status,
            "name": self.cfg.name,
            "scenario": self.stream.scenario,
            "strategies": self.strategy.names,
            "model": self.cfg.model.name,
            "finetune": self.cfg.model.finetune,
            "stages": [{"name": s.name, "kind": s.kind, "metric": s.metric,
                        "higher_is_better": s.higher_is_better, "n_train": len(s.train),
                        "n_test": len(s.test), "task_id": s.task_id,
                        "truncated_share": self.truncated.get(s.name, {})} for s in stages],
            "phases": [[s.name for s in p] for p in self.phases],
            "rows": ["base"] + ["+".join(s.name for s in p) for p in self.phases[:len(R) - 1]],
            "R": R,
            "base_eval_time_s": base_eval_s,
            "cost": cost,
            "strategy_metrics": self.strategy.metrics(),
            "config": self.started_config,  # what every row was computed with (resume checks)
        }
        environment.add_to(res, self.environment, self.environment_history)
        schedule = describe_schedule(self.cfg.eval.every, self.cfg.eval.sample_earlier)
        if schedule:
            res["eval_schedule"] = schedule
        if any(self.side_rows):
            res["side_metrics"] = self.side_rows[:len(R)]
        if any(self.pref_rows):  # log pi(chosen) - log pi(rejected) per test pair: resume state
            res["preference_logratios"] = self.pref_rows[:len(R)]
        if self.text is not None:
            res["text_stream"] = self.text.section(R)
        if status == "complete":
            res["metrics"] = (stream_metrics(R, stages, self.text) if self.text is not None
                              else compute_metrics(R, stages, self.phases))
        self._add_knowledge_sections(res, len(R))
        return res

    def execute(self, resume: bool = False) -> dict[str, Any]:
        try:
            return self._execute(resume)
        finally:  # flush and close the tracker run, also when training fails or is interrupted
            self.tracker.finish()

    def _check_same_config(self, prev: dict[str, Any]) -> None:
        """A resume continues the run it resumes: refuse, naming the field, a config.yaml edited
        since the run started (the finished rows were computed with the old values, and the
        results would mix two configs). Runs older than the recorded config are not checked."""
        started, now = prev.get("config"), self.started_config  # now: this config.yaml's
        if not isinstance(started, dict):
            return
        self.started_config = started
        changes = [c for c in changed_fields(started, now)
                   if not c[0].startswith(RESUME_MAY_CHANGE)]
        if changes:
            field, old, new = changes[0]
            more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
            raise ResumeError(f"{self.source}: {field}: changed since the run started ({old!r} "
                              f"-> {new!r}){more}; the finished rows were computed with the old "
                              "value: restore it, or start a new run")

    def _execute(self, resume: bool) -> dict[str, Any]:
        cfg = self.cfg
        dist.init()  # several processes: before anything is written (rank 0 writes alone)
        self.dir.path.mkdir(parents=True, exist_ok=True)
        _attach_log(self.dir.path)
        if resume:
            for stale in self.dir.remove_temporaries():
                log.info("removed %s, left by a write that was killed", stale)
        done_R, done_cost, base_eval_s = [], [], 0.0
        prev: dict[str, Any] | None = None
        if resume and not self.dir.results.exists():
            # killed before the base row was written: nothing is lost, start from the base row
            log.info("no results.json yet; resuming from the start")
        elif resume:
            prev = _read_results(self.dir)
            done_R, done_cost = prev["R"], prev["cost"]
            base_eval_s = prev.get("base_eval_time_s", 0.0)
            self._check_same_config(prev)
            if (self.cfg.text_stream is None and prev.get("phases")
                    and prev["phases"] != [[s.name for s in p] for p in self.phases]):
                raise ResumeError(f"{self.dir.results}: phases: the stream no longer matches "
                                  "the run's config.yaml")
        else:
            write_atomic(self.dir.config, dump_yaml(cfg))

        seed_everything(cfg.seed)
        acc = make_accelerator(cfg.train.precision, **self.tracker.accelerator_kwargs())
        self.environment = record_environment(acc)
        self.environment_history = environment.history(prev, self.environment)
        self.tracker.start(acc, resume)
        with dist.main_first():  # rank 0 fills a model cache (embedded model) before the others
            model, tok = load_base_model(cfg.model)
        model = trainable_on_device(model, cfg.model, acc.device,
                                    acc.mixed_precision == "bf16")
        if fsdp.requested():  # accelerate FSDP config: shard it (everlearn.parallel.fsdp)
            fsdp.shard(model, fsdp.settings())
        self.model = model  # kept for callers that inspect the trained model (tests, APIs)
        encoder = make_encoder(tok, cfg.train.max_length, cfg.model.chat_template == "auto",
                               cfg.edit.format)
        self.truncated = encoder.truncated  # share of examples cut, per stage and split
        for st in prev["stages"] if done_R else []:  # resumed: stages trained before
            self.truncated[st["name"]] = dict(st.get("truncated_share") or {})
        # vision-language models: which parts each phase trains (None for a text model)
        vision = plan_vision(model, cfg, self.stream, self.phases)
        if cfg.text_stream is not None:
            self.text = TextStreamRun(cfg.text_stream, build_token_stream(
                self.stream.stages, encoder, cfg.text_stream.token_budget,
                cfg.train.batch_size * cfg.train.grad_accum))
            if not self.text.ts.blocks:
                raise ConfigError(f"{self.source}: stages: the text stream is empty (no training "
                                  "text in the cpt stages)")
            if done_R:  # resumed: the segments finished so far, one phase each
                segments = (prev.get("text_stream") or {}).get("segments") or []
                self.phases = [[st] for st in self.text.restore(segments[:len(done_R) - 1])]
        self.strategy.setup(RunContext(model=model, tokenizer=encoder.tok, encoder=encoder,
                                       config=cfg, stream=self.stream, seed=cfg.seed,
                                       accelerator=acc))
        trainer = Trainer(acc, encoder, cfg.train, self.strategy, cfg.seed, self.quiet)
        trainer.on_step = self.tracker.on_step
        trainer.save_step = self.dir.save_step
        trainer.vision = vision
        evaluator = Evaluator(acc, encoder, cfg.eval, self.quiet)
        evaluator.activate = self.strategy.activate  # what a routed choice switches on
        # general probes take their reference from the base model: before any resumed weights
        probes = (GeneralProbes.prepare(cfg.eval, self.dir.path, model, encoder, evaluator, acc)
                  if cfg.eval.general_probes or cfg.eval.lm_eval.tasks else None)
        self.probes = probes
        evaluator.prepare_edits(model, self.stream.stages)  # locality: the base's predictions
        keep_all = cfg.keep_stage_weights == "all" or (
            cfg.keep_stage_weights == "auto" and cfg.model.finetune == "lora")

        phase_cols = [[st.index - 1 for st in p] for p in self.phases]

        def evaluate_row(row: int) -> list[float | None]:
            """Row ``row`` of R; the stages the eval schedule skips are None."""
            router = self.strategy.route if routes(self.strategy) else None
            self.general_rows.append(probes.measure(model) if probes else {})
            cols = scored_columns(cfg.eval.every, cfg.eval.sample_earlier, cfg.seed,
                                  phase_cols, row)
            scores = [evaluator.score(model, st, router) if cols is None or j in cols else None
                      for j, st in enumerate(self.stream.stages)]
            self.temporal_rows.append(row_counts(self.stream.stages, scores))
            self.side_rows.append({st.name: s.side for st, s in zip(self.stream.stages, scores)
                                   if s is not None and s.side})
            scored = {st.name for st, s in zip(self.stream.stages, scores) if s is not None}
            self.pref_rows.append({k: v for k, v in evaluator.pref_last.items() if k in scored})
            return [None if s is None else s.score for s in scores]

        R: list[list[float]] = list(done_R)
        cost: list[dict[str, Any]] = list(done_cost)
        if resume and len(R) > 1:
            last, loaded = self._last_good_checkpoint(len(R) - 1)
            del R[last + 1:], cost[last:]
            if self.text is not None:  # the segments after the checkpoint are found again
                self.text.truncate(last)
                del self.phases[last:]
            if loaded is not None:
                weights, state = loaded
                # Strategy state first: a strategy may rebuild structures (adapters) that the
                # weights fill.
                self.strategy.load_state_dict(state)
                load_trainable_state(model, weights, str(self.dir.phase_dir(last)))
                if self.text is not None and "optimizer" in state:  # AdamW over the boundary
                    trainer.carried = stepstate.unflatten(state["optimizer"])
            if vision is not None:  # the parts the kept phases trained are saved from now on
                vision.mark_trained(last)
            log.info("resumed after phase %d of %d", last, len(self.phases))
        # the phase in progress when the run stopped: its newest step checkpoint that verifies
        step_ckpt = self.dir.load_step(len(R)) if resume and R else None
        if R:  # resumed: side metrics and preference references of the rows kept
            self.side_rows = (prev.get("side_metrics", []) + [{}] * len(R))[:len(R)]
            self.pref_rows = (prev.get("preference_logratios", []) + [{}] * len(R))[:len(R)]
            evaluator.restore_preference(self.pref_rows, self.phases)
            self.temporal_rows = ((prev.get("temporal") or {}).get("rows", [])
                                  + [{}] * len(R))[:len(R)]
            self.general_rows = rows_from_results(prev, len(R))
            if probes is not None:
                probes.restore(prev)
        dist.barrier()  # every rank has read the run directory before rank 0 writes to it
        if resume:  # step checkpoints of other phases are stale (or would be, once written)
            self.dir.drop_steps(keep=len(R) if R else None)
        self.tracker.step = sum(c.get("steps") or 0 for c in cost)
        if not R:
            t0 = time.perf_counter()
            R.append(evaluate_row(0))
            base_eval_s = time.perf_counter() - t0
            self.tracker.log_row(0, R[0], self.stream.stages, set())
            write_json(self.dir.results, self._results(R, cost, "running", base_eval_s))

        phase = len(R)
        while True:
            segment = None
            if self.text is not None:
                nxt = self.text.next_segment(phase)
                if nxt is None:
                    break
                stages, segment = [nxt[0]], nxt[1]
            elif phase > len(self.phases):
                break
            else:
                stages = self.phases[phase - 1]
            seed_everything(cfg.seed + phase)
            t0 = time.perf_counter()
            evaluator.begin_phase(stages)  # align stages: the model entering is the reference
            resume_at, step_ckpt = step_ckpt, None  # only the first phase trained here
            if resume_at is not None:
                self.tracker.step += resume_at["meta"].get("step", 0)
            pc = (trainer.train_phase(model, stages, phase, resume=resume_at) if segment is None
                  else trainer.train_phase(model, stages, phase, segment=segment))
            if segment is not None:
                self.text.finish(stages[0], segment)
                self.phases.append(stages)
            eval_memory = PeakMemory(acc.device)
            t1 = time.perf_counter()
            R.append(evaluate_row(phase))
            eval_s = time.perf_counter() - t1
            trainable, total = count_parameters(model)
            if pc.trainable_params is not None:  # an edit phase trained fewer (edit.layers)
                trainable = pc.trainable_params
            cost.append({
                "phase": phase, "stages": [s.name for s in stages], "steps": pc.steps,
                "examples": pc.examples, "wall_time_s": time.perf_counter() - t0,
                "train_time_s": pc.train_time_s, "eval_time_s": eval_s,
                "strategy_time_s": pc.strategy_time_s,
                "tokens_trained": pc.tokens_trained,
                "tokens_per_s": pc.tokens_trained / max(pc.train_time_s, 1e-9),
                "padding_fraction": pc.padding_fraction, "final_loss": pc.final_loss,
                "trainable_params": trainable, "total_params": total,
                "peak_memory_mb": max(pc.peak_memory_mb, eval_memory.peak_mb),
                "buffer_size": self.strategy.buffer_size(),
                "skipped_batches": pc.skipped_batches,
            })
            weights, state = trainable_state(model), self.strategy.state_dict()
            # several processes: every rank must hold the same weights and strategy state
            dist.check_consistent(f"phase {phase}", {**weights, **{
                f"strategy/{k}": v for k, v in state.get("tensors", {}).items()}},
                state.get("meta"))
            self.dir.save_phase(phase, weights, state, stepstate.flatten(trainer.carried)
                                if self.text is not None else None)
            self.dir.drop_steps()  # the stage checkpoint supersedes them
            finished = self.text.done if self.text is not None else phase == len(self.phases)
            status = "complete" if finished else "running"
            write_json(self.dir.results, self._results(R, cost, status, base_eval_s))
            trained = (self.text.trained_names() if self.text is not None
                       else {s.name for p in self.phases[:phase] for s in p})
            self.tracker.log_row(phase, R[-1], self.stream.stages, trained, cost[-1])
            if not keep_all and phase > 1:  # only once results.json points past it
                self.dir.drop_weights(phase - 1)
            phase += 1
        results = self._results(R, cost, "complete", base_eval_s)
        write_json(self.dir.results, results)
        return results

    def _add_knowledge_sections(self, res: dict[str, Any], n_rows: int) -> None:
        """``temporal`` (per-split probe accuracy, FUAR) and ``general`` / ``general_kl``
        (general-ability probes against the base row), when the run has them."""
        temporal = self.temporal_rows[:n_rows]
        if any(temporal) and self.text is None:  # FUAR steps are stages, not stream segments
            res["temporal"] = temporal_section(self.stream.names,
                                               [[s.name for s in p] for p in self.phases],
                                               temporal)
            if "metrics" in res:
                res["metrics"]["fuar"] = res["temporal"]["fuar"]
        if any(self.general_rows[:n_rows]):
            res.update(general_sections(self.general_rows[:n_rows],
                                        self.probes.info() if self.probes else {}))
        if any(st.kind == "edit" for st in self.stream.stages):
            res["editing"] = editing_section(self.stream.stages,
                                             [[s.name for s in p] for p in self.phases],
                                             self.side_rows[:n_rows])

    def _last_good_checkpoint(self, phase: int):
        """(phase, its weights and strategy state) of the newest checkpoint that verifies,
        going back from ``phase``; (0, None) when none does (the run restarts after its base
        row). A corrupt one is reported and skipped; the phases after the good one are redone.
        """
        for k in range(phase, 0, -1):
            try:
                return k, self.dir.load_phase(k, need_weights=True)
            except ResumeError as err:
                log.warning("%s; falling back to the checkpoint before it", err)
        return 0, None


def record_environment(acc) -> dict[str, Any]:
    """This process's environment for results.json, logged in one line (log.txt)."""
    env = environment.collect(acc.device, acc.mixed_precision, acc.num_processes)
    log.info("environment: %s", environment.summary(env))
    return env


def routes(strategy: StrategyStack) -> bool:
    """Whether any member chooses adapters per test record (evaluation then groups by it)."""
    from everlearn.strategies.base import Strategy

    return any(type(m).route is not Strategy.route for m in strategy.members)


def _read_results(run_dir: RunDir) -> dict[str, Any]:
    try:
        data = json.loads(run_dir.results.read_text())
        R, cost = data["R"], data["cost"]
        assert isinstance(R, list) and isinstance(cost, list) and len(cost) == max(0, len(R) - 1)
    except (json.JSONDecodeError, KeyError, TypeError, AssertionError):
        raise ResumeError(
            f"{run_dir.results}: expected everlearn results with R and cost") from None
    return data


def _attach_log(path: Path) -> None:
    """Append log records of this run to RUN_DIR/log.txt."""
    if not dist.is_main():  # one log file, written by rank 0; the others log errors only
        log.setLevel(logging.ERROR)
        return
    target = str(path / "log.txt")
    if any(getattr(h, "baseFilename", None) == target for h in log.handlers):
        return
    handler = logging.FileHandler(target, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)  # INFO goes to the file; the console keeps the root's WARNING
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in log.handlers):
        console = logging.StreamHandler()
        console.setLevel(logging.WARNING)
        log.addHandler(console)
    log.propagate = False


def start_run(cfg: RunConfig, run_dir: str | Path | None = None, quiet: bool = False,
              source: str = "config") -> tuple[Path, dict[str, Any]]:
    """A new run; ``run_dir`` must not already hold results."""
    dist.init()
    if run_dir is not None and not str(run_dir).strip():
        raise ConfigError(f"--output: expected a directory for the run, got {str(run_dir)!r}")
    # several processes: rank 0 names the directory (a timestamp), every rank looks at it
    # before rank 0 writes there
    path = dist.broadcast_object(Path(run_dir) if run_dir is not None else new_run_dir(cfg))
    check_new_run_dir(path)  # every rank, before rank 0 writes anything
    dist.barrier()
    claim_run_dir(path)
    if cfg.recycle is not None:  # recyclable tuning (everlearn.runs.recycle) instead of a stream
        from everlearn.runs.recycle import RecycleRun

        dist.check_run([], [], source, recycle=True)
        return path, RecycleRun(cfg, path, quiet, source).execute(resume=False)
    run = Run(cfg, path, quiet, source)
    return path, run.execute(resume=False)


def resume_run(run_dir: str | Path, quiet: bool = False) -> tuple[Path, dict[str, Any]]:
    """Continue a run after its last finished phase, from its own resolved config."""
    dist.init()
    path = Path(run_dir)
    check_resumable(path)
    cfg = load_config(path / "config.yaml")
    if cfg.recycle is not None:
        from everlearn.runs.recycle import RecycleRun

        dist.check_run([], [], str(path / "config.yaml"), recycle=True)
        return path, RecycleRun(cfg, path, quiet, str(path / "config.yaml")).execute(resume=True)
    run = Run(cfg, path, quiet, str(path / "config.yaml"))
    return path, run.execute(resume=True)
