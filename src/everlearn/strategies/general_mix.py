"""General-data mixing: rehearse a general corpus in every stage to limit vertical forgetting.

Domain-adaptive pre-training (DAPT, Gururangan et al. 2020) continues training on domain data;
continual pre-training recipes replay a share of earlier, general data in every stage so that
the model keeps its general ability (Ibrahim et al. 2024 replay from a few percent up to 25% of
the previous distribution). Here ``ratio`` is the share of each stage's training records drawn
from the general corpus: ``ratio / (1 - ratio) * n`` general records join the stage's ``n``,
without replacement while the corpus lasts and in fresh shuffled passes after that, from an
RNG seeded by the run seed and the stage.

The corpus is ``path`` (JSON/JSONL instruction records, JSON/JSONL ``{"text": ...}`` records,
plain text with blank-line separated documents, or ``hf:`` datasets, read by the stream's own
readers), or, when unset, a small built-in set of 60 general instruction/answer pairs. Raw text
mixed into an instruction stage is packed by the encoder with loss on every token; instruction
records mixed into a text stage become ``prompt\\nresponse`` text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from everlearn.data.mixing import as_kind
from everlearn.data.readers import detect_format, read_source
from everlearn.data.records import Record
from everlearn.errors import DataError
from everlearn.strategies.base import Strategy
from everlearn.strategies.common.buffer import stage_rng
from everlearn.strategies.common.general_data import general_records

TASK = "general"


@dataclass
class GeneralMixOptions:
    path: str | None = field(
        default=None, metadata={"help": "General corpus (JSONL/JSON records, .txt text, hf:name);"
                                        " unset: 60 built-in general instruction pairs.",
                                "path": True})  # for the config loader: a file path option
    ratio: float = field(
        default=0.2, metadata={"help": "Share of each stage's training records from the corpus."})
    split: str | None = field(
        default="train", metadata={"help": "Split of an hf: corpus."})

    def check(self) -> tuple[str, str] | None:
        if not 0 <= self.ratio < 1:
            return "ratio", f"expected 0 <= x < 1, got {self.ratio}"
        if self.path is not None and not self.path.strip():
            return "path", "expected a file path or null"
        if self.path is not None and ":" not in self.path and not Path(
                self.path).expanduser().exists():  # hf:name is not a file
            return "path", f"{self.path}: file not found"
        return None


def read_corpus(path: str, split: str | None = "train") -> list[Record]:
    """Instruction records when the file holds them, else raw-text records."""
    fmt = detect_format(path)
    if fmt == "text":
        return read_source(path, fmt, "cpt", {}, split, TASK)
    try:
        return read_source(path, fmt, "sft", {}, split, TASK)
    except DataError as as_instructions:
        try:
            return read_source(path, fmt, "cpt", {}, split, TASK)
        except DataError:
            raise as_instructions from None


def draw(n_corpus: int, wanted: int, rng) -> list[int]:
    """``wanted`` corpus indices: a sample without replacement, then further shuffled passes."""
    if wanted <= n_corpus:
        return rng.sample(range(n_corpus), wanted)
    order: list[int] = []
    while len(order) < wanted:
        perm = list(range(n_corpus))
        rng.shuffle(perm)
        order.extend(perm)
    return order[:wanted]


class GeneralMix(Strategy):
    name = "general_mix"
    summary = "mix a general corpus into every stage at a fixed share (DAPT-style rehearsal)"
    # FSDP: its hooks only choose data or add forward passes every rank makes alike
    unsupported_parallel = {}
    paper = ("Ibrahim et al. 2024, Simple and Scalable Strategies to Continually Pre-train "
             "Large Language Models (TMLR); DAPT setting: Gururangan et al. 2020 (ACL)")
    Options = GeneralMixOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.corpus: list[Record] = []

    def setup(self, ctx):
        super().setup(ctx)
        path = self.options.path
        self.corpus = read_corpus(path, self.options.split) if path else general_records(TASK)
        if not self.corpus:
            raise DataError(f"{path}: no records found")
        for r in self.corpus:
            r.meta = {**r.meta, "general": True}

    def train_data(self, stage, records):
        ratio = self.options.ratio
        if ratio == 0 or not self.corpus:
            return records
        wanted = round(ratio / (1 - ratio) * len(records))
        picked = draw(len(self.corpus), wanted, stage_rng(self.ctx, stage.index, self.name, "mix"))
        return records + as_kind([self.corpus[i] for i in picked], stage.kind)

    def buffer_size(self) -> int:
        return len(self.corpus)
