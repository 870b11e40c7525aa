"""Fill the accuracy matrix: score the current model on every stage's test set.

A row scores each stage by asking its metric (:mod:`everlearn.evaluation.scorers`: one module
per metric, each with the function that scores a stage with it). Scorers: ``accuracy`` ranks
each record's label options by log-likelihood in batched forward passes (no decoding;
:mod:`everlearn.evaluation.option_accuracy`); ``exact_match``, ``rouge_l`` and TRACE's
``strict_match``, ``first_char_match``, ``edit_similarity``, ``sari`` and
``rouge_l_summary`` score batched greedy generations (KV cache on, ``max_new_tokens`` derived
from the test answers unless set); ``perplexity`` is exp of the mean token loss on the test
text; ``preference_accuracy`` scores held-out preference pairs by their implicit reward margin
(see ``Evaluator.begin_phase``,
:mod:`everlearn.evaluation.preference_scoring`); ``reliability`` scores an edit stage's edits
teacher-forced, with generalisation and locality beside it (see :mod:`everlearn.stages.edit`,
:mod:`everlearn.evaluation.edit_scoring`). Scores are in [0, 100] except perplexity.

This module holds what is common to a row and what the metrics build on: routing test records
to adapters, sharing them among processes, perplexity and generation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from everlearn.data.records import Record
from everlearn.evaluation.edit_scoring import EditScoring
from everlearn.evaluation.evaluator_base import SUBSETS_KEPT, StageScore, route
from everlearn.evaluation.generation import decode_batched
from everlearn.evaluation.option_accuracy import OptionAccuracy, cached_option_scoring
from everlearn.evaluation.preference_scoring import PreferenceScoring
from everlearn.evaluation.scorers import get_metric
from everlearn.parallel import distributed as dist
from everlearn.parallel import fsdp
from everlearn.stages import get_kind
from everlearn.stages.stream import Stage

__all__ = ["SUBSETS_KEPT", "Evaluator", "StageScore", "cached_option_scoring"]

# (model, stage, records) -> each record's (score in [0, 1] or a raw value, prediction, what its
# line of the predictions file records besides the index and score)
RecordScorer = Callable[..., list[tuple[float, str, dict[str, Any]]]]



def single_line_answers(stage: Stage) -> bool:
    """Whether every reference answer of the stage's test set is one line: then generation
    stops at the end of the first line (the answer has ended; what follows cannot score)."""
    answers = [a for r in stage.test for a in r.answers]
    return bool(answers) and all("\n" not in a.strip() for a in answers)

class Evaluator(EditScoring, PreferenceScoring, OptionAccuracy):
    """Scores stages with one model; tokenised test sets are cached across rows of R."""

    @torch.no_grad()
    def score(self, model, stage: Stage, router=None) -> StageScore:
        model.eval()
        return get_metric(stage.metric).score(self, model, stage, router)

    def mean_of_records(self, model, stage: Stage, router, score_records: RecordScorer
                        ) -> StageScore:
        """The stage's score as the mean of its records' scores, in percent; each record's
        sample (``StageScore.samples``) has its score in percent too."""
        results = self.record_scores(model, stage, router, score_records)
        value = 100.0 * sum(r[0] for r in results) / max(1, len(results))
        samples = [{"index": i, **detail, "score": 100.0 * s}
                   for i, (s, _, detail) in enumerate(results)]
        return StageScore(value, len(stage.test), [r[1] for r in results], samples=samples)

    def record_scores(self, model, stage: Stage, router, score_records: RecordScorer
                      ) -> list[tuple[float, str, dict[str, Any]]]:
        """Every test record's (score, prediction, sample) from ``score_records``, by the
        adapter routing picks for it. Every rank ends with all."""
        results: list[tuple[float, str, dict[str, Any]]] = [(0.0, "", {})] * len(stage.test)
        rank, world = self._split(model)
        mine: dict[int, tuple[float, str, dict[str, Any]]] = {}  # what this rank scored
        for adapter, idx in route(stage.test, router).items():
            if adapter is not None:
                self._activate(model, adapter)
            idx = idx[rank::world]  # several processes: each scores its share of the records
            if not idx:
                continue
            records = [stage.test[i] for i in idx]
            for i, res in zip(idx, score_records(model, stage, records)):
                results[i] = res
                mine[i] = res
        if world > 1:  # every rank ends with the whole row
            for part in dist.gather_objects(mine):
                for i, res in part.items():
                    results[i] = res
        elif self.acc.num_processes > 1:  # FSDP: every rank scored everything; keep rank 0's
            results = dist.broadcast_object(results)
        return results

    def _split(self, model) -> tuple[int, int]:
        """(rank, world) for sharding test records: each process scores its share, except
        under FSDP, where every forward pass gathers weights collectively, so every process
        makes the same calls on every record (replicated, not faster; no rank waits forever
        for another's batch)."""
        if fsdp.is_sharded(model):
            return 0, 1
        return self.acc.process_index, self.acc.num_processes

    # --- perplexity -------------------------------------------------------------------
    def perplexity(self, model, stage: Stage, router) -> StageScore:
        """exp of the mean token loss over the test text, pooled over every adapter group
        (each group's records packed; ranks share the blocks)."""
        logprob, tokens = 0.0, 0
        _, world = self._split(model)
        for adapter, idx in route(stage.test, router).items():
            if adapter is not None:
                self._activate(model, adapter)
            lp, n = self._log_likelihood(model, stage, [stage.test[i] for i in idx], world)
            logprob, tokens = logprob + lp, tokens + n
        if world > 1:
            logprob, tokens = dist.sum_values([logprob, tokens], self.acc.device)
        elif self.acc.num_processes > 1:  # FSDP: every rank scored everything; keep rank 0's
            logprob, tokens = dist.broadcast_object((logprob, tokens))
        return StageScore(math.exp(-logprob / max(1, tokens)), len(stage.test),
                          [""] * len(stage.test))

    def _log_likelihood(self, model, stage, records, world: int) -> tuple[float, int]:
        """Summed token log-likelihood of the records' packed text (this rank's share of the
        packed blocks when ``world`` > 1), and its token count."""
        key = self._subset_key(stage, "ppl", records)
        if key not in self._cache:
            self._cache[key] = self.encoder.encode_stage(stage.kind, records)
            self._note_truncation(stage, records, [False] * len(records))  # packed, never cut
        examples = self._cache[key]
        if world > 1:  # the same packed blocks as one process; the caller sums the ranks
            examples = examples[self.acc.process_index::world]
        total_lp, total_n = 0.0, 0
        for _, batch in self._batches(examples, list(range(len(examples)))):
            lp, counts = self._token_logprobs(model, batch)
            total_lp += sum(lp)
            total_n += sum(counts)
        return total_lp, total_n

    # --- greedy generation ------------------------------------------------------------
    def generated_scores(self, model, stage: Stage, records: list[Record],
                         match: Callable[[str, list[str]], float],
                         alive: Callable[[str, list[str]], bool] | None = None, *,
                         single_line: bool | None = None
                         ) -> list[tuple[float, str, dict[str, Any]]]:
        """Per record (``match(generation, answers)``, the generation, its sample: prompt,
        generation, answers), greedy. ``alive(text, answers)``: whether a generation can still
        score, so decoding stops a row that cannot (its score is 0 either way).
        ``single_line``: see :meth:`generations`."""
        preds = self.generations(model, stage, records, alive, single_line=single_line)
        return [(match(p, r.answers), p, {"prompt": r.prompt, "generation": p,
                                          "answers": r.answers})
                for p, r in zip(preds, records)]

    def generations(self, model, stage: Stage, records: list[Record],
                    alive: Callable[[str, list[str]], bool] | None = None, *,
                    single_line: bool | None = None) -> list[str]:
        """The records' greedy generations, in their order, ends stripped. ``single_line``:
        cut each at the end of its first line (None: when every answer of the stage is one
        line, :func:`single_line_answers`; False for a metric that scores what follows the
        first line too, as TRACE's string equality does). A raw-text stage's prompt (a cpt
        stage's cloze probe) is continued as raw text, no chat template, and its continuation
        ends after the first sentence, as TemporalWiki's and CKL's GPT-2 evaluation cut it."""
        cloze = get_kind(stage.kind).raw_text
        prompts, images, cut = [], [], []
        for r in records:
            if cloze:
                ids, pixels = self.encoder.cloze_prompt_ids(r.prompt), None
                prompts.append(self.encoder.cut(ids, self.encoder.max_length))
            else:
                ids, pixels = self.encoder.prompt_inputs(r)
                prompts.append(self.encoder.fit_prompt(r, ids, self.encoder.max_length, pixels))
            images.append(pixels)
            cut.append(prompts[-1] != ids)
        self._note_truncation(stage, records, cut)
        bar = self._bar(len(records), f"generate {stage.name}")
        still = (None if alive is None
                 else lambda i, text: alive(text, records[i].answers))
        one_line = single_line_answers(stage) if single_line is None else single_line
        out = decode_batched(model, self.encoder, prompts, self.max_new_tokens(stage),
                             device=self.acc.device, autocast=self.acc.autocast,
                             batch_size=self.cfg.batch_size, on_batch=bar.update,
                             images=images if any(p is not None for p in images) else None,
                             alive=still, single_line=one_line, first_sentence=cloze)
        bar.close()
        return out
