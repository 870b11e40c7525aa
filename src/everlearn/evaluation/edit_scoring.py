"""Edit stages: reliability (the score), generalisation and locality of their fact edits.

Every metric is judged teacher-forced by top-1 predictions (see :mod:`everlearn.stages.edit`
for the definitions). Locality compares with the base model: :meth:`EditScoring.prepare_edits`
scores the locality prompts once with the model the run started from, and every later row
scores them in the very same batches. In a run that reference is cached in the run directory
(``edit_locality.json``): a resumed run reads it back instead of recomputing it, so it
compares with the very predictions the uninterrupted run compared with.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from everlearn.data.encode import IGNORE, Encoded, collate
from everlearn.evaluation.evaluator_base import EvaluatorBase, StageScore, route
from everlearn.stages import get_kind
from everlearn.stages.edit import all_hit, edit_metrics
from everlearn.stages.stream import Stage

log = logging.getLogger("everlearn")

LOCALITY_CACHE = "edit_locality.json"


class EditScoring(EvaluatorBase):
    """Scores the stages of an ``edits`` kind; keeps the base model's locality reference."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # edit stages: per stage, per edit, per locality prompt, the base model's top-1 tokens
        # along the prompt's answer (see prepare_edits)
        self.edit_reference: dict[str, list[list[list[int]]]] = {}

    @torch.no_grad()
    def prepare_edits(self, model, stages: list[Stage], run_dir: str | Path | None = None
                      ) -> None:
        """Score the locality prompts of every edit stage with ``model``, the base model
        (before any training or resumed weights): their top-1 tokens along each prompt's answer
        are the reference that locality compares with in every row. The answer is
        ``locality_ground_truth`` when given, else the base model's greedy continuation.
        With ``run_dir``, a stage's reference in ``RUN_DIR/edit_locality.json`` (written by an
        earlier start of the run, for the same locality prompts) is used as it is; what is
        computed here is written there."""
        path = Path(run_dir) / LOCALITY_CACHE if run_dir is not None else None
        cache = read_locality_cache(path) if path is not None else {}
        model.eval()
        computed = False
        for st in stages:
            if not get_kind(st.kind).edits or st.name in self.edit_reference:
                continue
            if self._load_reference(st, cache.get(st.name)):
                continue
            self._compute_reference(model, st)
            cache[st.name] = self._reference_entry(st)
            computed = True
        if computed and path is not None:
            from everlearn.runs.run_dir import write_json

            write_json(path, cache)

    def _compute_reference(self, model, st: Stage) -> None:
        """The base model's locality reference of one edit stage (see prepare_edits)."""
        owners, examples = self._locality_examples(model, st)
        preds = self._argmax_along(model, examples, f"locality reference {st.name}")
        reference: list[list[list[int]]] = [[[] for _ in r.locality_prompt] for r in st.test]
        for (i, j), pred in zip(owners, preds):
            reference[i][j] = pred
        self.edit_reference[st.name] = reference
        self._cache[(st.name, "edit_locality")] = list(zip(owners, examples))

    def _reference_entry(self, st: Stage) -> dict[str, Any]:
        """One stage's reference as JSON: what it was made for (the locality prompts and
        answers, the continuation length), the examples scored and the base predictions."""
        items = self._cache[(st.name, "edit_locality")]
        return {"for": locality_key(st, self.max_new_tokens(st)),
                "examples": [[i, j, e.input_ids, e.labels, e.truncated] for (i, j), e in items],
                "reference": self.edit_reference[st.name]}

    def _load_reference(self, st: Stage, entry: Any) -> bool:
        """Take a stage's reference from the run directory's cache when it was made for this
        stage's locality prompts; False: compute it."""
        if not isinstance(entry, dict) or entry.get("for") != locality_key(
                st, self.max_new_tokens(st)):
            return False
        items = [((int(i), int(j)), Encoded(list(ids), list(labels), truncated=bool(cut)))
                 for i, j, ids, labels, cut in entry["examples"]]
        self.edit_reference[st.name] = [[list(p) for p in per_edit]
                                        for per_edit in entry["reference"]]
        self._cache[(st.name, "edit_locality")] = items
        return True

    def _locality_examples(self, model, st: Stage) -> tuple[list[tuple[int, int]], list[Encoded]]:
        """(edit index, locality prompt index) and the example of every locality prompt: along
        its ground truth, else along ``model``'s greedy continuation."""
        enc, owners, greedy = self.encoder, [], []
        examples: list[Encoded | None] = []
        for i, rec in enumerate(st.test):
            for j, (lp, truth) in enumerate(zip(rec.locality_prompt, rec.locality_ground_truth)):
                owners.append((i, j))
                if truth:
                    examples.append(enc.encode_edit(rec, lp, truth))
                else:
                    examples.append(None)
                    greedy.append((len(examples) - 1, enc.edit_prompt_ids(rec, lp)))
        if greedy:
            n = min(self.max_new_tokens(st), enc.max_length // 2)
            conts = self._greedy_ids(model, [enc.cut(p, enc.max_length - n) for _, p in greedy], n)
            for (k, prompt), cont in zip(greedy, conts):
                examples[k] = enc.encode_pair(prompt, cont)
        return owners, examples

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

    def _edit_items(self, stage: Stage) -> list[tuple[str, int, int, Encoded]]:
        """(which, edit index, prompt index, example) of every edit and rephrased prompt, then
        of every locality prompt; the share of edits cut to ``max_length`` is noted."""
        key = (stage.name, "edit_prompts")
        if key not in self._cache:
            items = []
            for i, rec in enumerate(stage.test):
                items.append(("edit", i, 0, self.encoder.encode_edit(rec, rec.prompt,
                                                                     rec.response)))
                items += [("rephrase", i, j, self.encoder.encode_edit(rec, rp, rec.response))
                          for j, rp in enumerate(rec.rephrase_prompt)]
            self._cache[key] = items
        # the locality prompts in the very batches that made the reference (prepare_edits): a
        # model that did not change there gives bit-identical predictions, even under bf16
        loc_items = [("locality", i, j, e) for (i, j), e in
                     self._cache[(stage.name, "edit_locality")]]
        cut = [False] * len(stage.test)
        for _, i, _, ex in self._cache[key] + loc_items:
            cut[i] = cut[i] or ex.truncated
        self._note_truncation(stage, stage.test, cut)
        return self._cache[key] + loc_items

    def score_edits(self, model, stage: Stage, router=None) -> StageScore:
        """Reliability (the score), generalisation and locality of an edit stage's edits; see
        :mod:`everlearn.stages.edit` for the definitions. Each edit's sample has its top-1
        prediction and its hits: reliable, and per rephrased and locality prompt."""
        if stage.name not in self.edit_reference:  # not prepared: this model is the reference
            self.prepare_edits(model, [stage])
        items = self._edit_items(stage)
        reference = self.edit_reference[stage.name]
        reliable = [False] * len(stage.test)
        predictions = [""] * len(stage.test)
        general = [[False] * len(r.rephrase_prompt) for r in stage.test]
        local = [[False] * len(r.locality_prompt) for r in stage.test]
        for adapter, idx in route(stage.test, router).items():
            if adapter is not None:
                self._activate(model, adapter)
            mine = set(idx)
            edits = [it for it in items if it[1] in mine and it[0] != "locality"]
            locs = [it for it in items if it[1] in mine and it[0] == "locality"]
            preds = self._argmax_along(model, [it[3] for it in edits], f"eval {stage.name}")
            preds += self._argmax_along(model, [it[3] for it in locs], f"locality {stage.name}")
            for (which, i, j, ex), pred in zip(edits + locs, preds):
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
        samples = [{"index": i, "prompt": rec.prompt, "target": rec.response,
                    "prediction": predictions[i], "reliable": reliable[i],
                    "rephrase_prompts": rec.rephrase_prompt, "generalisation": general[i],
                    "locality_prompts": rec.locality_prompt, "locality": local[i],
                    "score": 100.0 * reliable[i]} for i, rec in enumerate(stage.test)]
        return StageScore(side["reliability"], len(stage.test), predictions, side, samples)


def locality_key(st: Stage, max_new_tokens: int) -> dict[str, Any]:
    """What a stage's locality reference depends on besides the base model."""
    return {"prompts": [list(r.locality_prompt) for r in st.test],
            "answers": [list(r.locality_ground_truth) for r in st.test],
            "max_new_tokens": max_new_tokens}


def read_locality_cache(path: Path) -> dict[str, Any]:
    """The run directory's locality references ({} when absent or unreadable)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        log.warning("%s: unreadable; recomputing the edit stages' locality reference", path)
        return {}
    return data if isinstance(data, dict) else {}
