"""Records from one stage kind made ready to train inside a stage of another kind.

Replay buffers, synthetic rehearsal and general-data mixing add earlier or outside records to a
stage's own; a ``cpt`` stage packs raw text only, so instruction records must become text there.
"""

from __future__ import annotations

from everlearn.data.records import Record
from everlearn.stages import get_kind


def as_kind(records: list[Record], kind: str) -> list[Record]:
    """Records ready to mix into a stage of ``kind``.

    A raw-text stage (cpt) packs ``text`` only, so instruction records become
    ``prompt\\nresponse`` text; an sft stage takes raw-text records as they are (the encoder
    packs them with full loss).
    """
    if not get_kind(kind).raw_text:
        return list(records)
    out = []
    for r in records:
        if r.answers and not r.text:
            out.append(Record(text=f"{r.prompt}\n{r.response}", task=r.task, meta=dict(r.meta)))
        else:
            out.append(r)
    return out
