"""``preference_accuracy``: held-out preference pairs scored by their implicit reward margin.

A pair's log-ratio log pi(chosen) - log pi(rejected) (summed over answer tokens, as in DPO) is
compared with the same under the stage's reference model: the model as it entered the phase
that trains the stage (the base model before that). The references move with
:meth:`PreferenceScoring.begin_phase` and are rebuilt on resume by ``restore_preference``.
"""

from __future__ import annotations

from everlearn.data.records import Record
from everlearn.evaluation.evaluator_base import EvaluatorBase, StageScore
from everlearn.stages.align import credit, preference_accuracy
from everlearn.stages.stream import Stage


class PreferenceScoring(EvaluatorBase):
    """Scores ``preference_accuracy`` stages and keeps their reference log-ratios."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # preference_accuracy: per stage, log pi(chosen) - log pi(rejected) of every test pair
        # under the stage's reference model, and under the model scored last
        self.pref_reference: dict[str, list[float]] = {}
        self.pref_last: dict[str, list[float]] = {}

    def pair_logratios(self, model, stage: Stage, records: list[Record]) -> list[float]:
        """log pi(chosen) - log pi(rejected) per pair, summed over answer tokens (as in DPO)."""
        key = self._subset_key(stage, "pairs", records)
        if key not in self._cache:
            examples = []
            for rec in records:
                prompt_ids = self.encoder.prompt_inputs(rec)[0]
                examples += [self.encoder.encode_pair(
                    prompt_ids, self.encoder.ids(self.encoder.response_text(rec, answer)), rec)
                    for answer in (rec.chosen, rec.rejected)]
            self._note_truncation(stage, records, [
                a.truncated or b.truncated for a, b in zip(examples[::2], examples[1::2])])
            self._cache[key] = examples
        lp = self._sequence_logprobs(model, self._cache[key], f"eval {stage.name}",
                                     normalize=False)
        return [lp[2 * i] - lp[2 * i + 1] for i in range(len(records))]

    def preference_score(self, stage: Stage, logratios: list[float]) -> StageScore:
        """Preference accuracy: a pair counts when its implicit reward margin
        ``(log pi(c) - log ref(c)) - (log pi(r) - log ref(r))`` is above 0, half when it is
        exactly 0 (:func:`everlearn.stages.align.credit`). The first model scored, the base row,
        is every stage's reference until ``begin_phase`` moves it, so the base row scores 50.
        Each pair's sample has its log-ratios, margin and credit (in percent)."""
        reference = self.pref_reference.setdefault(stage.name, list(logratios))
        self.pref_last[stage.name] = list(logratios)
        margins = [d - ref for d, ref in zip(logratios, reference)]
        samples = [{"index": i, "prompt": rec.prompt, "chosen": rec.chosen,
                    "rejected": rec.rejected, "logratio": d, "reference_logratio": ref,
                    "margin": m, "score": 100.0 * credit(m)}
                   for i, (rec, d, ref, m) in enumerate(zip(stage.test, logratios, reference,
                                                            margins))]
        return StageScore(preference_accuracy(margins), len(margins),
                          [f"{m:+.4f}" for m in margins],
                          {"mean_margin": sum(margins) / max(1, len(margins))}, samples)

    def begin_phase(self, stages: list[Stage]) -> None:
        """The phase training ``stages`` starts: their reference becomes the model as it enters
        the phase, i.e. the one scored in the row just before (rows before keep the base)."""
        for st in stages:
            if st.name in self.pref_last:
                self.pref_reference[st.name] = self.pref_last[st.name]

    def restore_preference(self, rows: list[dict[str, list[float]]],
                           phases: list[list[Stage]]) -> None:
        """Rebuild the references of a resumed run from ``pref_last`` of every row kept (row 0 =
        base, row k = after phase k): a stage of phase p <= k has row p - 1 as reference, a
        later stage still the base row."""
        if not rows:
            return
        k = len(rows) - 1
        self.pref_last = dict(rows[k])
        for p, stages in enumerate(phases, 1):
            for st in stages:
                row = rows[p - 1] if p <= k else rows[0]
                if st.name in row:
                    self.pref_reference[st.name] = list(row[st.name])
