"""Experience replay: keep a small buffer of earlier stages' examples and mix it into training.

Budget: a fixed number of examples (``buffer_size``) or a fraction of each stage
(``buffer_fraction``). Selection: ``reservoir`` (uniform over everything seen, Vitter's
Algorithm R) or ``balanced`` (equal slots per stage). ``mix_ratio`` is the share of each stage's
training set drawn from the buffer. The buffer is saved as JSON records in the stage checkpoint.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from everlearn.data.mixing import as_kind
from everlearn.data.records import Record
from everlearn.strategies.base import Strategy


@dataclass
class ReplayOptions:
    buffer_size: int | None = field(
        default=None, metadata={"help": "Examples kept in total (200 when neither budget is set)."})
    buffer_fraction: float | None = field(
        default=None, metadata={"help": "Share of each stage's training set kept (balanced)."})
    selection: str = field(
        default="balanced", metadata={"help": "'reservoir' or 'balanced' (equal per stage)."})
    mix_ratio: float = field(
        default=0.2, metadata={"help": "Share of each stage's training examples from the buffer."})

    def __post_init__(self) -> None:
        if self.buffer_size is None and self.buffer_fraction is None:
            self.buffer_size = 200

    def check(self) -> tuple[str, str] | None:
        """(field, message) for the first invalid option, else None."""
        if (self.buffer_size is None) == (self.buffer_fraction is None):
            return "buffer_size", "expected exactly one of buffer_size or buffer_fraction"
        if self.buffer_size is not None and self.buffer_size < 1:
            return "buffer_size", f"expected an integer >= 1, got {self.buffer_size}"
        if self.buffer_fraction is not None and not 0 < self.buffer_fraction <= 1:
            return "buffer_fraction", f"expected 0 < x <= 1, got {self.buffer_fraction}"
        if self.selection not in ("reservoir", "balanced"):
            return "selection", f"expected 'reservoir' or 'balanced', got {self.selection!r}"
        if self.selection == "reservoir" and self.buffer_size is None:
            return "selection", "reservoir sampling needs buffer_size"
        if not 0 <= self.mix_ratio < 1:
            return "mix_ratio", f"expected 0 <= x < 1, got {self.mix_ratio}"
        return None


class Replay(Strategy):
    name = "replay"
    summary = "rehearsal from a budgeted buffer of earlier stages (reservoir or balanced)"
    # FSDP: its hooks only choose data or add forward passes every rank makes alike
    unsupported_parallel = {}
    paper = "Experience replay: Rolnick et al. 2019; reservoir sampling: Vitter 1985"
    Options = ReplayOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.buffer: list[tuple[int, Record]] = []  # (stage index, record)
        self.n_seen = 0

    def _rng(self, stage, purpose: str) -> random.Random:
        seed = self.ctx.seed if self.ctx is not None else 0
        return random.Random(f"{seed}:{stage.index}:{self.name}:{purpose}")

    def train_data(self, stage, records):
        if not self.buffer or self.options.mix_ratio == 0:
            return records
        ratio = self.options.mix_ratio
        wanted = round(ratio / (1 - ratio) * len(records))
        n = min(wanted, len(self.buffer))
        picked = self._rng(stage, "mix").sample(range(len(self.buffer)), n)
        return records + as_kind([self.buffer[i][1] for i in sorted(picked)], stage.kind)

    def after_stage(self, stage):
        rng = self._rng(stage, "select")
        new = list(stage.train)
        if self.options.selection == "reservoir":
            budget = self.options.buffer_size
            for rec in new:  # Algorithm R: every example seen so far is kept with prob B/n
                self.n_seen += 1
                if len(self.buffer) < budget:
                    self.buffer.append((stage.index, rec))
                else:
                    j = rng.randrange(self.n_seen)
                    if j < budget:
                        self.buffer[j] = (stage.index, rec)
            return
        rng.shuffle(new)
        self.n_seen += len(new)
        if self.options.buffer_fraction is not None:
            keep = max(1, round(self.options.buffer_fraction * len(new)))
            self.buffer.extend((stage.index, r) for r in new[:keep])
            return
        # Balanced: every stage seen so far gets an equal share of the budget; earlier stages
        # give up their surplus (their kept examples were already a random order).
        by_stage: dict[int, list[Record]] = {}
        for idx, rec in self.buffer:
            by_stage.setdefault(idx, []).append(rec)
        by_stage[stage.index] = new
        share, extra = divmod(self.options.buffer_size, len(by_stage))
        self.buffer = []
        for k, idx in enumerate(sorted(by_stage)):
            quota = share + (1 if k < extra else 0)
            self.buffer.extend((idx, r) for r in by_stage[idx][:quota])

    def buffer_size(self) -> int:
        return len(self.buffer)

    def state_dict(self):
        return {"meta": {"n_seen": self.n_seen,
                         "buffer": [[idx, r.to_dict()] for idx, r in self.buffer]},
                "tensors": {}}

    def load_state_dict(self, state):
        meta = state["meta"]
        self.n_seen = int(meta.get("n_seen", 0))
        self.buffer = [(int(idx), Record.from_dict(r)) for idx, r in meta.get("buffer", [])]
