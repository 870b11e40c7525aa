"""What every scorer of the accuracy matrix shares: the test-set cache, truncation bookkeeping,
progress bars, adapter routing and the batched teacher-forced forward passes.

The :class:`~everlearn.evaluation.matrix.Evaluator` is assembled from one class per family of
metrics (option accuracy, preference accuracy, edit metrics) over this base, so each family's
encoding and scoring lives in its own module while the tokenised test sets stay cached across
rows of R in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from everlearn.config import EvalConfig
from everlearn.data.encode import IGNORE, Encoded, Encoder, collate, image_inputs
from everlearn.data.records import Record
from everlearn.stages.stream import Stage

SUBSETS_KEPT = 8  # cached test-set parts per stage and scorer (see EvaluatorBase._subset_key)


@dataclass
class StageScore:
    score: float
    n: int
    predictions: list[str]
    side: dict[str, float] = field(default_factory=dict)  # per-stage side metrics of this row
    # per test record, what the predictions file records (everlearn.runs.predictions): the
    # record's index, what the model produced, the reference, the record's score in the units
    # of R (the cell is their mean); None for a score without per-record parts (perplexity)
    samples: list[dict[str, Any]] | None = None


def by_length(items: list, key) -> list[int]:
    """Indices of ``items``, longest first (batches of similar length pad little)."""
    return sorted(range(len(items)), key=lambda i: -key(items[i]))


def route(records: list[Record], router) -> dict[str | None, list[int]]:
    """Group test records by the adapter the strategy routes them to (None: leave as is)."""
    groups: dict[str | None, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(router(r) if router else None, []).append(i)
    return groups


class EvaluatorBase:
    """One model's scorers share this: tokenised test sets are cached across rows of R."""

    def __init__(self, accelerator, encoder: Encoder, cfg: EvalConfig, quiet: bool = False):
        self.acc = accelerator
        self.encoder = encoder
        self.cfg = cfg
        self.quiet = quiet
        self._cache: dict[tuple, object] = {}
        self._subsets: dict[tuple, list[tuple]] = {}  # (stage, kind) -> its cached subset keys
        # what a router's choice switches on (``StrategyStack.activate``); default: the PEFT
        # adapter of that name
        self.activate = None
        self._truncated: dict[str, dict[int, bool]] = {}  # stage -> id(test record) -> cut

    def _subset_key(self, stage: Stage, kind: str, records: list[Record]) -> tuple:
        """Cache key of ``records`` (a stage's test set, or the part routing sends to one
        adapter). Routing may pick other parts in every row, so a stage keeps the last
        ``SUBSETS_KEPT`` of them: the cache does not grow with the rows of a long stream."""
        key = (stage.name, kind, tuple(map(id, records)))
        if key not in self._cache:
            kept = self._subsets.setdefault(key[:2], [])
            kept.append(key)
            while len(kept) > SUBSETS_KEPT:
                self._cache.pop(kept.pop(0), None)
        return key

    def _bar(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True,
                    disable=self.quiet or not self.acc.is_local_main_process)

    def _activate(self, model, choice: str) -> None:
        if self.activate is not None:
            self.activate(model, choice)
        else:
            model.set_adapter(choice)

    def _note_truncation(self, stage: Stage, records: list[Record], cut: list[bool]) -> None:
        """Which test records were cut to ``max_length``; the share over the whole test set
        goes to ``Encoder.truncated`` (records routed to several adapters count once)."""
        seen = self._truncated.setdefault(stage.name, {})
        seen.update({id(r): c for r, c in zip(records, cut)})
        self.encoder.note_truncation(stage.name, "test", list(seen.values()))

    def max_new_tokens(self, stage: Stage) -> int:
        if self.cfg.max_new_tokens is not None:
            return self.cfg.max_new_tokens
        key = (stage.name, "max_new")
        if key not in self._cache:
            longest = max((len(self.encoder.ids(a)) for r in stage.test for a in r.answers),
                          default=16)
            self._cache[key] = longest + 4
        return self._cache[key]

    # --- batched teacher-forced passes ----------------------------------------------------
    def _batches(self, examples: list[Encoded], order: list[int]):
        """(indices, collated batch on the device) per ``eval.batch_size`` of ``order``."""
        bs = self.cfg.batch_size
        for s in range(0, len(order), bs):
            idx = order[s:s + bs]
            yield idx, {k: v.to(self.acc.device) for k, v in
                        collate([examples[i] for i in idx], self.encoder.pad_id).items()}

    def _sequence_logprobs(self, model, examples: list[Encoded], desc: str,
                           normalize: bool | None = None, bar: bool = True) -> list[float]:
        """Summed (or mean) log-probability of each example's labelled tokens."""
        normalize = self.cfg.length_normalize if normalize is None else normalize
        scores = [0.0] * len(examples)
        bar = self._bar(len(examples) if bar else 0, desc)
        for idx, batch in self._batches(examples, by_length(examples, lambda e: len(e.input_ids))):
            lp, counts = self._token_logprobs(model, batch)
            for j, i in enumerate(idx):
                scores[i] = lp[j] / counts[j] if normalize else lp[j]
            bar.update(len(idx))
        bar.close()
        return scores

    def _token_logprobs(self, model, batch) -> tuple[list[float], list[int]]:
        with self.acc.autocast():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           **image_inputs(batch)).logits
        logits = logits[:, :-1].float()
        target = batch["labels"][:, 1:]
        mask = target != IGNORE
        logp = torch.log_softmax(logits, dim=-1)
        picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        return picked.sum(-1).tolist(), mask.sum(-1).tolist()

    def _argmax_along(self, model, examples: list[Encoded], desc: str) -> list[list[int]]:
        """Each example's top-1 predicted tokens at its labelled positions (teacher-forced,
        batched by length)."""
        out: list[list[int]] = [[] for _ in examples]
        bar = self._bar(len(examples), desc)
        for idx, batch in self._batches(examples, by_length(examples, lambda e: len(e.input_ids))):
            with self.acc.autocast():
                logits = model(input_ids=batch["input_ids"],
                               attention_mask=batch["attention_mask"],
                               **image_inputs(batch)).logits
            pred = logits[:, :-1].argmax(-1).cpu()
            mask = (batch["labels"][:, 1:] != IGNORE).cpu()
            for j, i in enumerate(idx):
                out[i] = pred[j][mask[j]].tolist()
            bar.update(len(idx))
        bar.close()
        return out
