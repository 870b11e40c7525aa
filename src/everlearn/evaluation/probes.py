"""General-ability probes (vertical forgetting): how far the model drifts from the base model.

Two built-in probes, chosen with ``eval.general_probes`` and measured on every row of R (base
first), plus lm-evaluation-harness tasks (``eval.lm_eval``, ``lm_eval_probe``) when configured:

* ``kl`` (label-free, any model): the base model's greedy answers to a fixed set of general
  prompts are computed once at the start of the run and cached in ``RUN_DIR/
  general_probes.json``. After every stage the current model is run teacher-forced along those
  answers (batched forward passes; each answer closed by the chat template's end-of-turn
  marker) and the mean per-token ``KL(base || current)`` of the next-token distributions is
  reported (nats per answer token; the base distributions are recomputed from the freshly
  loaded base model when a run resumes, so resuming gives the same numbers), together with
  ``agreement``: the percentage of prompts whose current greedy answer is still exactly the
  base model's.
* ``labelled``: built-in general multiple-choice questions, scored like every accuracy stage
  (options ranked by log-likelihood). Only the questions the base model answers correctly are
  kept (found once, cached in the same file), so the base scores 100 and the score after a
  stage is the share of general knowledge kept.

The prompts and questions were written for this package and are kept apart from the general
instruction data that the ``general_mix`` strategy trains on, so mixing it in cannot leak the
probes into training.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from everlearn.data.encode import IGNORE, Encoded, collate
from everlearn.data.records import Record
from everlearn.evaluation.generation import decode_batched
from everlearn.evaluation.lm_eval_probe import KEY_PREFIX, LmEvalProbe
from everlearn.evaluation.scoring import exact_match
from everlearn.runs.run_dir import write_json
from everlearn.stages.stream import Stage

log = logging.getLogger("everlearn")

CACHE_FILE = "general_probes.json"

GENERAL_PROMPTS: list[str] = [
    "What is the capital of Italy?",
    "How many days are there in a week?",
    "Name a fruit that is yellow.",
    "What is 12 plus 9?",
    "What colour is the sky on a clear day?",
    "Explain in one sentence what a thermometer measures.",
    "Write a short greeting for a birthday card.",
    "What is the opposite of 'cold'?",
    "Give one reason why people exercise.",
    "What do cows drink?",
    "Which season comes after winter?",
    "What is the boiling point of water in Celsius?",
    "Name a musical instrument with strings.",
    "How many hours are in a day?",
    "What is the largest animal on land?",
    "Complete the sentence: The early bird catches the",
    "What does a baker make?",
    "Translate 'hello' into Spanish.",
    "What is 6 times 7?",
    "Why do leaves fall in autumn?",
    "List three things you might pack for a beach trip.",
    "What is the main language spoken in Brazil?",
    "Describe a cat in one sentence.",
    "What shape has three sides?",
    "How do you make a cup of tea?",
    "What is the chemical symbol for gold?",
    "Suggest a name for a pet goldfish.",
    "What is the plural of 'child'?",
    "What do you call a baby dog?",
    "Why is sleep important?",
    "Which planet is known as the Red Planet?",
    "What is 100 divided by 4?",
    "Write one sentence about the ocean.",
    "What tool do you use to cut paper?",
    "What is the first month of the year?",
    "Give an example of a healthy breakfast.",
    "Who was Albert Einstein?",
    "What is a synonym for 'big'?",
    "How many continents are there?",
    "What should you do if you feel thirsty?",
    "What is the freezing point of water in Celsius?",
    "Name a vegetable that is orange.",
    "What does a library lend to people?",
    "Write a polite way to ask for help.",
    "Is the Sun a star or a planet?",
    "What is the square root of 81?",
    "What do bees collect from flowers?",
    "Tell me a fun fact about penguins.",
]

# (question, correct answer, three distractors)
LABELLED_QUESTIONS: list[tuple[str, str, list[str]]] = [
    ("What is the capital of Germany?", "Berlin", ["Madrid", "Rome", "Lisbon"]),
    ("What is the capital of Spain?", "Madrid", ["Berlin", "Vienna", "Oslo"]),
    ("What is the capital of Egypt?", "Cairo", ["Nairobi", "Lagos", "Tunis"]),
    ("What is the capital of Australia?", "Canberra", ["Auckland", "Perth", "Dublin"]),
    ("Which planet is the largest in our solar system?", "Jupiter", ["Mars", "Venus",
                                                                       "Mercury"]),
    ("Which planet is closest to the Sun?", "Mercury", ["Neptune", "Saturn", "Uranus"]),
    ("What gas do humans need to breathe to live?", "oxygen", ["helium", "neon", "argon"]),
    ("What is frozen water called?", "ice", ["steam", "sand", "glass"]),
    ("How many legs does an insect have?", "six", ["four", "eight", "ten"]),
    ("How many sides does a square have?", "four", ["three", "five", "six"]),
    ("How many minutes are in an hour?", "sixty", ["twenty", "forty", "hundred"]),
    ("What is 2 plus 2?", "4", ["3", "5", "22"]),
    ("What is 10 minus 3?", "7", ["6", "8", "13"]),
    ("What is 5 times 5?", "25", ["10", "20", "55"]),
    ("What is half of 50?", "25", ["15", "20", "100"]),
    ("Which animal is known as the king of the jungle?", "the lion", ["the mouse", "the owl",
                                                                        "the frog"]),
    ("Which animal says 'moo'?", "a cow", ["a dog", "a cat", "a duck"]),
    ("Which bird cannot fly and lives in Antarctica?", "the penguin", ["the eagle",
                                                                         "the sparrow",
                                                                         "the parrot"]),
    ("What do bees make?", "honey", ["milk", "silk", "wool"]),
    ("What colour are ripe bananas?", "yellow", ["blue", "purple", "black"]),
    ("What colour is grass?", "green", ["red", "white", "pink"]),
    ("Which season is the coldest?", "winter", ["summer", "spring", "autumn"]),
    ("Which ocean is the largest?", "the Pacific Ocean", ["the Arctic Ocean",
                                                          "the Indian Ocean",
                                                          "the Southern Ocean"]),
    ("What is the opposite of 'hot'?", "cold", ["warm", "loud", "fast"]),
    ("What is the opposite of 'up'?", "down", ["left", "over", "near"]),
    ("What is the plural of 'mouse'?", "mice", ["mouses", "meese", "mousen"]),
    ("What do plants need from the Sun to grow?", "light", ["sound", "salt", "plastic"]),
    ("Who wrote 'Hamlet'?", "William Shakespeare", ["Charles Darwin", "Isaac Newton",
                                                    "Pablo Picasso"]),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci", ["Vincent van Gogh", "Claude Monet",
                                                         "Salvador Dali"]),
    ("What is the chemical symbol for water?", "H2O", ["CO2", "NaCl", "O3"]),
    ("What organ do humans use to see?", "the eyes", ["the ears", "the lungs", "the knees"]),
    ("What organ pumps blood around the body?", "the heart", ["the liver", "the skin",
                                                              "the stomach"]),
    ("What is the tallest mountain on Earth?", "Mount Everest", ["Mont Blanc",
                                                                 "Mount Fuji",
                                                                 "Table Mountain"]),
    ("In which continent is Kenya?", "Africa", ["Europe", "Asia", "South America"]),
    ("Which language is mainly spoken in Mexico?", "Spanish", ["French", "German",
                                                               "Japanese"]),
    ("How many days are in a normal year?", "365", ["300", "366", "400"]),
    ("What do you use to write on a blackboard?", "chalk", ["soap", "butter", "ice"]),
    ("What instrument has black and white keys?", "the piano", ["the drum", "the flute",
                                                                "the violin"]),
    ("What is the main ingredient of bread?", "flour", ["sugar", "rice", "cheese"]),
    ("Which is the fastest land animal?", "the cheetah", ["the turtle", "the cow",
                                                          "the snail"]),
]


def labelled_records() -> list[Record]:
    """The labelled questions as accuracy records (options listed in a fixed order)."""
    out = []
    for i, (question, answer, distractors) in enumerate(LABELLED_QUESTIONS):
        options = sorted([answer, *distractors], key=str.lower)
        prompt = f"{question} Answer with one of: {', '.join(options)}."
        out.append(Record(prompt=prompt, answers=[answer], options=options,
                          task="general", meta={"id": i}))
    return out


class GeneralProbes:
    """The configured general probes of one run, with the base model's reference answers."""

    def __init__(self, kinds: list[str], encoder, evaluator, accelerator, max_new_tokens: int,
                 batch_size: int):
        self.kinds = list(kinds)
        self.encoder = encoder
        self.evaluator = evaluator
        self.acc = accelerator
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.answers: list[str] = []
        self.kept: list[int] = []
        self.n_labelled_total = len(LABELLED_QUESTIONS)
        self._examples: list[Encoded] = []
        self._base_logp: list[torch.Tensor] = []
        self._labelled_stage: Stage | None = None
        self.lm_eval: LmEvalProbe | None = None

    # --- setup (once per process, before the base row) -------------------------------------
    @classmethod
    def prepare(cls, eval_cfg, run_dir: str | Path, model, encoder, evaluator,
                accelerator) -> GeneralProbes:
        """Probes for ``eval_cfg.general_probes``; base answers and kept questions come from
        ``RUN_DIR/general_probes.json`` when it exists, else from ``model`` (the base model),
        and are written there. ``model`` must still be the base model."""
        probes = cls(eval_cfg.general_probes, encoder, evaluator, accelerator,
                     eval_cfg.general_max_new_tokens, eval_cfg.batch_size)
        path = Path(run_dir) / CACHE_FILE
        cache = _read_cache(path)
        changed = False
        if "kl" in probes.kinds:
            kl = cache.get("kl")
            if (not isinstance(kl, dict) or kl.get("prompts") != GENERAL_PROMPTS
                    or kl.get("max_new_tokens") != probes.max_new_tokens):
                kl = {"prompts": GENERAL_PROMPTS, "max_new_tokens": probes.max_new_tokens,
                      "answers": probes.base_answers(model)}
                cache["kl"], changed = kl, True
            probes.answers = list(kl["answers"])
            probes._examples = probes._answer_examples()
            probes._base_logp = probes._answer_logprobs(model)
        if "labelled" in probes.kinds:
            lab = cache.get("labelled")
            if (not isinstance(lab, dict)
                    or lab.get("questions") != [q for q, _, _ in LABELLED_QUESTIONS]):
                lab = {"questions": [q for q, _, _ in LABELLED_QUESTIONS],
                       "kept": probes.base_correct(model)}
                cache["labelled"], changed = lab, True
            probes.kept = [int(i) for i in lab["kept"]]
            records = labelled_records()
            probes._labelled_stage = _probe_stage("general-labelled",
                                                  [records[i] for i in probes.kept])
        if changed:
            write_json(path, cache)
        if eval_cfg.lm_eval.tasks:
            probes.lm_eval = LmEvalProbe(eval_cfg.lm_eval, encoder.tok, eval_cfg.batch_size,
                                         encoder.max_length, accelerator.device)
        return probes

    def base_answers(self, model) -> list[str]:
        """The base model's greedy answers to the general prompts (computed once per run)."""
        return self._greedy(model)

    def base_correct(self, model) -> list[int]:
        """Indices of the labelled questions the base model answers correctly."""
        score = self.evaluator.score(model, _probe_stage("general-labelled-all",
                                                         labelled_records()))
        return [i for i, (pred, (_, answer, _)) in
                enumerate(zip(score.predictions, LABELLED_QUESTIONS))
                if exact_match(pred, [answer])]

    # --- after every stage ---------------------------------------------------------------
    @torch.no_grad()
    def measure(self, model) -> dict[str, float | None]:
        """``kl`` and ``agreement`` (with the kl probe), ``labelled`` (accuracy on the kept
        questions; None when the base model answered none correctly)."""
        out: dict[str, float | None] = {}
        if "kl" in self.kinds:
            out["kl"] = self._mean_kl(model)
            current = self._greedy(model)
            same = sum(c == a for c, a in zip(current, self.answers))
            out["agreement"] = 100.0 * same / max(1, len(self.answers))
        if "labelled" in self.kinds:
            stage = self._labelled_stage
            out["labelled"] = (self.evaluator.score(model, stage).score
                               if stage is not None and stage.test else None)
        if self.lm_eval is not None:
            out.update(self.lm_eval.measure(model))
        return out

    def info(self) -> dict[str, Any]:
        """Sizes of the probe sets, for results.json."""
        out: dict[str, Any] = {}
        if "kl" in self.kinds:
            out["kl_prompts"] = len(self.answers)
            out["kl_tokens"] = int(sum(t.shape[0] for t in self._base_logp))
        if "labelled" in self.kinds:
            out["labelled_kept"] = len(self.kept)
            out["labelled_total"] = self.n_labelled_total
        if self.lm_eval is not None:
            out["lm_eval_metrics"] = dict(self.lm_eval.metrics)
        return out

    def restore(self, results: dict[str, Any]) -> None:
        """What a resumed run cannot measure again: the harness metric kept per task."""
        if self.lm_eval is not None:
            for key, entry in ((results.get("general") or {}).items()):
                if key.startswith(KEY_PREFIX) and isinstance(entry, dict) and entry.get("metric"):
                    self.lm_eval.metrics.setdefault(key[len(KEY_PREFIX):], entry["metric"])

    # --- internals -------------------------------------------------------------------------
    def _prompt_ids(self) -> list[list[int]]:
        enc = self.encoder
        records = [Record(prompt=p) for p in GENERAL_PROMPTS]
        return [enc.fit_prompt(r, enc.prompt_inputs(r)[0], enc.max_length, None)
                for r in records]

    def _greedy(self, model) -> list[str]:
        return decode_batched(model, self.encoder, self._prompt_ids(), self.max_new_tokens,
                              device=self.acc.device, autocast=self.acc.autocast,
                              batch_size=self.batch_size)

    def _answer_examples(self) -> list[Encoded]:
        """Prompt + base answer as the chat template closes it (end-of-turn marker included, so
        an empty answer still has the position where the base model chose to stop)."""
        enc = self.encoder
        return [enc.encode_pair(prompt_ids, enc.ids(enc.response_text(Record(prompt=p), answer)))
                for p, prompt_ids, answer in zip(GENERAL_PROMPTS, self._prompt_ids(),
                                                 self.answers)]

    def _answer_logprobs(self, model) -> list[torch.Tensor]:
        """Log next-token distributions at every answer position, one CPU tensor
        ``[tokens, vocab]`` per batch (batches in a fixed order)."""
        model.eval()
        out = []
        for s in range(0, len(self._examples), self.batch_size):
            batch = {k: v.to(self.acc.device) for k, v in
                     collate(self._examples[s:s + self.batch_size],
                             self.encoder.pad_id).items()}
            with self.acc.autocast():
                logits = model(input_ids=batch["input_ids"],
                               attention_mask=batch["attention_mask"]).logits
            mask = batch["labels"][:, 1:] != IGNORE
            out.append(torch.log_softmax(logits[:, :-1].float()[mask], dim=-1).cpu())
        return out

    def _mean_kl(self, model) -> float | None:
        """Mean over answer tokens of KL(base || current) = sum_v p(v) (log p(v) - log q(v))."""
        current = self._answer_logprobs(model)
        total, n = 0.0, 0
        for base, cur in zip(self._base_logp, current):
            total += float((base.exp() * (base - cur)).sum())
            n += base.shape[0]
        return max(0.0, total / n) if n else None


def _probe_stage(name: str, records: list[Record]) -> Stage:
    return Stage(index=0, name=name, kind="sft", metric="accuracy", train=[], test=records)


def _read_cache(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        log.warning("%s: unreadable; recomputing the general probes' base answers", path)
        return {}
    return data if isinstance(data, dict) else {}


def general_sections(rows: list[dict[str, float | None]],
                     info: dict[str, Any]) -> dict[str, Any]:
    """results.json entries for the probe values of every R row (base row first).

    ``general``: per probe (``agreement``, ``labelled``, ``lm_eval/<task>``) the score on every
    row and its delta to the base row, in percent, higher is better; the mean of the final
    deltas is the run's general-ability delta. ``general_kl``: the mean per-token
    KL(base || current) on every row, kept apart because it is a distance (0 = unchanged), not
    a score.
    """
    general: dict[str, Any] = {}
    harness = sorted(k for k in (rows[0] if rows else {}) if k.startswith(KEY_PREFIX))
    sizes = {"agreement": "kl_prompts", "labelled": "labelled_kept"}
    for key in ("agreement", "labelled", *harness):
        if not rows or key not in rows[0]:
            continue
        scores = [r.get(key) for r in rows]
        base = scores[0]
        delta = [None if s is None or base is None else s - base for s in scores]
        general[key] = {"scores": scores, "delta": delta}
        if key in sizes:
            general[key]["n"] = info.get(sizes[key])
        else:
            general[key]["metric"] = (info.get("lm_eval_metrics") or {}).get(
                key[len(KEY_PREFIX):])
    out: dict[str, Any] = {"general": general} if general else {}
    if rows and "kl" in rows[0]:
        out["general_kl"] = {
            "scores": [r.get("kl") for r in rows], "prompts": info.get("kl_prompts"),
            "tokens": info.get("kl_tokens"),
            "note": "mean per-token KL(base || current) in nats along the base model's greedy "
                    "answers; 0 = the base model's distributions"}
    if "labelled_total" in info:
        general.setdefault("labelled", {})["total"] = info["labelled_total"]
    return out


def rows_from_results(results: dict[str, Any], n_rows: int) -> list[dict[str, float | None]]:
    """The probe values of the first ``n_rows`` rows back from results.json (for resume)."""
    general = results.get("general") or {}
    kl = (results.get("general_kl") or {}).get("scores")
    rows: list[dict[str, float | None]] = []
    for i in range(n_rows):
        row: dict[str, float | None] = {}
        for key in [k for k in general if k in ("agreement", "labelled")
                    or k.startswith(KEY_PREFIX)]:
            scores = (general.get(key) or {}).get("scores")
            if isinstance(scores, list) and i < len(scores):
                row[key] = scores[i]
        if isinstance(kl, list) and i < len(kl):
            row["kl"] = kl[i]
        rows.append(row)
    return rows
