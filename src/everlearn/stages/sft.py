"""The ``sft`` stage kind: instruction tuning, prompt -> response with the loss on the response.

Records come from prompt/response, Alpaca, chat-message or ShareGPT files and SuperNI tasks;
every training record needs a response. The metric is inferred from the data when not set (labels
or options -> accuracy, else exact_match; see :mod:`everlearn.stages.stream`).
"""

from __future__ import annotations

from everlearn.data.readers import instruction_record
from everlearn.stages import Kind


def encode_responses(encoder, records: list) -> list:
    """Each answered record through the chat template, the loss on its response."""
    return encoder.encode_answered(records, encoder.encode_sft)


def check_responses(split: str, records: list, source: str) -> str | None:
    if split == "train" and any(not r.answers for r in records):
        return "every sft record needs a response"
    return None


KIND = Kind(
    name="sft", order=1,
    description="instruction tuning: prompt -> response, the loss on the response",
    metrics=("accuracy", "exact_match", "rouge_l", "strict_match", "first_char_match",
             "edit_similarity", "sari", "rouge_l_summary", "perplexity"), default_metric=None,
    read_record=instruction_record, encode=encode_responses, check_records=check_responses,
    instructions=True, superni_files=True, freeze_lm=True,
)
