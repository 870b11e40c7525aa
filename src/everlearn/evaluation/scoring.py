"""Text scorers for generated answers: SQuAD-style exact match and ROUGE-L.

No torch: exact match is standard library, ROUGE-L the ``rouge-score`` package (the one
published tables use). Every scorer returns a value in ``[0, 1]`` and takes the max
over the acceptable references; the evaluator scales by 100.

For exact match, two rules on top of SQuAD's normalisation keep a model that answers nothing
from scoring:

* an empty prediction (after normalisation) never matches, not even an empty reference;
* a reference that SQuAD's normalisation empties (``"A"``, ``"The"``: multiple-choice letters
  are articles) is compared with :func:`normalize_light` on both sides, which keeps articles,
  so ``"A"`` matches ``"a"`` and ``"A."`` but not ``""``, ``"The"`` or ``"an"``.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Sequence

__all__ = ["can_still_match", "comparable", "exact_match", "normalize_answer", "normalize_light",
           "rouge_l"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 normalisation: lowercase, drop ASCII punctuation, drop articles, fix spaces.

    Steps (same order as the official SQuAD script): ``lower`` -> remove every character in
    ``string.punctuation`` -> replace the words ``a``/``an``/``the`` with a space -> collapse runs
    of whitespace into single spaces and strip the ends.
    """
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def normalize_light(s: str) -> str:
    """:func:`normalize_answer` without removing articles: lowercase, drop ASCII punctuation,
    fix spaces (for references that are nothing but an article, such as the option "A")."""
    text = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(text.split())


def comparable(prediction: str, reference: str) -> tuple[str, str]:
    """The two texts as they are compared: SQuAD-normalised, or both with
    :func:`normalize_light` when SQuAD's normalisation leaves nothing of the reference."""
    ref = normalize_answer(reference)
    if ref:
        return normalize_answer(prediction), ref
    return normalize_light(prediction), normalize_light(reference)


def _as_references(references: str | Sequence[str]) -> list[str]:
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("at least one reference is required")
    return refs


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """``1.0`` if the prediction equals any reference after normalisation, else ``0.0``.

    Normalisation is :func:`comparable` (SQuAD's, or the article-keeping one for a reference
    that SQuAD's would empty); a prediction that normalises to nothing never matches.
    ``references`` is a list of acceptable answers (a bare string counts as one reference).
    Raises ValueError when it is empty.
    """
    for ref in _as_references(references):
        pred, gold = comparable(prediction, ref)
        if pred and pred == gold:
            return 1.0
    return 0.0


def can_still_match(prefix: str, references: str | Sequence[str]) -> bool:
    """Whether some continuation of the generated ``prefix`` could still score
    :func:`exact_match` 1.0, so that greedy decoding can stop a row that cannot (its score is 0
    whatever it writes next).

    Normalisation works word by word (words split on whitespace), so the words of the prefix
    that can no longer change, normalised as :func:`comparable` does, must begin some
    normalised reference. The last word may still grow, and the one before it may still merge
    with what follows when a tokenizer's decoder cleans up spaces (``do n't`` -> ``don't``),
    so neither counts until another word follows.
    """
    words = prefix.split()
    stable = words[:max(len(words) - (1 if prefix[-1:].isspace() else 2), 0)]
    if not stable:
        return True
    text = " ".join(stable)
    for ref in _as_references(references):
        pred, gold = comparable(text, ref)
        got, want = pred.split(), gold.split()
        if got == want[:len(got)]:
            return True
    return False


def rouge_l(prediction: str, references: str | Sequence[str]) -> float:
    """ROUGE-L F-measure of ``prediction``, max over ``references``, in ``[0, 1]``, as the
    ``rouge-score`` package computes it with the settings of Super-NaturalInstructions'
    evaluation (``RougeScorer(["rougeL"], use_stemmer=True)``, the ``fmeasure``, the max over
    the references; no other normalisation), so scores sit beside published tables.

    That tokeniser lowercases, keeps runs of ``[a-z0-9]`` (everything else separates tokens, so
    text in other scripts has no tokens and scores ``0.0``) and Porter-stems tokens longer
    than three letters. An empty prediction scores ``0.0``, even against an empty reference.
    Raises ValueError when ``references`` is empty.
    """
    refs = _as_references(references)
    scorer = _rouge_scorer()
    return max(float(scorer.score(ref, prediction)["rougeL"].fmeasure) for ref in refs)


@functools.cache
def _rouge_scorer():
    """The one scorer (imported on first use: ``rouge_score`` loads NLTK's stemmer)."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
