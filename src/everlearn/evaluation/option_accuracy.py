"""``accuracy``: each test record's label options ranked by log-likelihood, no decoding.

The options of a batch share their prompt's KV cache (:mod:`everlearn.evaluation.option_scoring`)
unless the model is a vision-language model whose positions are not plain; then each option is
scored as a whole sequence with its image.
"""

from __future__ import annotations

from typing import Any

from everlearn.data.encode import IGNORE, Encoded
from everlearn.data.records import Record
from everlearn.evaluation.evaluator_base import EvaluatorBase
from everlearn.evaluation.option_scoring import OptionItem, score_options
from everlearn.evaluation.scoring import exact_match
from everlearn.stages import get_kind
from everlearn.stages.stream import Stage


def cached_option_scoring(model) -> bool:
    """Whether options of image records may be scored on a shared-prompt KV cache with plain
    positions (the LLaVA family); other vision-language models (multimodal rotary positions)
    score each option as a whole sequence."""
    config = getattr(model, "config", None)
    return getattr(config, "model_type", "") in ("llava", "llava_next", "vipllava")


class OptionAccuracy(EvaluatorBase):
    """Scores ``accuracy`` stages (see the module docstring)."""

    def _option_items(self, stage: Stage, records: list[Record]) -> list[OptionItem]:
        """Each record's prompt and option token ids; a long prompt is cut so that the longest
        option fits ``max_length`` (every option sees the same prompt).

        An ``sft`` option is the answer as the chat template writes it, end-of-turn marker
        (or, without a template, EOS) included: a chat model's answer ends there, and it
        tells a complete option from the prefix of a longer one. A ``cpt`` option (cloze) is
        raw text continuing the prompt (:meth:`Encoder.cloze_ids`), without EOS, as
        lm-evaluation-harness scores log-likelihoods. The token counts (the divisor of
        ``eval.length_normalize``) count what is scored: the end-of-turn tokens for sft."""
        key = self._subset_key(stage, "options", records)  # routing may pick subsets
        if key not in self._cache:
            # a raw-text stage (cpt): options continue the prompt as is
            cloze = get_kind(stage.kind).raw_text
            items, cut = [], []
            for rec in records:
                item, was_cut = self._option_item(rec, cloze)
                items.append(item)
                cut.append(was_cut)
            self._note_truncation(stage, records, cut)
            self._cache[key] = items
        return self._cache[key]

    def _option_item(self, rec: Record, cloze: bool) -> tuple[OptionItem, bool]:
        """One record's item (see :meth:`_option_items`) and whether it was cut."""
        enc = self.encoder
        if cloze:
            pixels = None
            prompt_ids = enc.cloze_prompt_ids(rec.prompt)
            whole = [enc.cloze_ids(rec.prompt, o)[1] for o in rec.options]
        else:
            prompt_ids, pixels = enc.prompt_inputs(rec)
            whole = [enc.ids(enc.response_text(rec, o)) for o in rec.options]
        options = [o[: enc.max_length - 1] for o in whole]
        room = enc.max_length - max(len(o) for o in options)
        fitted = (enc.cut(prompt_ids, room) if cloze else
                  enc.fit_prompt(rec, prompt_ids, room, pixels))
        return OptionItem(fitted, options, pixels), fitted != prompt_ids or options != whole

    def option_accuracy(self, model, stage: Stage, records: list[Record]
                        ) -> list[tuple[float, str, dict[str, Any]]]:
        """Per record (1.0 or 0.0, the option picked, its sample): the most likely label option
        checked against the answers. The sample has every option's summed log-likelihood and
        token count (ranked by their ratio under ``eval.length_normalize``)."""
        items = self._option_items(stage, records)
        scored = self._option_logprobs(model, items, f"eval {stage.name}")
        normalize = self.cfg.length_normalize
        out = []
        for rec, per_option in zip(records, scored):
            values = [lp / n if normalize else lp for lp, n in per_option]
            picked = rec.options[max(range(len(values)), key=values.__getitem__)]
            out.append((exact_match(picked, rec.answers), picked, {
                "prompt": rec.prompt, "options": rec.options, "chosen": picked,
                "loglikelihoods": [lp for lp, _ in per_option],
                "tokens": [n for _, n in per_option], "answers": rec.answers}))
        return out

    def _option_logprobs(self, model, items: list[OptionItem], desc: str
                         ) -> list[list[tuple[float, int]]]:
        """Every item's (summed log-likelihood, token count) per option."""
        # one batch holds records with the same number of options, similar prompt lengths
        order = sorted(range(len(items)), key=lambda i: (len(items[i].options),
                                                         len(items[i].prompt), i))
        out: list[list[tuple[float, int]]] = [[] for _ in items]
        bar = self._bar(len(items), desc)
        s = 0
        while s < len(order):
            n_opt = len(items[order[s]].options)
            idx = [i for i in order[s:s + self.cfg.batch_size]
                   if len(items[i].options) == n_opt]
            batch = [items[i] for i in idx]
            if any(it.pixels is not None for it in batch) and not cached_option_scoring(model):
                scored = self._options_as_sequences(model, batch)
            else:
                scored = score_options(model, batch, self.encoder.pad_id, self.acc.device,
                                       self.acc.autocast)
            for i, per_option in zip(idx, scored):
                out[i] = [(float(lp), int(n)) for lp, n in per_option]
            s += len(idx)
            bar.update(len(idx))
        bar.close()
        return out

    def _options_as_sequences(self, model, items: list[OptionItem]
                              ) -> list[list[tuple[float, int]]]:
        """:func:`score_options` without the shared-prompt cache: each option as a whole
        sequence with the image (vision-language models whose positions are not plain)."""
        examples = [Encoded(it.prompt + o, [IGNORE] * len(it.prompt) + o, pixels=it.pixels)
                    for it in items for o in it.options]
        lp = self._sequence_logprobs(model, examples, "options", normalize=False, bar=False)
        k = len(items[0].options)
        return [[(lp[i * k + j], len(o)) for j, o in enumerate(it.options)]
                for i, it in enumerate(items)]
