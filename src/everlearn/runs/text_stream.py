"""The text-stream run mode: which segment of the token stream comes next, where each ended and
why, and the results.json ``text_stream`` section.

With ``text_stream`` set the stream driver (everlearn.runs.runner) trains no fixed phases: its
phases are the segments this object cuts from the token stream as it trains (everlearn.training.
textstream builds the stream, the shift detector and the segment plans the trainer follows).
"""

from __future__ import annotations

from typing import Any

from everlearn.errors import ConfigError
from everlearn.stages.stream import Stage
from everlearn.training.textstream import (
    SEGMENT_PREFIX,
    Domain,
    SegmentPlan,
    ShiftDetector,
    TokenStream,
    build_token_stream,
    match_shifts,
)


class TextStreamRun:
    """The segments of a run: which one comes next, where each ended and why."""

    def __init__(self, cfg, ts: TokenStream):
        self.cfg = cfg  # TextStreamConfig
        self.ts = ts
        self.segments: list[dict[str, Any]] = []  # finished: name, blocks, start, end, reason
        self.phases: list[list[Stage]] = []  # one per finished segment: the driver's phases

    @classmethod
    def build(cls, cfg, stages: list[Stage], encoder, source: str) -> TextStreamRun:
        """The text stream of run config ``cfg``: its stages' training text, encoded."""
        run = cls(cfg.text_stream, build_token_stream(
            stages, encoder, cfg.text_stream.token_budget,
            cfg.train.batch_size * cfg.train.grad_accum))
        if not run.ts.blocks:
            raise ConfigError(f"{source}: stages: the text stream is empty (no training "
                              "text in the cpt stages)")
        return run

    @property
    def done(self) -> bool:
        return self._next_block() >= len(self.ts.blocks)

    def _next_block(self) -> int:
        return self.segments[-1]["blocks"][1] if self.segments else 0

    def next_segment(self, index: int) -> tuple[Stage, SegmentPlan] | None:
        """The stage and plan of segment ``index`` (1-based), or None after the stream's end."""
        start = self._next_block()
        n = len(self.ts.blocks)
        if start >= n:
            return None
        b = self.cfg.boundaries
        end = n
        if b.mode == "fixed":
            every = b.every_tokens // self.ts.block_tokens
            end = min(n, (start // every + 1) * every)
        name = f"{SEGMENT_PREFIX}-{index:02d}"
        stage = Stage(index=index, name=name, kind="cpt", metric="perplexity",
                      train=self.ts.records[start:end], test=[], task_id=name,
                      last=(end == n) if b.mode != "detector" else None)
        detector = (ShiftDetector(b.window, b.threshold, b.drift, b.min_std, b.direction)
                    if b.mode == "detector" else None)
        plan = SegmentPlan(start_token=self.ts.position(start), total_tokens=self.ts.total,
                           chunk_tokens=self.ts.chunk_tokens, ends_stream=end == n,
                           detector=detector)
        return stage, plan

    def finish(self, stage: Stage, plan: SegmentPlan) -> dict[str, Any]:
        """Record where segment ``stage`` ended (``plan`` as the trainer left it)."""
        start = self._next_block()
        end = start + plan.blocks_trained
        reason = ("detector" if plan.fired else "end" if end >= len(self.ts.blocks)
                  else self.cfg.boundaries.mode)
        seg = {"name": stage.name, "blocks": [start, end], "start": self.ts.position(start),
               "end": self.ts.position(end), "reason": reason}
        if plan.detector is not None:
            seg["detector_trace"] = [[round(v, 5) if v is not None else None for v in row]
                                     for row in plan.trace]
        self.segments.append(seg)
        return seg

    def restore(self, segments: list[dict[str, Any]]) -> list[Stage]:
        """Segments a resumed run keeps (from results.json), as stages (one per phase)."""
        self.segments = [dict(s) for s in segments]
        return [Stage(index=k, name=s["name"], kind="cpt", metric="perplexity",
                      train=self.ts.records[s["blocks"][0]:s["blocks"][1]], test=[],
                      task_id=s["name"]) for k, s in enumerate(self.segments, 1)]

    def truncate(self, n: int) -> None:
        del self.segments[n:]

    # --- the phase source of the stream driver (everlearn.runs.runner) -------------------
    carries_optimizer = True  # AdamW's state crosses a segment boundary (phase checkpoints)

    def resume(self, prev: dict[str, Any], n_rows: int) -> None:
        """A resumed run's phases: the segments its results.json has rows for, one each."""
        segments = (prev.get("text_stream") or {}).get("segments") or []
        self.phases = [[st] for st in self.restore(segments[:n_rows - 1])]

    def next_phase(self, phase: int) -> tuple[list[Stage], SegmentPlan] | None:
        """The next segment as phase ``phase``, cut as it trains; None after the stream's end."""
        nxt = self.next_segment(phase)
        return None if nxt is None else ([nxt[0]], nxt[1])

    def end_phase(self, stages: list[Stage], plan: SegmentPlan) -> None:
        self.finish(stages[0], plan)
        self.phases.append(stages)

    def finished(self, phase: int) -> bool:
        return self.done

    def keep(self, n: int) -> None:
        """Keep the first ``n`` segments (a resume); the later ones are found again."""
        self.truncate(n)
        del self.phases[n:]

    # --- results ------------------------------------------------------------------------
    def rows_of(self, domain: Domain) -> tuple[int, int | None]:
        """(the row of R at the boundary nearest to where the domain's text begins, the row at
        the boundary nearest to where it ends). Row k follows segment k (row 0, the base model,
        is position 0); boundaries rarely fall exactly on a shift, so "before" and "after" a
        domain are the closest the rows get. The "after" row must have trained some of the
        domain (None until one has) and the "before" row comes before it; ties go to the later
        row."""
        ends = [0] + [s["end"] for s in self.segments]
        after_rows = [k for k in range(1, len(ends)) if ends[k] > domain.start]
        after = (min(after_rows, key=lambda k: (abs(ends[k] - domain.end), -k))
                 if after_rows else None)
        before = min(range(after if after is not None else len(ends)),
                     key=lambda k: (abs(ends[k] - domain.start), -k))
        return before, after

    def trained_names(self, phase: int | None = None) -> set[str]:
        """Stages whose text the stream has reached so far (after any phase: the stream knows
        how far it got)."""
        reached = self.segments[-1]["end"] if self.segments else 0
        return {d.name for d in self.ts.domains if d.end > d.start and d.start < reached}

    def section(self, R: list[list[float | None]]) -> dict[str, Any]:
        """results.json ``text_stream``: the stream, its segments and boundaries, the true
        shifts, per stage the perplexity (or score) at the rows that matter, and for the
        detector how its boundaries met the shifts."""
        b = self.cfg.boundaries
        ts = self.ts
        out: dict[str, Any] = {
            "mode": b.mode, "token_budget": self.cfg.token_budget, "tokens": ts.total,
            "block_tokens": ts.block_tokens, "chunk_tokens": ts.chunk_tokens,
            "domains": [{"name": d.name, "start": d.start, "end": d.end} for d in ts.domains],
            "shifts": ts.shifts,
            "boundaries": [{"position": s["end"], "reason": s["reason"], "after": s["name"]}
                           for s in self.segments if s["reason"] != "end"],
            "segments": self.segments,
        }
        if b.mode == "fixed":
            out["every_tokens"] = b.every_tokens
        if b.mode == "detector":
            out["detector"] = {"window": b.window, "threshold": b.threshold, "drift": b.drift,
                               "min_std": b.min_std, "direction": b.direction}
            end = self.segments[-1]["end"] if self.segments else 0
            out["detection"] = match_shifts([s for s in ts.shifts if s < end],
                                            [x["position"] for x in out["boundaries"]
                                             if x["reason"] == "detector"],
                                            ts.chunk_tokens)
        per = []
        for j, d in enumerate(ts.domains):
            before, after = self.rows_of(d) if d.end > d.start else (None, None)
            col = [row[j] for row in R]
            per.append({"name": d.name, "base": col[0], "final": col[-1],
                        "before_row": before, "after_row": after,
                        "before": col[before] if before is not None and before < len(col)
                        else None,
                        "after": col[after] if after is not None and after < len(col) else None})
        out["per_stage"] = per
        return out

