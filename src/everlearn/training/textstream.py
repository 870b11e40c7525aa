"""A stream without task boundaries: the cpt stages' text as one token stream, cut into segments.

With ``text_stream`` set, the run does not train stage by stage. The training text of every
stage, in stage order, is tokenised into one stream (documents joined by EOS, as cpt packing
does), cut after ``token_budget`` tokens and into blocks of ``train.max_length`` tokens. The
stream is trained once, in order, one optimizer step per *chunk* of ``batch_size x grad_accum``
blocks. Boundaries cut it into *segments*; each segment is one phase of the run: a ``Stage`` of
its own (``segment-01`` ...) whose ``before_stage`` / ``after_stage`` hooks the strategies get,
then a row of R. The stages stay the columns of R, scored on their held-out text, so the matrix
shows each domain (period, source) before, while and after the stream passes through it.

Boundaries come from ``text_stream.boundaries``: ``fixed`` (every N tokens, known in advance),
``detector`` (:class:`ShiftDetector` on the training loss, found online) or ``none`` (one
segment). The true shifts — where one stage's text ends and the next begins — are known here
and reported beside the boundaries, so a detector can be judged. Pure Python except the
tokenisation in :func:`build_token_stream`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from everlearn.data.records import Record
from everlearn.evaluation.metrics import summarize_stream
from everlearn.stages.stream import Stage

SEGMENT_PREFIX = "segment"


@dataclass
class Domain:
    """Where one stage's training text lies in the stream: tokens ``[start, end)``."""

    name: str
    start: int
    end: int


@dataclass
class TokenStream:
    """The run's stream as blocks of token ids, with each block's start position."""

    blocks: list[list[int]]
    starts: list[int]
    domains: list[Domain]  # one per stage; start == end for a stage the budget cut off
    block_tokens: int
    chunk_blocks: int
    records: list[Record] = field(default_factory=list)  # one per block, shared by segments

    @property
    def total(self) -> int:
        return self.starts[-1] + len(self.blocks[-1]) if self.blocks else 0

    @property
    def chunk_tokens(self) -> int:
        return self.chunk_blocks * self.block_tokens

    def position(self, block: int) -> int:
        """Token position of block ``block`` (the stream's end for ``len(blocks)``)."""
        return self.starts[block] if block < len(self.blocks) else self.total

    @property
    def shifts(self) -> list[int]:
        """Token positions where the text of one stage gives way to the next (inside the
        budget): the true boundaries a detector should find."""
        inside = [d for d in self.domains if d.end > d.start]
        return [d.start for d in inside[1:]]


def build_token_stream(stages: list[Stage], encoder, budget: int | None,
                       chunk_blocks: int) -> TokenStream:
    """Tokenise the stages' training text in order into one stream of ``encoder.max_length``
    blocks, cut after ``budget`` tokens; each block becomes a record with ``token_ids``."""
    ids: list[int] = []
    spans = []
    for st in stages:
        start = len(ids)
        for r in st.train:
            if budget is not None and len(ids) >= budget:
                break
            ids.extend(encoder.start_ids(r.text))  # BOS first where the tokenizer adds one
            if encoder.eos_id is not None:
                ids.append(encoder.eos_id)
        spans.append((st.name, start, len(ids)))
    if budget is not None:
        ids = ids[:budget]
    domains = [Domain(name, min(s, len(ids)), min(e, len(ids))) for name, s, e in spans]
    L = encoder.max_length
    blocks = [ids[s:s + L] for s in range(0, len(ids), L)]
    if blocks and len(blocks[-1]) < 2:  # one token trains nothing
        blocks.pop()
    starts = [k * L for k in range(len(blocks))]
    ts = TokenStream(blocks, starts, domains, L, chunk_blocks)
    tok = encoder.tok
    ts.records = [Record(text=tok.decode(b), token_ids=b, task=_domain_of(ts, s),
                         meta={"stream_position": s}) for b, s in zip(blocks, starts)]
    return ts


def _domain_of(ts: TokenStream, position: int) -> str:
    for d in ts.domains:
        if d.start <= position < d.end:
            return d.name
    return ""


class ShiftDetector:
    """Page's CUSUM on the chunk loss standardised against a sliding window.

    Every chunk's training loss (the loss of the incoming text under the current model, before
    the step on it: a prequential loss) is compared with the mean ``mu`` and standard deviation
    ``sd`` of the previous ``window`` chunks of the same segment (``sd`` floored at
    ``min_std``)::

        z_t = (x_t - mu) / sd
        S_t = max(0, S_{t-1} + z_t - drift)          fire when S_t > threshold

    While the model learns a stationary stream its loss falls or stays flat, so ``z`` hovers at
    or below 0 and ``S`` stays near 0; text the model predicts worse raises the loss above the
    recent level and ``S`` climbs past the threshold within a chunk or a few. Comparing with a
    recent window instead of the mean since the segment began keeps the high losses of a
    segment's first chunks (the model still adapting) from hiding a later rise. With
    ``direction="both"`` a second sum ``D_t = max(0, D_{t-1} - z_t - drift)`` also fires on a
    sudden fall (text the model predicts better); it is off by default because a falling loss
    is also what learning looks like. No score is computed before the window is full, so a
    segment is at least ``window`` chunks long. ``reset`` starts afresh (at every boundary).
    Page, "Continuous inspection schemes", Biometrika 1954; for concept drift see Gama et al.,
    ACM Comput. Surv. 2014.
    """

    def __init__(self, window: int = 8, threshold: float = 5.0, drift: float = 0.5,
                 min_std: float = 0.05, direction: str = "up"):
        self.window, self.threshold, self.drift, self.min_std = window, threshold, drift, min_std
        self.direction = direction
        self.reset()

    def reset(self) -> None:
        self.ref: deque[float] = deque(maxlen=self.window)
        self.score = 0.0  # S: evidence of a rise
        self.score_down = 0.0  # D: evidence of a fall (direction "both")
        self.z: float | None = None

    def update(self, x: float) -> bool:
        """Take one chunk's loss; True when the shift test fires on it."""
        fired = False
        self.z = None
        if len(self.ref) == self.window:
            mu = sum(self.ref) / self.window
            sd = max(math.sqrt(sum((v - mu) ** 2 for v in self.ref) / self.window), self.min_std)
            self.z = (x - mu) / sd
            self.score = max(0.0, self.score + self.z - self.drift)
            fired = self.score > self.threshold
            if self.direction == "both":
                self.score_down = max(0.0, self.score_down - self.z - self.drift)
                fired = fired or self.score_down > self.threshold
        self.ref.append(x)
        return fired


@dataclass
class SegmentPlan:
    """One segment as the trainer runs it: its blocks are the stage's records, in order; it may
    end early when the detector fires (the trainer fills the fields below the line)."""

    start_token: int  # where the segment starts in the stream (for the learning-rate schedule)
    total_tokens: int  # the whole stream (the schedule runs over it)
    chunk_tokens: int
    ends_stream: bool  # the planned end is the stream's end
    detector: ShiftDetector | None = None
    # filled by the trainer
    blocks_trained: int = 0
    fired: bool = False
    # per chunk: [position, loss, z, S (rise), D (fall)]
    trace: list[list[float | None]] = field(default_factory=list)


def match_shifts(shifts: list[int], boundaries: list[int], chunk_tokens: int) -> dict[str, Any]:
    """Detector boundaries against the true shifts. A boundary sits at the start of the chunk
    on which the detector fired, so the first chunk holding shifted text may start up to one
    chunk before the shift: shift s is found by the first boundary b with
    ``s - chunk_tokens < b < next shift`` (its delay ``b - s`` in tokens, negative when it
    falls inside that chunk); a shift without one is missed; every other boundary is a false
    alarm."""
    found, used = [], set()
    for k, s in enumerate(shifts):
        nxt = shifts[k + 1] if k + 1 < len(shifts) else math.inf
        hit = next((b for b in boundaries if s - chunk_tokens < b < nxt and b not in used),
                   None)
        if hit is not None:
            used.add(hit)
        found.append({"shift": s, "boundary": hit, "delay_tokens":
                      None if hit is None else hit - s})
    return {"shifts": found, "missed": sum(f["boundary"] is None for f in found),
            "false_alarms": sum(b not in used for b in boundaries)}


def stream_metrics(R: list[list[float]], stages: list[Stage],
                   run: Any) -> dict[str, Any]:  # run: runs.text_stream.TextStreamRun
    """The CL metrics of a finished text stream: as for stages (everlearn.evaluation.metrics), with
    stage
    j "trained" at the row nearest to where its text ends and "not yet trained" at the row
    nearest to where it begins (:meth:`TextStreamRun.rows_of`,
    :func:`everlearn.evaluation.metrics.summarize_stream`)."""
    rows = [run.rows_of(d) if d.end > d.start else (None, None) for d in run.ts.domains]
    out: dict[str, Any] = {}
    for direction, scope in ((True, "main"), (False, "perplexity")):
        cols = [j for j, s in enumerate(stages) if s.higher_is_better == direction]
        if not cols:
            continue
        summary = summarize_stream(R, cols, [r[1] for r in rows], [r[0] for r in rows],
                                   higher_is_better=direction)
        summary["stages"] = [stages[c].name for c in cols]
        summary["note"] = ("text stream: rows are boundaries; a stage counts as trained at the "
                           "boundary nearest to the end of its text"
                           + ("; perplexity: lower is better, BWT and forgetting signed as for "
                              "scores (negative BWT: perplexity rose)" if not direction else ""))
        out[scope] = summary
    return out
