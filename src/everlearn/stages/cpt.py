"""The ``cpt`` stage kind: continued pre-training on raw text, scored by perplexity.

Documents (``text`` records, or blank-line separated plain text) are packed into
``max_length`` blocks with the loss on every token; label options of a raw-text stage are
scored as cloze continuations of the prompt (:mod:`everlearn.evaluation.option_accuracy`).
A stage whose test records are probes (a prompt and its answers: TemporalWiki's and CKL's
cloze facts) may be scored by ``exact_match`` instead: the prompt is continued as raw text,
the continuation cut after its first sentence (:mod:`everlearn.evaluation.matrix`).
"""

from __future__ import annotations

from everlearn.data.readers import text_record
from everlearn.stages import Kind


def pack_text(encoder, records: list) -> list:
    """The documents packed into blocks (:meth:`Encoder.pack_cpt`)."""
    return encoder.pack_cpt(records)


KIND = Kind(
    name="cpt", order=2,
    description="continued pre-training on raw text, packed; scored by perplexity (or "
                "exact match on cloze probes)",
    metrics=("perplexity", "exact_match"), default_metric="perplexity",
    read_record=text_record, encode=pack_text, raw_text=True, plain_text_files=True,
)
