"""LAMOL-style pseudo-rehearsal (Sun et al. 2020): the model writes its own replay data.

LAMOL trains one language model both to answer a task and to *generate* the task's inputs after
a task-specific token (loss ``L_QA + lambda * L_gen``, lambda = 0.25); before each new task it
samples ``gamma * n_new`` pseudo-examples of the earlier tasks from itself (gamma = 0.2, split
evenly over the earlier tasks, top-k = 20 sampling) and trains on them with the new task's data.

Adaptation to instruction-tuned LLMs and arbitrary instruction data, precisely:

* **Task token -> task prompt.** Instead of a learned special token, each finished stage keeps
  a compact description in the strategy state: its task id, its instruction *template* (the
  longest prefix and suffix every training prompt shares, cut at word boundaries; for SuperNI
  data that is the definition and the ``Input:``/``Output:`` frame) and the varying part of its
  first ``seeds`` training prompts (the "seed inputs", shown as in-context examples). No other
  training data is kept.
* **Generating inputs.** The generation prompt names the task and lists the seed inputs, then
  asks for one new input; the CURRENT model (at the start of the new stage) completes it by
  top-k sampling (``top_k``, LAMOL's 20) under ``torch.no_grad``, in batches, from a torch RNG
  seeded by the run seed and the stage, so a resumed run writes the same examples. An empty
  generation is re-drawn twice and then replaced by a seed input (so the count is exact).
* **Answering them: a second, greedy generation (a deviation from LAMOL).** LAMOL samples the
  whole pseudo-example in ONE top-k generation after the task's generation token (question,
  answer token, answer) and splits it at the answer token, dropping samples that do not split.
  Here only the input is sampled (above); each pseudo prompt (template prefix + generated input
  + template suffix, under the chat template) is then answered by the same model in a separate
  greedy generation (``max_answer_tokens``), and the pair becomes an instruction record
  attributed to the earlier stage (``task``, ``meta.pseudo_stage``). Why: the generation
  objective below teaches inputs only (the template and chat format already mark where an
  answer starts), and the count stays exact with nothing to drop. The cost: an answer is the
  model's greedy reply to the question, not a sample drawn with it, so pseudo answers are less
  diverse than LAMOL's.
* **Count.** ``round(ratio * n_new)`` pseudo-examples per stage (``n_new`` = the stage's own
  training records), split evenly over the earlier stages (remainder to the earliest), as in
  LAMOL's task-specific-token variant.
* **The generation objective (lambda).** With ``gen_ratio > 0`` each stage also trains the
  model to produce its inputs: ``round(gen_ratio * n_new)`` extra records whose prompt is the
  stage's generation prompt and whose response is the varying part of one of its training
  prompts. This is LAMOL's ``lambda * L_gen`` realised as a share of examples (0.25 like
  LAMOL's lambda), and what makes a small model's generated inputs resemble the task.
* **Text stages.** For a cpt stage the seeds are the beginnings of its first documents, the
  model writes a new document, and that text (no answer) is the pseudo-example.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from everlearn.data.mixing import as_kind
from everlearn.data.records import Record
from everlearn.stages import get_kind
from everlearn.strategies.base import Strategy
from everlearn.strategies.common.buffer import (
    device_of,
    generate,
    seeded_torch,
    stage_rng,
    torch_seed,
)

SEED_CHARS = 300  # a text stage's seed documents are cut to this many characters


@dataclass
class PseudoReplayOptions:
    ratio: float = field(
        default=0.2, metadata={"help": "Pseudo-examples per new training example (LAMOL gamma)."})
    gen_ratio: float = field(
        default=0.25, metadata={"help": "Share of input-generation examples trained per stage "
                                        "(LAMOL lambda; 0 = prompt only)."})
    seeds: int = field(
        default=3, metadata={"help": "Seed inputs kept per stage (in-context examples)."})
    top_k: int = field(default=20, metadata={"help": "Top-k sampling of new inputs (LAMOL: 20)."})
    max_input_tokens: int = field(
        default=48, metadata={"help": "Longest generated input (or document), in tokens."})
    max_answer_tokens: int | None = field(
        default=None, metadata={"help": "Longest pseudo answer (default: the stage's longest "
                                        "training answer + 4)."})

    def check(self) -> tuple[str, str] | None:
        if self.ratio < 0:
            return "ratio", f"expected a number >= 0, got {self.ratio}"
        if not 0 <= self.gen_ratio <= 1:
            return "gen_ratio", f"expected 0 <= x <= 1, got {self.gen_ratio}"
        for name in ("seeds", "top_k", "max_input_tokens"):
            if getattr(self, name) < 1:
                return name, f"expected an integer >= 1, got {getattr(self, name)}"
        if self.max_answer_tokens is not None and self.max_answer_tokens < 1:
            return "max_answer_tokens", f"expected an integer >= 1 or null, got " \
                                        f"{self.max_answer_tokens}"
        return None


# --- pure helpers -------------------------------------------------------------------------
def split_template(prompts: list[str]) -> tuple[str, str]:
    """(prefix, suffix) shared by every prompt, cut so the varying part holds whole words."""
    if not prompts:
        return "", ""
    prefix = os.path.commonprefix(prompts)
    if prefix and not prefix[-1].isspace():
        cut = max(prefix.rfind(c) for c in " \n\t")
        prefix = prefix[:cut + 1]
    rests = [p[len(prefix):] for p in prompts]
    suffix = os.path.commonprefix([r[::-1] for r in rests])[::-1]
    if suffix and not suffix[0].isspace():
        starts = [i for i, c in enumerate(suffix) if c.isspace()]
        suffix = suffix[starts[0]:] if starts else ""
    return prefix, suffix


def middle(prompt: str, prefix: str, suffix: str) -> str:
    """The varying part of ``prompt`` between the template's prefix and suffix."""
    end = len(prompt) - len(suffix) if suffix else len(prompt)
    return prompt[len(prefix):end]


def generation_prompt(task: str, seeds: list[str], kind: str = "sft") -> str:
    """The instruction that asks for a new input (or document) of ``task``.

    The template itself is left out: shown with a placeholder, a long instruction (a SuperNI
    definition) made SmolLM2-135M-Instruct write about the task instead of writing an input.
    """
    what = "input" if get_kind(kind).instructions else "text"
    lines = [f'Task: "{task}". Example {what}s for this task:', ""]
    for i, s in enumerate(seeds, 1):
        lines += [f"Example {i}:", s, ""]
    lines.append(f"Write one new {what} for this task, different from the examples. "
                 f"Reply with the {what} only.")
    return "\n".join(lines)


def even_split(total: int, parts: int) -> list[int]:
    """``total`` split over ``parts`` as evenly as possible, the remainder to the first ones."""
    share, extra = divmod(total, parts)
    return [share + (1 if i < extra else 0) for i in range(parts)]


def describe_stage(stage, n_seeds: int, encoder=None) -> dict:
    """What pseudo-rehearsal keeps of a finished stage (JSON-able)."""
    task = stage.task_id or stage.name
    info = {"index": stage.index, "task": task, "kind": stage.kind, "prefix": "",
            "suffix": "", "seeds": [], "system": None, "max_answer_tokens": 16}
    if get_kind(stage.kind).raw_text:
        info["seeds"] = [r.text[:SEED_CHARS] for r in stage.train[:n_seeds]]
        return info
    prompts = [r.prompt for r in stage.train]
    prefix, suffix = split_template(prompts)
    info.update(prefix=prefix, suffix=suffix,
                seeds=[middle(p, prefix, suffix) for p in prompts[:n_seeds]],
                system=stage.train[0].system if stage.train else None)
    if encoder is not None and stage.train:
        longest = max(len(encoder.ids(r.response)) for r in stage.train)
        info["max_answer_tokens"] = longest + 4
    return info


# --- the strategy -------------------------------------------------------------------------
class PseudoReplay(Strategy):
    name = "pseudo_replay"
    summary = ("LAMOL-style pseudo-rehearsal: the model samples earlier tasks' inputs, then "
               "answers them greedily in a second generation (LAMOL samples question and answer "
               "as one sequence)")
    unsupported_parallel = {"fsdp": "it samples its own training data (untested under FSDP)"}
    paper = ("Sun et al. 2020, LAMOL: LAnguage MOdeling for Lifelong Language Learning (ICLR)")
    Options = PseudoReplayOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.tasks: list[dict] = []  # describe_stage() of every finished stage, in order

    def _gen_batch(self) -> int:
        return self.ctx.config.eval.batch_size if self.ctx.config is not None else 8

    def generation_records(self, stage) -> list[Record]:
        """LAMOL's generation objective for the stage being trained (``gen_ratio``)."""
        n = round(self.options.gen_ratio * len(stage.train))
        if not get_kind(stage.kind).instructions or n == 0:
            return []
        info = describe_stage(stage, self.options.seeds)
        prompt = generation_prompt(info["task"], info["seeds"], "sft")
        rng = stage_rng(self.ctx, stage.index, self.name, "gen")
        picked = rng.sample(range(len(stage.train)), min(n, len(stage.train)))
        out = []
        for i in picked:
            target = middle(stage.train[i].prompt, info["prefix"], info["suffix"]).strip()
            if target:
                out.append(Record(prompt=prompt, answers=[target], task=info["task"],
                                  meta={"lamol_gen": True}))
        return out

    def pseudo_examples(self, stage) -> list[Record]:
        """``round(ratio * n_new)`` examples of earlier stages, written by the current model."""
        earlier = [t for t in self.tasks if t["index"] < stage.index]
        total = round(self.options.ratio * len(stage.train))
        if not earlier or total == 0:
            return []
        plan = [t for t, c in zip(earlier, even_split(total, len(earlier))) for _ in range(c)]
        model = self.ctx.model
        opts = self.options
        prompts = [Record(prompt=generation_prompt(t["task"], t["seeds"], t["kind"]))
                   for t in plan]
        seed = torch_seed(self.ctx, stage.index, self.name, "sample")
        inputs = [""] * len(plan)
        with seeded_torch(seed, device_of(self.ctx)):
            for _ in range(3):  # draw, then re-draw empty generations twice
                todo = [i for i, x in enumerate(inputs) if not x]
                if not todo:
                    break
                drawn = generate(self.ctx, model, [prompts[i] for i in todo],
                                 opts.max_input_tokens, sample=True, top_k=opts.top_k,
                                 batch_size=self._gen_batch())
                for i, x in zip(todo, drawn):
                    inputs[i] = x
        for i, t in enumerate(plan):
            if not inputs[i] and t["seeds"]:
                inputs[i] = t["seeds"][i % len(t["seeds"])].strip()
        out: list[Record | None] = [None] * len(plan)
        questions: list[tuple[int, Record]] = []
        for i, (t, x) in enumerate(zip(plan, inputs)):
            meta = {"pseudo": True, "pseudo_stage": t["index"]}
            if get_kind(t["kind"]).raw_text:
                out[i] = Record(text=x, task=t["task"], meta=meta)
            else:
                q = Record(prompt=t["prefix"] + x + t["suffix"], system=t["system"],
                           task=t["task"], meta=meta)
                questions.append((i, q))
        by_budget: dict[int, list[tuple[int, Record]]] = {}
        for i, q in questions:
            budget = opts.max_answer_tokens or plan[i]["max_answer_tokens"]
            by_budget.setdefault(budget, []).append((i, q))
        for budget, group in sorted(by_budget.items()):
            answers = generate(self.ctx, model, [q for _, q in group], budget, sample=False,
                               batch_size=self._gen_batch())
            for (i, q), a in zip(group, answers):
                q.answers, q.response = [a], a
                out[i] = q
        return [r for r in out if r is not None]

    def train_data(self, stage, records):
        extra = self.pseudo_examples(stage) + self.generation_records(stage)
        return records + as_kind(extra, stage.kind) if extra else records

    def after_stage(self, stage):
        encoder = self.ctx.encoder if self.ctx is not None else None
        self.tasks = [t for t in self.tasks if t["index"] != stage.index]
        self.tasks.append(describe_stage(stage, self.options.seeds, encoder))
        self.tasks.sort(key=lambda t: t["index"])

    def buffer_size(self) -> int:
        return sum(len(t["seeds"]) for t in self.tasks)

    def state_dict(self):
        return {"meta": {"tasks": self.tasks}, "tensors": {}}

    def load_state_dict(self, state):
        self.tasks = [dict(t) for t in state["meta"].get("tasks", [])]
