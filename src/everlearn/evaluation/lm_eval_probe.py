"""lm-evaluation-harness tasks as general-ability probes, when the user has the harness.

The harness does the tasks (prompts, few-shot, metrics); this module only hands it the model
being trained, wrapped by the harness's own ``HFLM``, and keeps one number per task: its
``acc`` when it has one, else its first metric, in percent. Task data must be local (files named
by a task YAML in ``include_path``, or the Hugging Face datasets cache): nothing is downloaded,
the datasets library runs offline here unless the user has set ``HF_DATASETS_OFFLINE`` otherwise.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from everlearn.errors import EverlearnError

log = logging.getLogger("everlearn")

KEY_PREFIX = "lm_eval/"  # row keys of these probes, beside 'agreement' and 'labelled'
_NOT_METRICS = {"alias", "name", "sample_len", "samples"}


def main_metric(task_results: dict[str, Any]) -> tuple[str, float] | None:
    """(metric, value) the probe keeps from one task's harness results: ``acc`` if present,
    else the first numeric metric that is not a standard error."""
    found = [(k, v) for k, v in task_results.items()
             if k not in _NOT_METRICS and "_stderr" not in k
             and isinstance(v, (int, float)) and not isinstance(v, bool)]
    for key, value in found:
        if key.split(",")[0] == "acc":
            return key, float(value)
    return (found[0][0], float(found[0][1])) if found else None


class LmEvalProbe:
    """The configured harness tasks, measured on the current model."""

    def __init__(self, cfg, tokenizer, batch_size: int, max_length: int, device):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self.metrics: dict[str, str] = {}  # task -> the metric kept, for results.json
        self._manager = None

    def task_manager(self):
        """The harness's task index, built once: only ``include_path`` when every task is
        defined there (indexing the harness's own thousands of task files takes ~20 s)."""
        if self._manager is None:
            from lm_eval.tasks import TaskManager

            include = self.cfg.include_path
            manager = TaskManager(include_path=include, include_defaults=False) if include \
                else None
            if manager is None or not set(self.cfg.tasks) <= set(manager.all_tasks):
                manager = TaskManager(include_path=include)
            self._manager = manager
        return self._manager

    def measure(self, model) -> dict[str, float]:
        """``{"lm_eval/<task>": score in percent}`` for every task the harness reports."""
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # never a download at run time
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        was_training = model.training
        model.eval()
        try:
            lm = HFLM(pretrained=model, tokenizer=self.tokenizer, batch_size=self.batch_size,
                      max_length=self.max_length, device=str(self.device))
            out = lm_eval.simple_evaluate(
                model=lm, tasks=list(self.cfg.tasks), task_manager=self.task_manager(),
                limit=self.cfg.limit, num_fewshot=self.cfg.num_fewshot, log_samples=False,
                verbosity="ERROR")
        except Exception as exc:  # the harness raises many kinds; name the field
            raise EverlearnError(f"config: eval.lm_eval.tasks: lm-evaluation-harness failed on "
                                 f"{self.cfg.tasks}: {type(exc).__name__}: {exc}") from None
        finally:
            model.train(was_training)
        scores: dict[str, float] = {}
        for task, res in sorted((out or {}).get("results", {}).items()):
            kept = main_metric(res)
            if kept is None:
                log.warning("lm_eval task %s reported no numeric metric", task)
                continue
            self.metrics[task] = kept[0]
            scores[KEY_PREFIX + task] = 100.0 * kept[1]
        return scores
