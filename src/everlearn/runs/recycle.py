"""Recyclable tuning: keep downstream adapters useful when the base model is updated.

In the LLM supply chain a vendor keeps pre-training the base model and releases new versions,
while every consumer's adapters were trained against the old one. A run with a ``recycle``
config section measures what carrying the adapters over costs and keeps:

1. every ``sft`` stage (a downstream task) gets its own LoRA adapter, trained on the *old* base
   with the stage's budget and scored (old base + adapter);
2. the base is updated: the last stage (``cpt``, new text) trains the base itself (every weight,
   or a LoRA adapter merged into it: ``recycle.update``), or ``recycle.new_base`` names a new
   checkpoint of the same architecture and tokenizer;
3. each adapter is carried over to the new base by each policy and scored:

   - ``reapply``: the old adapter's tensors loaded onto the new base as they are (no training);
   - ``retune``: start from the old adapter, train ``retune_steps`` on the task's data;
   - ``distill``: train an adapter on the new base to match the old base + adapter:
     KL(old || new) on the answer tokens of the adapter's own training inputs (the ``lwf``
     strategy's compressed teacher and loss, with a fixed teacher computed before the swap),
     plus ``distill_task_weight`` x the task loss;
   - ``scratch`` (the baseline): a fresh adapter trained on the new base with the full budget.

Everything trains through the one :class:`~everlearn.training.trainer.Trainer` and scores
through the :class:`~everlearn.evaluation.matrix.Evaluator`. The consumer model is one PEFT model
with one adapter slot; changing the base copies the old or the new base weights into it in place
(everlearn.runs.base_weights), and changing the adapter loads saved adapter tensors
(``load_trainable_state``). The ``distill`` policy's teacher is in everlearn.runs.recycle_distill.

``results.json`` is a normal run's (R, metrics, cost per phase, so ``report`` and ``compare``
work) plus a ``recycling`` section. R reads as the consumer's system over time, each task
scored with its own adapter (task id known): row 0 the old base, row k after task k's adapter
(earlier tasks keep their adapter's score, later ones the base's), and, when the update is a
stage, a last row: the new base with every old adapter re-applied as is. No cell of R needs an
evaluation of its own beyond those the recycling section reports.

Each unit of work (base row, one adapter, the update, one task x policy) is seeded from the run
seed and its position and is followed by a checkpoint and a rewritten ``results.json``, so
``--resume`` ends with the same scores as an uninterrupted run.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from everlearn.config import RunConfig, dump_yaml
from everlearn.data.encode import Encoder
from everlearn.errors import ConfigError, ResumeError
from everlearn.evaluation.matrix import Evaluator
from everlearn.models.loading import (
    count_parameters,
    load_base_model,
    load_trainable_state,
    make_trainable,
    trainable_on_device,
    trainable_state,
)
from everlearn.runs.base_weights import (
    load_base_weights,
    load_new_base,
    plain_state,
    relative_change,
)
from everlearn.runs.metrics import compute_metrics
from everlearn.runs.recycle_distill import Distill
from everlearn.runs.results import (
    Results,
    cost_entry,
    read_for_resume,
    stage_entry,
    write_results,
)
from everlearn.runs.run_dir import RunDir, save_tensors, write_atomic
from everlearn.runs.run_log import run_log
from everlearn.runs.session import Session, begin, seed_everything
from everlearn.stages.stream import Stage, build_stream
from everlearn.strategies.base import RunContext, Strategy
from everlearn.training.learning_rate import learning_rate
from everlearn.training.phase import PhaseCost
from everlearn.training.resources import PeakMemory
from everlearn.training.trainer import Trainer
from everlearn.vision import is_vision_model

log = logging.getLogger("everlearn")

TRAINED_POLICIES = ("retune", "distill", "scratch")  # reapply is measured with the update


# --- the run ----------------------------------------------------------------------------------
def _no_training() -> PhaseCost:
    return PhaseCost(steps=0, train_time_s=0.0, tokens_trained=0, padding_fraction=0.0,
                     examples=0, final_loss=float("nan"), peak_memory_mb=0.0)


class RecycleRun:
    """One recycle run directory being filled (see the module docstring)."""

    def __init__(self, cfg: RunConfig, run_dir: Path, quiet: bool = False,
                 source: str = "config"):
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(f"{source}: recycle: a recycle run uses one process; run it "
                              "without torchrun")
        self.cfg = cfg
        self.rc = cfg.recycle
        self.dir = RunDir(run_dir)
        self.quiet = quiet
        self.source = source
        self.stream = build_stream(cfg, source)
        stages = self.stream.stages
        if self.rc.new_base is None:
            *self.tasks, self.update = stages
        else:
            self.tasks, self.update = list(stages), None
        self.phases = [[s] for s in stages]
        self.policies = [p for p in TRAINED_POLICIES if p in self.rc.policies]
        # unit numbers (seeds, trainer phases): base row 0, adapters 1..N, update N + 1, then
        # every task x trained policy in order
        self.units = {(t.name, p): len(self.tasks) + 2 + i for i, (t, p) in enumerate(
            (t, p) for t in self.tasks for p in self.policies)}
        self.R: list[list[float]] = []
        self.cost: list[dict[str, Any]] = []
        self.base_eval_s = 0.0
        self.recycling: dict[str, Any] = {}
        self.model = None
        self.session: Session | None = None  # everlearn.runs.session, once execute begins
        self._previous: dict[str, Any] | None = None  # a resumed run's results.json

    # --- results ----------------------------------------------------------------------------
    def _results(self, status: str) -> Results:
        stages = self.stream.stages
        res = Results(
            status=status, name=self.cfg.name, scenario=self.stream.scenario,
            strategies=["recycle"], model=self.cfg.model.name,
            finetune=self.cfg.model.finetune, stages=[stage_entry(s) for s in stages],
            phases=[[s.name for s in p] for p in self.phases],
            rows=["base"] + [p[0].name for p in self.phases[:len(self.R) - 1]],
            R=self.R, base_eval_time_s=self.base_eval_s, cost=self.cost, strategy_metrics={},
            recycling=self.recycling, environment=self.session.environment,
            environment_history=self.session.environment_history)
        if status == "complete":
            res.metrics = compute_metrics(self.R, stages, self.phases)
            self.recycling["summary"] = self._summary()
        return res

    def _write(self, status: str = "running") -> dict[str, Any]:
        return write_results(self.dir.path, self._results(status))

    def _summary(self) -> dict[str, Any]:
        """Per policy over the tasks: mean score, mean change against old base + adapter, mean
        KL to the old system, and the total steps and wall time spent."""
        tasks = list(self.recycling.get("tasks", {}).values())

        def mean(values):
            values = [v for v in values if v is not None]
            return sum(values) / len(values) if values else None

        out = {}
        rows = [("old_adapter", [t["old_adapter"] for t in tasks]),
                ("new_base", [t["new_base"] for t in tasks])]
        rows += [(p, [t["policies"][p] for t in tasks if p in t["policies"]])
                 for p in ("reapply", *self.policies)]
        for name, entries in rows:
            if not entries:
                continue
            out[name] = {
                "mean_score": mean(e["score"] for e in entries),
                "mean_delta_vs_old": mean(e.get("delta_vs_old") for e in entries),
                "mean_kl_to_old": mean(e.get("kl_to_old") for e in entries),
                "steps": sum(e.get("steps", 0) for e in entries),
                "wall_time_s": sum(e.get("wall_time_s", 0.0) for e in entries),
            }
        return out

    # --- running ----------------------------------------------------------------------------
    def execute(self, resume: bool = False) -> dict[str, Any]:
        with run_log(self.dir.path):  # RUN_DIR/log.txt, the error too when the run fails
            return self._execute(resume)

    def _execute(self, resume: bool) -> dict[str, Any]:
        if resume and self.dir.results.exists():
            self._restore()
        elif not resume:
            write_atomic(self.dir.config, dump_yaml(self.cfg))
        self.session = begin(self.cfg, self._previous)
        self.acc = self.session.acc
        self._prepare()
        if not self.R:
            self._score_base()
        for k in range(len(self.adapters) + 1, len(self.tasks) + 1):
            self._train_adapter(k)
        if self.recycling.get("update") is None:
            self._do_update()
        elif self.new_base is None:
            self.new_base = self._saved_new_base()
        for task in self.tasks:
            for policy in self.policies:
                if policy not in self.recycling["tasks"][task.name]["policies"]:
                    self._recycle(task, policy)
        return self._write("complete")

    def _prepare(self) -> None:
        """The old base (and a named new one, checked before any training), the consumer model,
        encoder and evaluator, and a resumed run's adapters."""
        cfg = self.cfg
        model, tok = load_base_model(cfg.model, self.source)
        if is_vision_model(model):
            raise ConfigError(f"{self.source}: model.name: recyclable tuning takes a text model; "
                              f"'{cfg.model.name}' is a vision-language model")
        self.old_base = plain_state(model)
        self.new_base: dict[str, torch.Tensor] | None = None
        if self.rc.new_base is not None:  # checked before any training
            self.new_base = load_new_base(cfg, self.source, self.old_base, model, tok)
        model = trainable_on_device(model, cfg.model, self.acc.device, self.session.bf16,
                                    self.source)
        self.model = model
        self.fresh = trainable_state(model)  # the initial adapter (LoRA B = 0: the base itself)
        self.on_base = "old"
        self.encoder = Encoder(tok, cfg.train.max_length, cfg.model.chat_template == "auto")
        self.ctx = RunContext(model=model, tokenizer=tok, encoder=self.encoder, config=cfg,
                              stream=self.stream, seed=cfg.seed, accelerator=self.acc)
        self.evaluator = Evaluator(self.acc, self.encoder, cfg.eval, self.quiet)
        self._test_teachers: dict[str, Distill] = {}
        self.adapters = [self._adapter(k) for k in range(1, len(self.R))
                         if k <= len(self.tasks)]

    def _score_base(self) -> None:
        """Row 0: every stage on the old base."""
        seed_everything(self.cfg.seed)
        t0 = time.perf_counter()
        self._use("old", self.fresh)
        self.R.append([self._score(st) for st in self.stream.stages])
        self.base_eval_s = time.perf_counter() - t0
        self.recycling = {"policies": ["reapply", *self.policies], "update": None,
                          "tasks": {}}
        self._write()

    def _restore(self) -> None:
        """What a resumed run already has: R, cost, the recycling entries so far."""
        prev = read_for_resume(self.dir.path)
        self._previous = prev
        if prev.get("phases") != [[s.name for s in p] for p in self.phases]:
            raise ResumeError(f"{self.dir.results}: phases: the stream no longer matches the "
                              "run's config.yaml")
        self.R, self.cost = prev["R"], prev["cost"]
        self.base_eval_s = prev.get("base_eval_time_s", 0.0)
        self.recycling = prev.get("recycling") or {}
        if self.R and not self.recycling:
            raise ResumeError(f"{self.dir.results}: recycling: missing; not a recycle run")
        self.recycling.pop("summary", None)
        log.info("resuming the recycle run after %d phases", len(self.R) - 1)

    # --- units ------------------------------------------------------------------------------
    def _train_adapter(self, k: int) -> None:
        """Task k's adapter on the old base, its score, R row k, checkpoint phase k."""
        stage = self.tasks[k - 1]
        seed_everything(self.cfg.seed + k)
        t0 = time.perf_counter()
        self._use("old", self.fresh)
        pc = self._trainer().train_phase(self.model, [stage], k)
        train_wall = time.perf_counter() - t0
        memory = PeakMemory(self.acc.device)
        t1 = time.perf_counter()
        score = self._score(stage)
        eval_s = time.perf_counter() - t1
        adapter = trainable_state(self.model)
        self.adapters.append(adapter)
        row = list(self.R[-1])
        row[k - 1] = score
        self.R.append(row)
        self.cost.append(cost_entry(k, [stage.name], pc, time.perf_counter() - t0, eval_s,
                                    count_parameters(self.model), memory.peak_mb, 0))
        self.dir.save_phase(k, adapter, {"meta": {}, "tensors": {}})
        self.recycling["tasks"][stage.name] = {
            "metric": stage.metric, "old_base": self.R[0][k - 1],
            "old_adapter": {"score": score, "steps": pc.steps, "wall_time_s": train_wall,
                            "train_time_s": pc.train_time_s,
                            "eval_time_s": eval_s, "delta_vs_old": 0.0, "kl_to_old": 0.0},
            "policies": {}}
        self._write()

    def _do_update(self) -> None:
        """The new base (trained on the cpt stage, or loaded), the new base's scores without
        and with each old adapter (reapply), R's last row when the update is a stage."""
        n = len(self.tasks)
        for task in self.tasks:  # the old system's outputs, while the old base is loaded
            self._test_teacher(task)
        seed_everything(self.cfg.seed + n + 1)
        t0 = time.perf_counter()
        pc, info = self._update_base(n + 1)
        update_s = time.perf_counter() - t0
        info["relative_change"] = relative_change(self.old_base, self.new_base)
        memory = PeakMemory(self.acc.device)
        t1 = time.perf_counter()
        update_score, reapplied = self._score_new_base()
        eval_s = time.perf_counter() - t1
        if self.update is not None:
            info["scores"] = {"old_base": self.R[0][n], "new_base": update_score}
            self.R.append([reapplied[t.name]["score"] for t in self.tasks] + [update_score])
            self.cost.append(cost_entry(n + 1, [self.update.name], pc, update_s + eval_s,
                                        eval_s, self.vendor_params, memory.peak_mb, 0))
        info["wall_time_s"] = update_s
        self.recycling["update"] = info
        for name, entry in reapplied.items():
            self.recycling["tasks"][name]["policies"]["reapply"] = entry
        self._write()

    def _update_base(self, phase: int) -> tuple[PhaseCost, dict[str, Any]]:
        """Train the base on the update stage (checkpoint ``phase``: the changed weights), or
        take ``recycle.new_base``; its cost and the recycling ``update`` entry so far."""
        if self.update is None:
            return _no_training(), {"source": "checkpoint", "new_base": self.rc.new_base,
                                    "steps": 0}
        pc = self._train_base(self.update, phase)
        info = {"source": "cpt", "stage": self.update.name, "finetune": self.rc.update,
                "lr": self._update_lr(), "steps": pc.steps,
                "train_time_s": pc.train_time_s, "tokens_trained": pc.tokens_trained}
        changed = {k: v for k, v in self.new_base.items()
                   if not torch.equal(v, self.old_base[k])}
        self.dir.save_phase(phase, changed, {"meta": {"changed": len(changed)}, "tensors": {}})
        return pc, info

    def _score_new_base(self) -> tuple[float | None, dict[str, dict[str, Any]]]:
        """The update stage's score on the new base (None without one); every task's entry
        for the new base alone, and for it with the old adapter re-applied as is."""
        self._use("new", self.fresh)
        new_scores = {t.name: self._score(t) for t in self.tasks}
        update_score = self._score(self.update) if self.update is not None else None
        for task in self.tasks:
            entry = self.recycling["tasks"][task.name]
            entry["new_base"] = {"score": new_scores[task.name], "steps": 0, "wall_time_s": 0.0,
                                 "delta_vs_old": new_scores[task.name]
                                 - entry["old_adapter"]["score"],
                                 "kl_to_old": self._test_teacher(task).mean_kl(
                                     self.model, task.test)}
        reapplied = {}
        for k, task in enumerate(self.tasks, 1):
            t2 = time.perf_counter()
            self._use("new", self.adapters[k - 1])
            wall = time.perf_counter() - t2
            reapplied[task.name] = self._policy_entry(task, 0, wall, 0.0, "reapply")
        return update_score, reapplied

    def _recycle(self, task: Stage, policy: str) -> None:
        """One task x trained policy: the adapter it gives on the new base, its score and cost."""
        k = self.tasks.index(task) + 1
        unit = self.units[(task.name, policy)]
        rc = self.rc
        self._test_teacher(task)  # for kl_to_old: measured, not part of the policy's cost
        seed_everything(self.cfg.seed + unit)
        old_steps = self.recycling["tasks"][task.name]["old_adapter"]["steps"]
        retune_steps = rc.retune_steps or max(1, round(old_steps / 4))
        t0 = time.perf_counter()
        strategy: Strategy = Strategy()
        if policy == "retune":
            stage, init = dataclasses.replace(task, steps=retune_steps), self.adapters[k - 1]
        elif policy == "scratch":
            stage, init = dataclasses.replace(task, steps=old_steps), self.fresh
        else:  # distill: the old base + old adapter's outputs on the task's training inputs
            strategy = Distill(self.ctx, rc.temperature, rc.top_k, rc.distill_task_weight)
            self._use("old", self.adapters[k - 1])
            strategy.set_teacher(task.train)
            stage = dataclasses.replace(task, steps=rc.distill_steps or retune_steps)
            init = self.adapters[k - 1] if rc.distill_init == "old" else self.fresh
        self._use("new", init)
        # scratch is the baseline: a fresh adapter with the run's own learning rate
        train_cfg = dataclasses.replace(self.cfg.train, lr=learning_rate(
            self.cfg.train.lr, None if policy == "scratch" else rc.lr))
        pc = self._trainer(strategy, train_cfg).train_phase(self.model, [stage], unit)
        wall = time.perf_counter() - t0
        entry = self._policy_entry(task, pc.steps, wall, pc.train_time_s, policy)
        self.recycling["tasks"][task.name]["policies"][policy] = entry
        self._write()

    def _policy_entry(self, task: Stage, steps: int, wall: float, train_s: float,
                      policy: str) -> dict[str, Any]:
        """Score, change against old base + adapter, KL to the old system and cost of the
        adapter now in the model; its tensors go to checkpoints/recycled/."""
        k = self.tasks.index(task) + 1
        save_tensors(self.dir.path / "checkpoints" / "recycled" / f"task{k:02d}-{policy}"
                     ".safetensors", trainable_state(self.model))
        t0 = time.perf_counter()
        score = self._score(task)
        eval_s = time.perf_counter() - t0
        old = self.recycling["tasks"][task.name]["old_adapter"]["score"]
        return {"score": score, "delta_vs_old": score - old, "steps": steps,
                "wall_time_s": wall, "train_time_s": train_s, "eval_time_s": eval_s,
                "kl_to_old": self._test_teacher(task).mean_kl(self.model, task.test)}

    # --- helpers ----------------------------------------------------------------------------
    def _trainer(self, strategy: Strategy | None = None, train_cfg=None) -> Trainer:
        return Trainer(self.acc, self.encoder, train_cfg or self.cfg.train,
                       strategy or Strategy(), self.cfg.seed, self.quiet)

    def _score(self, stage: Stage) -> float:
        return self.evaluator.score(self.model, stage).score

    def _use(self, base: str, adapter: dict[str, torch.Tensor]) -> None:
        """Put the old or new base and the given adapter tensors into the model."""
        if base != self.on_base:
            load_base_weights(self.model, self.old_base if base == "old" else self.new_base,
                              f"recycle: {base} base")
            self.on_base = base
        load_trainable_state(self.model, adapter, "recycle: adapter")

    def _test_teacher(self, task: Stage) -> Distill:
        """The old system's (old base + the task's adapter) outputs on the task's test inputs,
        at temperature 1: what ``kl_to_old`` compares every carried-over adapter with."""
        if task.name not in self._test_teachers:
            k = self.tasks.index(task) + 1
            back = self.on_base, trainable_state(self.model)
            teacher = Distill(self.ctx, 1.0, self.rc.top_k)
            self._use("old", self.adapters[k - 1])
            teacher.set_teacher(task.test)
            self._use(*back)
            self._test_teachers[task.name] = teacher
        return self._test_teachers[task.name]

    def _adapter(self, k: int) -> dict[str, torch.Tensor]:
        """Task k's adapter from its phase checkpoint (a resumed run)."""
        weights, _ = self.dir.load_phase(k, need_weights=True)
        return weights

    def _train_base(self, stage: Stage, phase: int) -> PhaseCost:
        """The vendor's update: a plain copy of the old base trained on the cpt stage (every
        weight, or a LoRA adapter merged in); sets ``self.new_base``."""
        vendor, _ = load_base_model(self.cfg.model)
        with torch.no_grad():  # exactly the old base the consumer holds
            for n, p in vendor.named_parameters(remove_duplicate=False):
                p.copy_(self.old_base[n])
        mcfg = copy.deepcopy(self.cfg.model)
        mcfg.finetune = self.rc.update
        vendor = make_trainable(vendor, mcfg).to(self.acc.device)
        train_cfg = dataclasses.replace(self.cfg.train, lr=self._update_lr())
        pc = self._trainer(train_cfg=train_cfg).train_phase(vendor, [stage], phase)
        self.vendor_params = count_parameters(vendor)
        if self.rc.update == "lora":
            vendor = vendor.merge_and_unload()
        self.new_base = plain_state(vendor)
        del vendor
        return pc

    def _update_lr(self) -> float:
        """The learning rate of the vendor's base update."""
        return learning_rate(self.cfg.train.lr, self.rc.update_lr)

    def _saved_new_base(self) -> dict[str, torch.Tensor]:
        """A resumed run's new base: the old base with the update's changed weights."""
        changed, _ = self.dir.load_phase(len(self.tasks) + 1, need_weights=True)
        return {n: changed.get(n, t) for n, t in self.old_base.items()}


def is_recycle(cfg: RunConfig) -> bool:
    return getattr(cfg, "recycle", None) is not None


__all__ = ["RecycleRun", "TRAINED_POLICIES", "is_recycle"]
