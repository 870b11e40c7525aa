"""The one in-memory record schema every reader produces and every stage consumes.

Kept deliberately open: a record may carry chat context, a system prompt, several acceptable
answers, label options, or an image path (for multimodal stages), so new stage kinds add fields
instead of new schemas.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Record:
    """One training or test example.

    ``sft`` records use ``prompt``/``response`` (``answers`` lists every acceptable output; the
    first is the training target). ``cpt`` records use ``text``. ``context`` holds earlier chat
    turns (``[{"role": ..., "content": ...}]``) that precede ``prompt``. ``align`` records are
    preference pairs: ``chosen`` and ``rejected`` answers to ``prompt``; ``chosen`` is also
    their ``response``, so outside an align stage (replayed into an sft stage, in a strategy's
    buffer) a pair trains as an instruction whose target is the chosen answer. ``edit``
    records are fact edits (EasyEdit/CounterFact field names): ``prompt`` and its new target
    (``target_new``, kept as ``response``), paraphrases of the prompt (``rephrase_prompt``) and
    unrelated prompts whose answers must not change (``locality_prompt``, with
    ``locality_ground_truth`` where known, "" where not). ``token_ids`` holds one block of a
    boundary-free text stream already tokenised (:mod:`everlearn.training.textstream`): it is
    trained
    as it is, so the stream's token positions stay exact; ``text`` is then its decoded text.
    """

    prompt: str = ""
    response: str = ""
    answers: list[str] = field(default_factory=list)
    text: str = ""
    system: str | None = None
    context: list[dict[str, str]] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    image: str | None = None
    task: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    chosen: str = ""
    rejected: str = ""
    rephrase_prompt: list[str] = field(default_factory=list)
    locality_prompt: list[str] = field(default_factory=list)
    locality_ground_truth: list[str] = field(default_factory=list)
    token_ids: list[int] | None = None

    def __post_init__(self) -> None:
        if self.chosen and not self.answers and not self.response:
            self.answers = [self.chosen]
        if self.response and not self.answers:
            self.answers = [self.response]
        if self.answers and not self.response:
            self.response = self.answers[0]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (used to store replay buffers without pickle)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        return cls(**data)
