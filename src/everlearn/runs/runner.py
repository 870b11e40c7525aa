"""Run a stream end to end: base row, then train each phase and score every stage after it.

After each phase the run directory gets the phase checkpoint and a rewritten ``results.json``,
so ``--resume`` continues after the last finished phase and ends with the same results as an
uninterrupted run (every phase is seeded from the run seed and its index, not from leftover
random state). Inside a phase, step checkpoints (``train.checkpoint_every``, or Ctrl-C /
SIGTERM) let ``--resume`` continue the phase in progress from its latest saved step.

The driver keeps one record per row of R (everlearn.runs.results ``Row``: scores, the phase's
cost, side metrics, preference log-ratios, temporal and general-probe values) and takes its
phases from a phase source: the stages' fixed phases (:class:`StagePhases`) or a text stream's
segments, cut as it trains (everlearn.runs.text_stream). What every run mode sets up first is
in everlearn.runs.session; recyclable tuning has its own driver (everlearn.runs.recycle).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import yaml

from everlearn import __version__
from everlearn.config import RESUME_MAY_CHANGE, RunConfig, changed_fields, dump_yaml
from everlearn.data.encoders import make_encoder
from everlearn.errors import ConfigError, ResumeError
from everlearn.evaluation.matrix import Evaluator
from everlearn.evaluation.probes import GeneralProbes, general_sections, rows_from_results
from everlearn.evaluation.schedule import describe as describe_schedule
from everlearn.evaluation.schedule import scored_columns
from everlearn.evaluation.temporal import row_counts, temporal_section
from everlearn.models.loading import (
    count_parameters,
    load_base_model,
    load_trainable_state,
    trainable_on_device,
    trainable_state,
)
from everlearn.parallel import distributed as dist
from everlearn.parallel import fsdp
from everlearn.runs.base_cache import (
    BaseRowCache,
    cacheable,
    scoring_settings,
    tokenizer_fingerprint,
)
from everlearn.runs.metrics import compute_metrics
from everlearn.runs.peft_adapter import phase_writer
from everlearn.runs.predictions import write_predictions
from everlearn.runs.recycle import RecycleRun
from everlearn.runs.results import (
    Results,
    Row,
    cost_entry,
    restored_rows,
    salvage_for_resume,
    stage_entry,
    write_results,
)
from everlearn.runs.run_dir import (
    RunDir,
    check_new_run_dir,
    check_resumable,
    claim_run_dir,
    write_atomic,
)
from everlearn.runs.run_log import cost_line, run_log, score_line
from everlearn.runs.session import (
    Session,
    begin,
    new_run_dir,
    routes,
    seed_everything,
)
from everlearn.runs.text_stream import TextStreamRun
from everlearn.runs.tracking import Tracker
from everlearn.stages import get_kind
from everlearn.stages.edit import editing_section
from everlearn.stages.stream import Stage, Stream, build_stream
from everlearn.strategies import StrategyStack, build_strategy
from everlearn.strategies.base import RunContext
from everlearn.training import stepstate
from everlearn.training.recomputation import check_supported
from everlearn.training.resources import PeakMemory
from everlearn.training.textstream import stream_metrics
from everlearn.training.trainer import Trainer
from everlearn.validation import load_config
from everlearn.vision.training import plan_vision

log = logging.getLogger("everlearn")


class StagePhases:
    """The phase source of a stream of stages: phases fixed before training, one per stage or
    as a strategy groups them (joint). A text stream's is everlearn.runs.text_stream's
    TextStreamRun, whose phases are segments cut as it trains."""

    carries_optimizer = False  # each phase starts a fresh optimizer

    def __init__(self, phases: list[list[Stage]]):
        self.phases = phases

    def next_phase(self, phase: int) -> tuple[list[Stage], None] | None:
        return (self.phases[phase - 1], None) if phase <= len(self.phases) else None

    def end_phase(self, stages: list[Stage], plan: None) -> None:
        """Nothing to record: the phase was known before it trained."""

    def finished(self, phase: int) -> bool:
        return phase == len(self.phases)

    def trained_names(self, phase: int) -> set[str]:
        return {s.name for p in self.phases[:phase] for s in p}

    def keep(self, n: int) -> None:
        """The phases stay (they are the config's); only the rows after ``n`` are redone."""


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
        # a text stream (everlearn.runs.text_stream): the phases are its segments, found as it
        # trains
        self.text: TextStreamRun | None = None
        if cfg.text_stream is not None and planned is not None:
            who = next(m.name for m in self.strategy.members if m.plan(stages) is not None)
            raise ConfigError(f"{source}: strategies: '{who}' groups stages into phases; a "
                              "text_stream has no stages to group")
        self.phase_source: StagePhases | TextStreamRun = StagePhases(
            [] if cfg.text_stream is not None else planned or [[s] for s in stages])
        self.rows: list[Row] = []  # R's rows so far, each with what was measured with it
        self.base_eval_s = 0.0
        # the base row's stage scores shared by content (everlearn.runs.base_cache), when the
        # caller names a cache directory (`everlearn run --base-cache`, every sweep point)
        self.base_cache_dir: Path | None = None
        self.base_cache: BaseRowCache | None = None
        self.probes: GeneralProbes | None = None
        self.session: Session | None = None  # everlearn.runs.session, once execute begins
        self.tracker = Tracker(cfg, self.dir.path)  # a missing tracker package fails here
        self.truncated: dict[str, dict[str, float]] = {}  # the encoder's, once it is made
        self.started_config: dict[str, Any] = yaml.safe_load(dump_yaml(cfg))

    @property
    def phases(self) -> list[list[Stage]]:
        return self.phase_source.phases

    # --- results.json ---------------------------------------------------------------------
    def _results(self, status: str) -> Results:
        stages, rows = self.stream.stages, self.rows
        R = [r.scores for r in rows]
        res = Results(
            status=status, name=self.cfg.name, scenario=self.stream.scenario,
            strategies=self.strategy.names, model=self.cfg.model.name,
            finetune=self.cfg.model.finetune,
            stages=[stage_entry(s, self.truncated.get(s.name, {})) for s in stages],
            phases=[[s.name for s in p] for p in self.phases],
            rows=["base"] + ["+".join(s.name for s in p) for p in self.phases[:len(R) - 1]],
            R=R, base_eval_time_s=self.base_eval_s, cost=[r.cost for r in rows[1:]],
            strategy_metrics=self.strategy.metrics(), config=self.started_config,
            environment=self.session.environment,
            environment_history=self.session.environment_history,
            eval_schedule=describe_schedule(self.cfg.eval.every, self.cfg.eval.sample_earlier)
            or None)
        if any(r.side for r in rows):
            res.side_metrics = [r.side for r in rows]
        if any(r.preference for r in rows):  # log pi(chosen) - log pi(rejected): resume state
            res.preference_logratios = [r.preference for r in rows]
        if any(r.predictions for r in rows):  # everlearn.runs.predictions
            res.predictions = [r.predictions for r in rows]
        if self.text is not None:
            res.text_stream = self.text.section(R)
        if status == "complete":
            res.metrics = (stream_metrics(R, stages, self.text) if self.text is not None
                           else compute_metrics(R, stages, self.phases))
        self._add_knowledge_sections(res)
        return res

    def _add_knowledge_sections(self, res: Results) -> None:
        """``temporal`` (per-split probe accuracy, FUAR) and ``general`` / ``general_kl``
        (general-ability probes against the base row), when the run has them."""
        temporal = [r.temporal for r in self.rows]
        if any(temporal) and self.text is None:  # FUAR steps are stages, not stream segments
            res.temporal = temporal_section(self.stream.names,
                                            [[s.name for s in p] for p in self.phases],
                                            temporal)
            if res.metrics is not None:
                res.metrics["fuar"] = res.temporal["fuar"]
        general = [r.general for r in self.rows]
        if any(general):
            res.general = general_sections(general, self.probes.info() if self.probes else {})
        if any(get_kind(st.kind).edits for st in self.stream.stages):
            res.editing = editing_section(self.stream.stages,
                                          [[s.name for s in p] for p in self.phases],
                                          [r.side for r in self.rows])

    def _write(self, status: str) -> dict[str, Any]:
        return write_results(self.dir.path, self._results(status))

    # --- the driver -----------------------------------------------------------------------
    def execute(self, resume: bool = False) -> dict[str, Any]:
        dist.init()  # several processes: before anything is written (rank 0 writes alone)
        with run_log(self.dir.path):  # RUN_DIR/log.txt, the error too when the run fails
            try:
                return self._execute(resume)
            finally:  # flush and close the tracker run, also when training fails or stops
                self.tracker.finish()

    def _execute(self, resume: bool) -> dict[str, Any]:
        prev = self._previous(resume)
        self.session = begin(self.cfg, prev, self.tracker, resume)
        self._prepare(prev)
        step_ckpt = self._resume(prev) if prev is not None else None
        dist.barrier()  # every rank has read the run directory before rank 0 writes to it
        if resume:  # step checkpoints of other phases are stale (or would be, once written)
            self.dir.drop_steps(keep=len(self.rows) if self.rows else None)
        self.tracker.step = sum(r.cost.get("steps") or 0 for r in self.rows[1:])
        if not self.rows:
            t0 = time.perf_counter()
            self.rows.append(self._evaluate_row(0))
            self.base_eval_s = time.perf_counter() - t0
            self.tracker.log_row(0, self.rows[0].scores, self.stream.stages, set())
            self._write("running")
        phase = len(self.rows)
        while (nxt := self.phase_source.next_phase(phase)) is not None:
            stages, segment = nxt  # segment: a text stream's plan (None for stages)
            self._train_and_score(phase, stages, segment, step_ckpt)
            step_ckpt = None  # only the first phase trained here resumes from a step
            self._save_phase(phase)
            phase += 1
        done = self._write("complete")
        log.info("run complete: metrics %s", json.dumps(done.get("metrics"), allow_nan=True))
        return done

    def _previous(self, resume: bool) -> dict[str, Any] | None:
        """A resumed run's results.json, checked against this config (None: nothing to keep);
        a new run writes its config.yaml."""
        if not resume:
            write_atomic(self.dir.config, dump_yaml(self.cfg))
            return None
        for stale in self.dir.remove_temporaries():
            log.info("removed %s, left by a write that was killed", stale)
        if not self.dir.results.exists():
            # killed before the base row was written: nothing is lost, start from the base row
            log.info("no results.json yet; resuming from the start")
            return None
        prev, problem = salvage_for_resume(self.dir.path)
        if problem is not None:  # the phase checkpoints hold the truth: redo what is lost
            log.warning("%s: %s; %s", self.dir.results, problem,
                        f"keeping rows 0-{len(prev['R']) - 1} and resuming from the phase "
                        "checkpoints" if prev else "starting again from the base row")
        if prev is None:
            return None
        self.base_eval_s = prev.get("base_eval_time_s", 0.0)
        self._check_same_config(prev)
        if (self.cfg.text_stream is None and prev.get("phases")
                and prev["phases"] != [[s.name for s in p] for p in self.phases]):
            raise ResumeError(f"{self.dir.results}: phases: the stream no longer matches "
                              "the run's config.yaml")
        return prev

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

    def _prepare(self, prev: dict[str, Any] | None) -> None:
        """The model, encoder, strategies, trainer, evaluator and probes of this run."""
        cfg, acc = self.cfg, self.session.acc
        with dist.main_first():  # rank 0 fills a model cache (embedded model) before the others
            model, tok = load_base_model(cfg.model, self.source)
        model = trainable_on_device(model, cfg.model, acc.device, self.session.bf16,
                                    self.source)
        if cfg.train.gradient_checkpointing:
            check_supported(model, self.source)
        if fsdp.requested():  # accelerate FSDP config: shard it (everlearn.parallel.fsdp)
            fsdp.shard(model, fsdp.settings())
        self.model = model  # kept for callers that inspect the trained model (tests, APIs)
        encoder = make_encoder(tok, cfg.train.max_length, cfg.model.chat_template == "auto",
                               cfg.edit.format)
        self.truncated = encoder.truncated  # share of examples cut, per stage and split
        done = len(prev["R"]) if prev is not None else 0
        for st in prev["stages"] if done else []:  # resumed: stages trained before
            self.truncated[st["name"]] = dict(st.get("truncated_share") or {})
        # vision-language models: which parts each phase trains (None for a text model)
        self.vision = plan_vision(model, cfg, self.stream, self.phases)
        if cfg.text_stream is not None:
            self.text = TextStreamRun.build(cfg, self.stream.stages, encoder, self.source)
            if done:  # resumed: the segments finished so far, one phase each
                self.text.resume(prev, done)
            self.phase_source = self.text
        self.strategy.setup(RunContext(model=model, tokenizer=encoder.tok, encoder=encoder,
                                       config=cfg, stream=self.stream, seed=cfg.seed,
                                       accelerator=acc, run_dir=self.dir.path))
        self.trainer = Trainer(acc, encoder, cfg.train, self.strategy, cfg.seed, self.quiet)
        self.trainer.on_step = self.tracker.on_step
        self.trainer.log_every = cfg.tracker.log_every  # the loss curve's cadence
        self.trainer.save_step = self.dir.save_step
        self.trainer.vision = self.vision
        self.evaluator = Evaluator(acc, encoder, cfg.eval, self.quiet)
        self.evaluator.activate = self.strategy.activate  # what a routed choice switches on
        if self.base_cache_dir is not None:
            self.base_cache = BaseRowCache(
                self.base_cache_dir, scoring_settings(cfg, acc.mixed_precision, acc.device.type),
                tokenizer_fingerprint(encoder.tok))
        # general probes take their reference from the base model: before any resumed weights
        if cfg.eval.general_probes or cfg.eval.lm_eval.tasks:
            self.probes = GeneralProbes.prepare(cfg.eval, self.dir.path, model, encoder,
                                                self.evaluator, acc)
        # locality: the base model's predictions, cached in the run dir (a resume reads them)
        self.evaluator.prepare_edits(model, self.stream.stages, self.dir.path)
        self.phase_cols = [[st.index - 1 for st in p] for p in self.phases]

    def _resume(self, prev: dict[str, Any]):
        """Keep the rows up to the newest phase checkpoint that verifies and load it; the step
        checkpoint of the phase in progress when the run stopped (None: start it afresh)."""
        n = len(prev["R"])
        if n > 1:
            last, loaded = self._last_good_checkpoint(n - 1)
            n = last + 1
            self.phase_source.keep(last)  # a text stream's later segments are found again
            if loaded is not None:
                self._load_checkpoint(last, *loaded)
            if self.vision is not None:  # the parts the kept phases trained are saved from now
                self.vision.mark_trained(last)
            log.info("resumed after phase %d of %d", last, len(self.phases))
        # the phase in progress when the run stopped: its newest step checkpoint that verifies
        step_ckpt = self.dir.load_step(n) if n else None
        if n:  # resumed: side metrics and preference references of the rows kept
            self.rows = restored_rows(prev, n, rows_from_results(prev, n))
            self.evaluator.restore_preference([r.preference for r in self.rows], self.phases)
            if self.probes is not None:
                self.probes.restore(prev)
        return step_ckpt

    def _load_checkpoint(self, phase: int, weights, state) -> None:
        # Strategy state first: a strategy may rebuild structures (adapters) that the weights
        # fill.
        self.strategy.load_state_dict(state)
        load_trainable_state(self.model, weights, str(self.dir.phase_dir(phase)))
        if self.phase_source.carries_optimizer and "optimizer" in state:  # AdamW's state
            self.trainer.carried = stepstate.unflatten(state["optimizer"])

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

    # --- one phase ------------------------------------------------------------------------
    def _train_and_score(self, phase: int, stages: list[Stage], segment, step_ckpt) -> None:
        """Train phase ``phase`` and append its row of R, with the phase's cost."""
        seed_everything(self.cfg.seed + phase)
        t0 = time.perf_counter()
        self.evaluator.begin_phase(stages)  # align stages: the model entering is the reference
        if step_ckpt is not None:
            self.tracker.step += step_ckpt["meta"].get("step", 0)
        log.info("phase %d: training %s (strategy %s)", phase, ", ".join(s.name for s in stages),
                 "+".join(self.strategy.names))
        pc = (self.trainer.train_phase(self.model, stages, phase, resume=step_ckpt)
              if segment is None
              else self.trainer.train_phase(self.model, stages, phase, segment=segment))
        self.phase_source.end_phase(stages, segment)
        eval_memory = PeakMemory(self.session.acc.device)
        t1 = time.perf_counter()
        row = self._evaluate_row(phase)
        eval_s = time.perf_counter() - t1
        trainable, total = count_parameters(self.model)
        if pc.trainable_params is not None:  # an edit phase trained fewer (edit.layers)
            trainable = pc.trainable_params
        row.cost = cost_entry(phase, [s.name for s in stages], pc, time.perf_counter() - t0,
                              eval_s, (trainable, total), eval_memory.peak_mb,
                              self.strategy.buffer_size())
        log.info(cost_line(row.cost))
        self.rows.append(row)

    def _evaluate_row(self, row: int) -> Row:
        """Row ``row`` of R; the stages the eval schedule skips are None."""
        cfg, stages = self.cfg, self.stream.stages
        router = self.strategy.route if routes(self.strategy) else None
        general = self.probes.measure(self.model) if self.probes else {}
        cols = scored_columns(cfg.eval.every, cfg.eval.sample_earlier, cfg.seed,
                              self.phase_cols, row)
        scores = [self._score(st, router, row)
                  if cols is None or j in cols else None for j, st in enumerate(stages)]
        for st, s in zip(stages, scores):
            if s is not None:
                log.info(score_line(row, st, s))
        scored = {st.name for st, s in zip(stages, scores) if s is not None}
        predictions = (write_predictions(self.dir.path, row, stages, scores)
                       if cfg.eval.predictions else {})
        return Row(scores=[None if s is None else s.score for s in scores],
                   side={st.name: s.side for st, s in zip(stages, scores)
                         if s is not None and s.side},
                   preference={k: v for k, v in self.evaluator.pref_last.items()
                               if k in scored},
                   temporal=row_counts(stages, scores), general=general,
                   predictions=predictions)

    def _score(self, stage: Stage, router, row: int):
        """A stage's score in row ``row``; the base row's through the cache where it may."""
        cache = self.base_cache
        if row == 0 and cache is not None and cacheable(stage, router,
                                                        self.session.acc.num_processes):
            return cache.score(self.evaluator, self.model, stage)
        return self.evaluator.score(self.model, stage, router)

    def _save_phase(self, phase: int) -> None:
        """Checkpoint phase ``phase``, rewrite results.json, log the row to the tracker."""
        weights, state = trainable_state(self.model), self.strategy.state_dict()
        # several processes: every rank must hold the same weights and strategy state
        dist.check_consistent(f"phase {phase}", {**weights, **{
            f"strategy/{k}": v for k, v in state.get("tensors", {}).items()}},
            state.get("meta"))
        source = self.phase_source
        adapter = phase_writer(self.cfg, self.model, weights, state, self.strategy.names)
        self.dir.save_phase(phase, weights, state, stepstate.flatten(self.trainer.carried)
                            if source.carries_optimizer else None, extra=adapter)
        self.dir.drop_steps()  # the stage checkpoint supersedes them
        self._write("complete" if source.finished(phase) else "running")
        self.tracker.log_row(phase, self.rows[-1].scores, self.stream.stages,
                             source.trained_names(phase), self.rows[-1].cost)
        cfg = self.cfg
        keep_all = cfg.keep_stage_weights == "all" or (
            cfg.keep_stage_weights == "auto" and cfg.model.finetune == "lora")
        if not keep_all and phase > 1:  # only once results.json points past it
            self.dir.drop_weights(phase - 1)


def start_run(cfg: RunConfig, run_dir: str | Path | None = None, quiet: bool = False,
              source: str = "config", base_cache: str | Path | None = None
              ) -> tuple[Path, dict[str, Any]]:
    """A new run; ``run_dir`` must not already hold results. ``base_cache``: a directory
    whose base-row scores runs share (everlearn.runs.base_cache)."""
    dist.init()
    if run_dir is not None and not str(run_dir).strip():
        raise ConfigError(f"--output: expected a directory for the run, got {str(run_dir)!r}")
    # several processes: rank 0 names the directory (a timestamp), every rank looks at it
    # before rank 0 writes there
    path = dist.broadcast_object(Path(run_dir) if run_dir is not None else new_run_dir(cfg))
    check_new_run_dir(path)  # every rank, before rank 0 writes anything
    dist.barrier()
    claim_run_dir(path)
    with run_log(path):  # also the errors of building the stream (a bad data file)
        log.info("everlearn %s: new run %s in %s, from %s", __version__, cfg.name, path, source)
        log.info("resolved config:\n%s", dump_yaml(cfg).rstrip())
        return path, driver(cfg, path, quiet, source, base_cache).execute(resume=False)


def resume_run(run_dir: str | Path, quiet: bool = False, base_cache: str | Path | None = None
               ) -> tuple[Path, dict[str, Any]]:
    """Continue a run after its last finished phase, from its own resolved config."""
    dist.init()
    path = Path(run_dir)
    check_resumable(path)
    with run_log(path):
        log.info("everlearn %s: resuming the run in %s", __version__, path)
        cfg = load_config(path / "config.yaml")
        log.info("resolved config:\n%s", dump_yaml(cfg).rstrip())
        return path, driver(cfg, path, quiet, str(path / "config.yaml"),
                            base_cache).execute(resume=True)


def driver(cfg: RunConfig, path: Path, quiet: bool, source: str,
           base_cache: str | Path | None = None) -> Run | RecycleRun:
    """The driver of the run mode ``cfg`` asks for: recyclable tuning (everlearn.runs.recycle)
    or a stream (stages, or a text stream; its base row through ``base_cache`` when given)."""
    if cfg.recycle is not None:
        dist.check_run([], [], source, recycle=True)
        return RecycleRun(cfg, path, quiet, source)
    run = Run(cfg, path, quiet, source)
    run.base_cache_dir = Path(base_cache) if base_cache is not None else None
    return run
