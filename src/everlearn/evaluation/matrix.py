"""Fill the accuracy matrix: score the current model on every stage's test set.

Scorers: ``accuracy`` ranks each record's label options by log-likelihood in batched forward
passes (no decoding); ``exact_match`` and ``rouge_l`` score batched greedy generations (KV cache
on, ``max_new_tokens`` derived from the test answers unless set); ``perplexity`` is exp of the
mean token loss on the test text; ``preference_accuracy`` scores held-out preference pairs by
their implicit reward margin (see ``Evaluator.begin_phase``); ``reliability`` scores an edit
stage's edits teacher-forced, with generalisation and locality beside it (see
:mod:`everlearn.stages.edit`). Scores are in [0, 100] except perplexity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from everlearn.config import EvalConfig
from everlearn.data.encode import IGNORE, Encoded, Encoder, collate, image_inputs
from everlearn.data.records import Record
from everlearn.evaluation.generation import decode_batched
from everlearn.evaluation.option_scoring import OptionItem, score_options
from everlearn.evaluation.scoring import can_still_match, exact_match, rouge_l
from everlearn.parallel import distributed as dist
from everlearn.parallel import fsdp
from everlearn.stages import get_kind
from everlearn.stages.align import preference_accuracy
from everlearn.stages.stream import Stage


@dataclass
class StageScore:
    score: float
    n: int
    predictions: list[str]
    side: dict[str, float] = field(default_factory=dict)  # per-stage side metrics of this row


SUBSETS_KEPT = 8  # cached test-set parts per stage and scorer (see Evaluator._subset_key)


def _by_length(items: list, key) -> list[int]:
    return sorted(range(len(items)), key=lambda i: -key(items[i]))


class Evaluator:
    """Scores stages with one model; tokenised test sets are cached across rows of R."""

    def __init__(self, accelerator, encoder: Encoder, cfg: EvalConfig, quiet: bool = False):
        self.acc = accelerator
        self.encoder = encoder
        self.cfg = cfg
        self.quiet = quiet
        self._cache: dict[tuple, object] = {}
        self._subsets: dict[tuple, list[tuple]] = {}  # (stage, kind) -> its cached subset keys
        # preference_accuracy: per stage, log pi(chosen) - log pi(rejected) of every test pair
        # under the stage's reference model, and under the model scored last
        self.pref_reference: dict[str, list[float]] = {}
        self.pref_last: dict[str, list[float]] = {}
        # edit stages: per stage, per edit, per locality prompt, the base model's top-1 tokens
        # along the prompt's answer (see prepare_edits)
        self.edit_reference: dict[str, list[list[list[int]]]] = {}
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

    @torch.no_grad()
    def score(self, model, stage: Stage, router=None) -> StageScore:
        model.eval()
        if get_kind(stage.kind).edits:
            return self._edit(model, stage, router)
        groups = _route(stage.test, router)
        results: list[tuple[float, str]] = [(0.0, "")] * len(stage.test)
        logprob, tokens = 0.0, 0  # perplexity pools the tokens of every adapter group
        rank, world = self._split(model)
        mine: dict[int, tuple[float, str]] = {}  # the records this rank scored
        for adapter, idx in groups.items():
            if adapter is not None:
                self._activate(model, adapter)
            if stage.metric == "perplexity":  # packs every record; ranks share the blocks
                lp, n = self._log_likelihood(model, stage, [stage.test[i] for i in idx], world)
                logprob, tokens = logprob + lp, tokens + n
                continue
            idx = idx[rank::world]  # several processes: each scores its share of the records
            if not idx:
                continue
            records = [stage.test[i] for i in idx]
            for i, res in zip(idx, self._score_records(model, stage, records)):
                results[i] = res
                mine[i] = res
        if world > 1:  # every rank ends with the whole row
            if stage.metric == "perplexity":
                logprob, tokens = dist.sum_values([logprob, tokens], self.acc.device)
            else:
                for part in dist.gather_objects(mine):
                    for i, res in part.items():
                        results[i] = res
        elif self.acc.num_processes > 1:  # FSDP: every rank scored everything; keep rank 0's
            results, logprob, tokens = dist.broadcast_object((results, logprob, tokens))
        if stage.metric == "preference_accuracy":
            return self._preference(stage, [r[0] for r in results])
        if stage.metric == "perplexity":
            value = math.exp(-logprob / max(1, tokens))
        else:
            value = 100.0 * sum(r[0] for r in results) / max(1, len(results))
        return StageScore(value, len(stage.test), [r[1] for r in results])

    def _split(self, model) -> tuple[int, int]:
        """(rank, world) for sharding test records: each process scores its share, except
        under FSDP, where every forward pass gathers weights collectively, so every process
        makes the same calls on every record (replicated, not faster; no rank waits forever
        for another's batch)."""
        if fsdp.is_sharded(model):
            return 0, 1
        return self.acc.process_index, self.acc.num_processes

    def _activate(self, model, choice: str) -> None:
        if self.activate is not None:
            self.activate(model, choice)
        else:
            model.set_adapter(choice)

    def _score_records(self, model, stage, records):
        if stage.metric == "accuracy":
            return self._accuracy(model, stage, records)
        if stage.metric == "preference_accuracy":
            return [(d, "") for d in self._pair_logratios(model, stage, records)]
        preds = self._generate(model, stage, records)
        fn = exact_match if stage.metric == "exact_match" else rouge_l
        return [(fn(p, r.answers), p) for p, r in zip(preds, records)]

    # --- accuracy by option log-likelihood ------------------------------------------------
    def _option_items(self, stage, records) -> list[OptionItem]:
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
            enc, items, cut = self.encoder, [], []
            # a raw-text stage (cpt): options continue the prompt as is
            cloze = get_kind(stage.kind).raw_text
            for rec in records:
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
                items.append(OptionItem(fitted, options, pixels))
                cut.append(fitted != prompt_ids or options != whole)
            self._note_truncation(stage, records, cut)
            self._cache[key] = items
        return self._cache[key]

    def _note_truncation(self, stage: Stage, records: list[Record], cut: list[bool]) -> None:
        """Which test records were cut to ``max_length``; the share over the whole test set
        goes to ``Encoder.truncated`` (records routed to several adapters count once)."""
        seen = self._truncated.setdefault(stage.name, {})
        seen.update({id(r): c for r, c in zip(records, cut)})
        self.encoder.note_truncation(stage.name, "test", list(seen.values()))

    def _accuracy(self, model, stage, records):
        items = self._option_items(stage, records)
        normalize = self.cfg.length_normalize
        # one batch holds records with the same number of options, similar prompt lengths
        order = sorted(range(len(items)), key=lambda i: (len(items[i].options),
                                                         len(items[i].prompt), i))
        choice = [0] * len(items)
        bar = self._bar(len(items), f"eval {stage.name}")
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
                values = [lp / n if normalize else lp for lp, n in per_option]
                choice[i] = max(range(len(values)), key=values.__getitem__)
            s += len(idx)
            bar.update(len(idx))
        bar.close()
        out = []
        for i, rec in enumerate(records):
            picked = rec.options[choice[i]]
            out.append((exact_match(picked, rec.answers), picked))
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

    def _sequence_logprobs(self, model, examples: list[Encoded], desc: str,
                           normalize: bool | None = None, bar: bool = True) -> list[float]:
        """Summed (or mean) log-probability of each example's labelled tokens."""
        normalize = self.cfg.length_normalize if normalize is None else normalize
        order = _by_length(examples, lambda e: len(e.input_ids))
        scores = [0.0] * len(examples)
        bs = self.cfg.batch_size
        bar = self._bar(len(examples) if bar else 0, desc)
        for s in range(0, len(order), bs):
            idx = order[s:s + bs]
            batch = {k: v.to(self.acc.device) for k, v in
                     collate([examples[i] for i in idx], self.encoder.pad_id).items()}
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

    # --- preference accuracy ------------------------------------------------------------
    def _pair_logratios(self, model, stage, records) -> list[float]:
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

    def _preference(self, stage: Stage, logratios: list[float]) -> StageScore:
        """Preference accuracy: a pair counts when its implicit reward margin
        ``(log pi(c) - log ref(c)) - (log pi(r) - log ref(r))`` is above 0, half when it is
        exactly 0 (:func:`everlearn.stages.align.credit`). The first model scored, the base row,
        is every stage's reference until ``begin_phase`` moves it, so the base row scores 50."""
        reference = self.pref_reference.setdefault(stage.name, list(logratios))
        self.pref_last[stage.name] = list(logratios)
        margins = [d - ref for d, ref in zip(logratios, reference)]
        return StageScore(preference_accuracy(margins), len(margins),
                          [f"{m:+.4f}" for m in margins],
                          {"mean_margin": sum(margins) / max(1, len(margins))})

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

    # --- perplexity -------------------------------------------------------------------
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
        bs = self.cfg.batch_size
        for s in range(0, len(examples), bs):
            batch = {k: v.to(self.acc.device) for k, v in
                     collate(examples[s:s + bs], self.encoder.pad_id).items()}
            lp, counts = self._token_logprobs(model, batch)
            total_lp += sum(lp)
            total_n += sum(counts)
        return total_lp, total_n

    # --- greedy generation ------------------------------------------------------------
    def max_new_tokens(self, stage: Stage) -> int:
        if self.cfg.max_new_tokens is not None:
            return self.cfg.max_new_tokens
        key = (stage.name, "max_new")
        if key not in self._cache:
            longest = max((len(self.encoder.ids(a)) for r in stage.test for a in r.answers),
                          default=16)
            self._cache[key] = longest + 4
        return self._cache[key]

    def _generate(self, model, stage, records: list[Record]) -> list[str]:
        prompts, images, cut = [], [], []
        for r in records:
            ids, pixels = self.encoder.prompt_inputs(r)
            prompts.append(self.encoder.fit_prompt(r, ids, self.encoder.max_length, pixels))
            images.append(pixels)
            cut.append(prompts[-1] != ids)
        self._note_truncation(stage, records, cut)
        bar = self._bar(len(records), f"generate {stage.name}")
        # exact match: a row stops once it cannot match any more (its score is 0 either way)
        alive = ((lambda i, text: can_still_match(text, records[i].answers))
                 if stage.metric == "exact_match" else None)
        out = decode_batched(model, self.encoder, prompts, self.max_new_tokens(stage),
                             device=self.acc.device, autocast=self.acc.autocast,
                             batch_size=self.cfg.batch_size, on_batch=bar.update,
                             images=images if any(p is not None for p in images) else None,
                             alive=alive)
        bar.close()
        return out


    # --- edit stages: reliability, generalisation, locality ------------------------------
    @torch.no_grad()
    def prepare_edits(self, model, stages: list[Stage]) -> None:
        """Score the locality prompts of every edit stage with ``model``, the base model
        (before any training or resumed weights): their top-1 tokens along each prompt's answer
        are the reference that locality compares with in every row. The answer is
        ``locality_ground_truth`` when given, else the base model's greedy continuation."""
        model.eval()
        for st in stages:
            if not get_kind(st.kind).edits or st.name in self.edit_reference:
                continue
            enc, owners, greedy = self.encoder, [], []
            examples: list[Encoded | None] = []
            for i, rec in enumerate(st.test):
                for j, (lp, truth) in enumerate(zip(rec.locality_prompt,
                                                    rec.locality_ground_truth)):
                    owners.append((i, j))
                    if truth:
                        examples.append(enc.encode_edit(rec, lp, truth))
                    else:
                        examples.append(None)
                        greedy.append((len(examples) - 1, enc.edit_prompt_ids(rec, lp)))
            if greedy:
                n = min(self.max_new_tokens(st), enc.max_length // 2)
                conts = self._greedy_ids(model, [enc.cut(p, enc.max_length - n)
                                                 for _, p in greedy], n)
                for (k, prompt), cont in zip(greedy, conts):
                    examples[k] = enc.encode_pair(prompt, cont)
            preds = self._argmax_along(model, examples, f"locality reference {st.name}")
            reference: list[list[list[int]]] = [[[] for _ in r.locality_prompt] for r in st.test]
            for (i, j), pred in zip(owners, preds):
                reference[i][j] = pred
            self.edit_reference[st.name] = reference
            self._cache[(st.name, "edit_locality")] = list(zip(owners, examples))

    def _greedy_ids(self, model, prompts: list[list[int]], n: int) -> list[list[int]]:
        """Greedy continuation token ids of each prompt, up to and including a stop token."""
        out = []
        stops = set(self.encoder.stop_ids)
        for s in range(0, len(prompts), self.cfg.batch_size):
            part = prompts[s:s + self.cfg.batch_size]
            batch = collate([Encoded(p, p) for p in part], self.encoder.pad_id, left=True)
            ids = batch["input_ids"].to(self.acc.device)
            with self.acc.autocast():
                gen = model.generate(input_ids=ids,
                                     attention_mask=batch["attention_mask"].to(self.acc.device),
                                     max_new_tokens=n, do_sample=False, use_cache=True,
                                     eos_token_id=self.encoder.stop_ids,
                                     pad_token_id=self.encoder.pad_id)
            for row in gen[:, ids.shape[1]:].tolist():
                cut = next((k + 1 for k, t in enumerate(row) if t in stops), len(row))
                out.append(row[:cut])
        return out

    def _argmax_along(self, model, examples: list[Encoded], desc: str) -> list[list[int]]:
        """Each example's top-1 predicted tokens at its labelled positions (teacher-forced,
        batched by length)."""
        order = _by_length(examples, lambda e: len(e.input_ids))
        out: list[list[int]] = [[] for _ in examples]
        bar = self._bar(len(examples), desc)
        for s in range(0, len(order), self.cfg.batch_size):
            idx = order[s:s + self.cfg.batch_size]
            batch = {k: v.to(self.acc.device) for k, v in
                     collate([examples[i] for i in idx], self.encoder.pad_id).items()}
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

    def _edit(self, model, stage: Stage, router=None) -> StageScore:
        """Reliability (the score), generalisation and locality of an edit stage's edits; see
        :mod:`everlearn.stages.edit` for the definitions."""
        from everlearn.stages.edit import all_hit, edit_metrics

        if stage.name not in self.edit_reference:  # not prepared: this model is the reference
            self.prepare_edits(model, [stage])
        key = (stage.name, "edit_prompts")
        if key not in self._cache:
            items = []  # (which, edit index, prompt index, example)
            for i, rec in enumerate(stage.test):
                items.append(("edit", i, 0, self.encoder.encode_edit(rec, rec.prompt,
                                                                     rec.response)))
                items += [("rephrase", i, j, self.encoder.encode_edit(rec, rp, rec.response))
                          for j, rp in enumerate(rec.rephrase_prompt)]
            self._cache[key] = items
        items = self._cache[key]
        # the locality prompts in the very batches that made the reference (prepare_edits): a
        # model that did not change there gives bit-identical predictions, even under bf16
        loc_items = [("locality", i, j, e) for (i, j), e in
                     self._cache[(stage.name, "edit_locality")]]
        cut = [False] * len(stage.test)
        for _, i, _, ex in items + loc_items:
            cut[i] = cut[i] or ex.truncated
        self._note_truncation(stage, stage.test, cut)
        reference = self.edit_reference[stage.name]
        reliable = [False] * len(stage.test)
        predictions = [""] * len(stage.test)
        general = [[False] * len(r.rephrase_prompt) for r in stage.test]
        local = [[False] * len(r.locality_prompt) for r in stage.test]
        for adapter, idx in _route(stage.test, router).items():
            if adapter is not None:
                self._activate(model, adapter)
            mine = set(idx)
            part = [it for it in items if it[1] in mine]
            local_part = [it for it in loc_items if it[1] in mine]
            preds = self._argmax_along(model, [it[3] for it in part], f"eval {stage.name}")
            preds += self._argmax_along(model, [it[3] for it in local_part],
                                        f"locality {stage.name}")
            for (which, i, j, ex), pred in zip(part + local_part, preds):
                if which == "locality":
                    local[i][j] = all_hit(pred, reference[i][j])
                    continue
                target = [t for t in ex.labels[1:] if t != IGNORE]
                if which == "edit":
                    reliable[i] = all_hit(pred, target)
                    predictions[i] = self.encoder.tok.decode(pred, skip_special_tokens=True)
                else:
                    general[i][j] = all_hit(pred, target)
        side = edit_metrics(reliable, general, local)  # reliability too: pooled by editing
        return StageScore(side["reliability"], len(stage.test), predictions, side)


def cached_option_scoring(model) -> bool:
    """Whether options of image records may be scored on a shared-prompt KV cache with plain
    positions (the LLaVA family); other vision-language models (multimodal rotary positions)
    score each option as a whole sequence."""
    config = getattr(model, "config", None)
    return getattr(config, "model_type", "") in ("llava", "llava_next", "vipllava")


def _route(records: list[Record], router) -> dict[str | None, list[int]]:
    """Group test records by the adapter the strategy routes them to (None: leave as is)."""
    groups: dict[str | None, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(router(r) if router else None, []).append(i)
    return groups
