"""Self-Synthesized Rehearsal (SSR; Huang et al., ACL 2024): rehearse earlier stages on instances
the model synthesises itself from a few kept demonstrations.

The paper's three steps, run before every stage t > 1 for each earlier stage j < t:

1. **In-context instance synthesis with the base LLM.** A prompt holds stage j's task header and
   ``shots`` of its kept demonstrations as ``Input: x / Output: y`` pairs and ends in ``Input:``;
   the *base* model completes it (raw text, no chat template, as the authors' "vanilla" template)
   and the text up to the next ``Output:`` is a new input. Prompts cycle through every ordered
   ``shots``-permutation of the demonstrations in a seeded order (the authors enumerate them).
   Under LoRA the base model is the current model inside PEFT's ``disable_adapter()``; under full
   fine-tuning ``input_model: base`` keeps a frozen CPU copy of the model taken at ``setup``
   (moved to the device only while it generates); ``input_model: latest`` uses the current model.
2. **Output refinement with the latest LLM.** The current model (the end of stage t-1: the
   strategy acts before stage t trains) answers every synthetic input greedily through the run's
   chat template, exactly as evaluation prompts; the base model's own outputs are discarded.
3. **Diverse selection.** Every refined instance (prompt + answer) is embedded as the mean of the
   latest model's last hidden state over its tokens, L2-normalised, clustered by a seeded,
   hand-written k-means (:mod:`everlearn.strategies.common.kmeans`) and the instances nearest the
   centroids are kept: ``n_clusters`` defaults to the number to keep, i.e. one per cluster; with
   fewer clusters each contributes in proportion to its size (the authors' selection script).
   The candidate pool is ``ceil(candidates * n)`` for ``n`` kept instances.

The selected instances (records with ``task`` = stage j's task, ``meta.ssr_stage`` = j) are mixed
into stage t's training data: ``round(ratio * n_train)`` in all, split evenly over the earlier
stages (remainder to the earliest), or ``per_stage`` each.

Adaptations, stated: the paper's demonstrations are the few labelled examples each task ships
with; here ``demos`` training records of each finished stage are drawn by a seeded RNG and stored
as JSON records in the strategy state (that, the task template and the longest answer length are
all that is kept). Instruction records have no separate "input" field, so the input is the part of
the prompt that varies across the stage (the template prefix/suffix split shared with
pseudo-replay); the prefix (for SuperNI: the definition) heads the prompt. Sampling uses the
authors' nucleus settings (``top_p`` 0.6, ``temperature`` 0.9; ``temperature: 0`` decodes
greedily) from a torch RNG seeded by the run seed and the stage, so a resumed run synthesises the
same instances. Empty inputs, empty answers, duplicates and verbatim copies of a demonstration are
dropped before selection (the authors' parser filters), so a stage gets *up to* its share. A text
(cpt) stage keeps document openings as demonstrations, the base model writes a new document, and
that text is the instance (there is no output to refine). The paper generates once per stage
offline; here synthesis runs inside ``train_data`` with bounded lengths (``max_input_tokens``,
``max_answer_tokens``), batched with a KV cache; an in-context prompt longer than
``train.max_length`` tokens loses its beginning (the demonstrations nearest ``Input:`` stay).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from everlearn.data.mixing import as_kind
from everlearn.data.records import Record
from everlearn.evaluation.generation import decode_batched
from everlearn.stages import get_kind
from everlearn.strategies.base import Strategy
from everlearn.strategies.common.adapters import base_model_only
from everlearn.strategies.common.buffer import (
    device_of,
    eval_mode,
    generate,
    record_batch,
    seeded_torch,
    stage_rng,
    torch_seed,
)
from everlearn.strategies.common.kmeans import select_diverse
from everlearn.strategies.pseudo_replay import even_split, middle, split_template

DEMO_CHARS = 300  # a text stage's demonstrations are document openings of this many characters


@dataclass
class SSROptions:
    demos: int = field(default=4, metadata={
        "help": "Training records kept per finished stage as in-context demonstrations "
                "(the authors keep 4 per task)."})
    shots: int = field(default=2, metadata={
        "help": "Demonstrations per in-context synthesis prompt (authors: 2)."})
    ratio: float = field(default=0.2, metadata={
        "help": "Synthetic instances rehearsed per new training example, split evenly over "
                "the earlier stages."})
    per_stage: int | None = field(default=None, metadata={
        "help": "A fixed number of synthetic instances per earlier stage (instead of ratio)."})
    candidates: float = field(default=4.0, metadata={
        "help": "Instances synthesised per instance kept: the pool k-means selects from."})
    n_clusters: int | None = field(default=None, metadata={
        "help": "k-means clusters (default: one per instance kept, the nearest its centroid)."})
    input_model: str = field(default="base", metadata={
        "help": "'base' (the paper: inputs from the untrained model; LoRA: adapters disabled, "
                "full fine-tuning: a frozen CPU copy) or 'latest'."})
    top_p: float = field(default=0.6, metadata={
        "help": "Nucleus sampling of synthetic inputs (authors: 0.6)."})
    temperature: float = field(default=0.9, metadata={
        "help": "Sampling temperature of synthetic inputs (authors: 0.9; 0 = greedy)."})
    max_input_tokens: int = field(default=64, metadata={
        "help": "Longest synthetic input (or document), in tokens."})
    max_answer_tokens: int | None = field(default=None, metadata={
        "help": "Longest refined output (default: the stage's longest training answer + 4)."})

    def check(self) -> tuple[str, str] | None:
        """(field, message) for the first invalid option, else None."""
        for name in ("demos", "shots", "max_input_tokens"):
            if getattr(self, name) < 1:
                return name, f"expected an integer >= 1, got {getattr(self, name)}"
        if self.ratio < 0:
            return "ratio", f"expected a number >= 0, got {self.ratio}"
        if self.per_stage is not None and self.per_stage < 0:
            return "per_stage", f"expected an integer >= 0 or null, got {self.per_stage}"
        if self.candidates < 1:
            return "candidates", f"expected a number >= 1, got {self.candidates}"
        if self.n_clusters is not None and self.n_clusters < 1:
            return "n_clusters", f"expected an integer >= 1 or null, got {self.n_clusters}"
        if self.input_model not in ("base", "latest"):
            return "input_model", f"expected 'base' or 'latest', got {self.input_model!r}"
        if not 0 < self.top_p <= 1:
            return "top_p", f"expected 0 < x <= 1, got {self.top_p}"
        if self.temperature < 0:
            return "temperature", f"expected a number >= 0, got {self.temperature}"
        if self.max_answer_tokens is not None and self.max_answer_tokens < 1:
            return "max_answer_tokens", ("expected an integer >= 1 or null, got "
                                         f"{self.max_answer_tokens}")
        return None


# --- pure helpers -------------------------------------------------------------------------
def demo_orders(n_demos: int, shots: int, count: int, rng: random.Random) -> list[tuple]:
    """``count`` demonstration orders: every ordered ``shots``-permutation of the demonstrations
    in a seeded shuffled order, cycled (the SSR authors enumerate the permutations)."""
    if n_demos == 0 or count <= 0:
        return []
    perms = list(itertools.permutations(range(n_demos), min(shots, n_demos)))
    rng.shuffle(perms)
    return [perms[i % len(perms)] for i in range(count)]


def icl_prompt(header: str, demos: list[tuple[str, str | None]], kind: str = "sft") -> str:
    """The raw-text in-context prompt that asks the model for a new input (or document)."""
    parts = [header.strip()] if header.strip() else []
    for x, y in demos:
        if get_kind(kind).raw_text:
            parts.append(f"Text: {x.strip()}")
        else:
            parts.append(f"Input: {x.strip()}\nOutput: {(y or '').strip()}")
    parts.append("Text:" if get_kind(kind).raw_text else "Input:")
    return "\n\n".join(parts)


def parse_input(continuation: str, kind: str = "sft") -> str:
    """The synthetic input in a completion of :func:`icl_prompt`: the text before the model goes
    on to write its output (or the next example)."""
    text = continuation
    markers = (("\nText:",) if get_kind(kind).raw_text
               else ("\nOutput:", "Output:", "\nInput:", "\n\n"))
    for marker in markers:
        cut = text.find(marker)
        if cut >= 0:
            text = text[:cut]
    return text.strip()


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (B, L, H) over the positions where ``mask`` (B, L) is 1."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def describe_stage(stage, records: list[Record], encoder=None) -> dict:
    """What SSR keeps of a finished stage (JSON-able): its template and the kept demos."""
    task = stage.task_id or stage.name
    info = {"index": stage.index, "task": task, "kind": stage.kind, "prefix": "", "suffix": "",
            "system": None, "max_answer_tokens": 16,
            "demos": [r.to_dict() for r in records]}
    if get_kind(stage.kind).raw_text:
        return info
    prompts = [r.prompt for r in stage.train if r.answers]
    prefix, suffix = split_template(prompts)
    info.update(prefix=prefix, suffix=suffix, system=records[0].system if records else None)
    if encoder is not None and prompts:
        info["max_answer_tokens"] = max(len(encoder.ids(r.response))
                                        for r in stage.train if r.answers) + 4
    return info


def header_of(info: dict) -> str:
    """The line that heads a stage's in-context prompt: its template prefix (for SuperNI the
    task definition) when the prompts share one, else the task name."""
    prefix = info["prefix"].strip()
    if get_kind(info["kind"]).raw_text:
        return f'Texts of "{info["task"]}".'
    return prefix if prefix else f'Task: "{info["task"]}".'


# --- the strategy -------------------------------------------------------------------------
class SSR(Strategy):
    name = "ssr"
    summary = "self-synthesised rehearsal: base-model in-context inputs, latest-model outputs, " \
              "k-means selection"
    unsupported_parallel = {"fsdp": "it samples its own training data (untested under FSDP)"}
    paper = ("Huang et al. 2024, Mitigating Catastrophic Forgetting in Large Language Models "
             "with Self-Synthesized Rehearsal (ACL)")
    Options = SSROptions

    def __init__(self, options=None):
        super().__init__(options)
        self.tasks: list[dict] = []  # describe_stage() of every finished stage, in order
        self._base_copy = None  # full fine-tuning + input_model base: the untrained model

    # --- hooks ----------------------------------------------------------------------------
    def setup(self, ctx) -> None:
        super().setup(ctx)
        if self.options.input_model == "base" and not _is_peft(ctx.model):
            # Full fine-tuning overwrites the base weights: keep the untrained model (frozen,
            # on the CPU). On resume setup runs before the weights load, so it is the base too.
            base = copy.deepcopy(ctx.model).to("cpu").eval()
            for p in base.parameters():
                p.requires_grad_(False)
            self._base_copy = base

    def after_stage(self, stage) -> None:
        pool = [r for r in stage.train if (r.text if get_kind(stage.kind).raw_text else r.answers)]
        rng = stage_rng(self.ctx, stage.index, self.name, "demos")
        picked = sorted(rng.sample(range(len(pool)), min(self.options.demos, len(pool))))
        demos = [pool[i] for i in picked]
        if get_kind(stage.kind).raw_text:
            demos = [Record(text=r.text[:DEMO_CHARS], task=r.task) for r in demos]
        encoder = self.ctx.encoder if self.ctx is not None else None
        self.tasks = [t for t in self.tasks if t["index"] != stage.index]
        self.tasks.append(describe_stage(stage, demos, encoder))
        self.tasks.sort(key=lambda t: t["index"])

    def train_data(self, stage, records):
        extra = self.synthesise(stage)
        return records + as_kind(extra, stage.kind) if extra else records

    def buffer_size(self) -> int:
        return sum(len(t["demos"]) for t in self.tasks)

    def state_dict(self):
        return {"meta": {"tasks": self.tasks}, "tensors": {}}

    def load_state_dict(self, state):
        self.tasks = [dict(t) for t in state["meta"].get("tasks", [])]

    # --- the three steps ------------------------------------------------------------------
    def shares(self, stage) -> list[tuple[dict, int]]:
        """(earlier stage, instances to rehearse) for every earlier stage with demonstrations."""
        earlier = [t for t in self.tasks if t["index"] < stage.index and t["demos"]]
        if not earlier:
            return []
        if self.options.per_stage is not None:
            counts = [self.options.per_stage] * len(earlier)
        else:
            counts = even_split(round(self.options.ratio * len(stage.train)), len(earlier))
        return [(t, n) for t, n in zip(earlier, counts) if n > 0]

    def synthesise(self, stage) -> list[Record]:
        """The selected synthetic instances of every earlier stage, in stage order."""
        plan = self.shares(stage)
        if not plan:
            return []
        opts = self.options
        # (1) in-context synthesis of inputs by the base model, all earlier stages in one pass
        prompts, owners = [], []
        for t, n in plan:
            demos = [Record.from_dict(d) for d in t["demos"]]
            pairs = [(r.text, None) if get_kind(t["kind"]).raw_text else
                     (middle(r.prompt, t["prefix"], t["suffix"]), r.response) for r in demos]
            rng = stage_rng(self.ctx, stage.index, self.name, f"orders:{t['index']}")
            for order in demo_orders(len(pairs), opts.shots, math.ceil(opts.candidates * n), rng):
                prompts.append(icl_prompt(header_of(t), [pairs[i] for i in order], t["kind"]))
                owners.append(t["index"])
        seed = torch_seed(self.ctx, stage.index, self.name, "inputs")
        with self._input_model() as model, seeded_torch(seed, device_of(self.ctx)):
            completions = complete(self.ctx, model, prompts, opts.max_input_tokens,
                                   top_p=opts.top_p, temperature=opts.temperature,
                                   batch_size=self._batch())
        out: list[Record] = []
        for t, n in plan:
            inputs = _distinct(
                [parse_input(c, t["kind"]) for c, o in zip(completions, owners)
                 if o == t["index"]],
                exclude={(d["text"] if get_kind(t["kind"]).raw_text else
                          middle(d["prompt"], t["prefix"], t["suffix"])).strip()
                         for d in t["demos"]})
            # (2) the latest model writes the outputs
            candidates = self._refine(t, inputs)
            if not candidates:
                continue
            # (3) k-means on the latest model's mean last hidden states, nearest to centroids
            keep = select_diverse(self.embed(candidates), n, opts.n_clusters,
                                  seed=torch_seed(self.ctx, stage.index, self.name,
                                                  f"kmeans:{t['index']}"))
            out.extend(candidates[i] for i in keep)
        return out

    def _refine(self, info: dict, inputs: list[str]) -> list[Record]:
        meta = {"ssr": True, "ssr_stage": info["index"]}
        if get_kind(info["kind"]).raw_text:
            return [Record(text=x, task=info["task"], meta=dict(meta)) for x in inputs]
        questions = [Record(prompt=info["prefix"] + x + info["suffix"], system=info["system"],
                            task=info["task"], meta=dict(meta)) for x in inputs]
        if not questions:
            return []
        budget = self.options.max_answer_tokens or info["max_answer_tokens"]
        answers = generate(self.ctx, self.ctx.model, questions, budget, sample=False,
                           batch_size=self._batch())
        out = []
        for q, a in zip(questions, answers):
            if a:
                q.answers, q.response = [a], a
                out.append(q)
        return out

    @torch.no_grad()
    def embed(self, records: list[Record]) -> np.ndarray:
        """Mean last hidden state of the latest model over each instance's tokens (n, H)."""
        model, rows = self.ctx.model, []
        bs = self._batch()
        with eval_mode(model):
            for s in range(0, len(records), bs):
                batch = record_batch(self.ctx, records[s:s + bs])
                with self.ctx.autocast():
                    out = model(input_ids=batch["input_ids"],
                                attention_mask=batch["attention_mask"],
                                output_hidden_states=True)
                rows.append(masked_mean(out.hidden_states[-1].float(), batch["attention_mask"]))
        return torch.cat(rows).cpu().double().numpy()

    # --- helpers --------------------------------------------------------------------------
    def _batch(self) -> int:
        cfg = self.ctx.config
        return cfg.eval.batch_size if cfg is not None and hasattr(cfg, "eval") else 8

    @contextlib.contextmanager
    def _input_model(self):
        """The model that writes synthetic inputs: the base model (the paper) or the latest."""
        model = self.ctx.model
        if self.options.input_model == "latest":
            yield model
        elif _is_peft(model):
            with base_model_only(model):
                yield model
        else:
            base = self._base_copy
            base.to(device_of(self.ctx))
            try:
                yield base
            finally:
                base.to("cpu")


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def _distinct(texts: list[str], exclude: set[str]) -> list[str]:
    """Non-empty texts, first occurrence only, none equal to a demonstration."""
    seen, out = set(exclude), []
    for t in texts:
        if t and t not in seen:
            seen.add(t)
            out.append(t)
    return out


def complete(ctx, model, prompts: list[str], max_new_tokens: int, *, top_p: float,
             temperature: float, batch_size: int = 8) -> list[str]:
    """Raw-text continuations of ``prompts`` (no chat template); nucleus sampling from torch's
    global RNG (call inside ``seeded_torch``), greedy when ``temperature`` is 0."""
    enc = ctx.encoder
    ids = [enc.cut(enc.start_ids(p), enc.max_length) for p in prompts]
    sampling = (None if temperature == 0 else
                dict(do_sample=True, top_p=top_p, temperature=temperature, top_k=0))
    return decode_batched(model, enc, ids, max_new_tokens, device=device_of(ctx),
                          autocast=ctx.autocast, batch_size=batch_size, sampling=sampling,
                          strip=False)
