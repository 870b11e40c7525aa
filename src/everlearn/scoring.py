"""Text scorers for generated answers: SQuAD-style exact match and ROUGE-L.

Pure standard library (no torch). Every scorer returns a value in ``[0, 1]`` and takes the max
over the acceptable references; the evaluator scales by 100.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

__all__ = ["exact_match", "lcs_length", "normalize_answer", "rouge_l", "rouge_l_tokens"]

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


def _as_references(references: str | Sequence[str]) -> list[str]:
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("at least one reference is required")
    return refs


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """``1.0`` if ``normalize_answer(prediction)`` equals that of any reference, else ``0.0``.

    ``references`` is a list of acceptable answers (a bare string counts as one reference).
    Raises ValueError when it is empty.
    """
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(ref) for ref in _as_references(references)))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences (O(n*m) time DP,
    O(min(n, m)) memory)."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l_tokens(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F-measure (beta = 1) of two token lists.

    ``P = LCS / len(prediction)``, ``R = LCS / len(reference)``, ``F = 2PR / (P + R)``; ``0.0``
    when the LCS is empty. Two empty lists score ``1.0``, one empty list scores ``0.0`` (the
    SQuAD F1 convention).
    """
    if not prediction or not reference:
        return float(not prediction and not reference)
    lcs = lcs_length(prediction, reference)
    if lcs == 0:
        return 0.0
    precision = lcs / len(prediction)
    recall = lcs / len(reference)
    return 2.0 * precision * recall / (precision + recall)


def rouge_l(prediction: str, references: str | Sequence[str]) -> float:
    """ROUGE-L F-measure of ``prediction``, max over ``references``, in ``[0, 1]``.

    Tokenisation: ``normalize_answer(text).split()``, i.e. lowercase, ASCII punctuation and the
    articles a/an/the removed, then split on whitespace; no stemming (so values differ slightly
    from the ``rouge-score`` package). See :func:`rouge_l_tokens` for the F-measure and the
    empty-text convention. Raises ValueError when ``references`` is empty.
    """
    pred = normalize_answer(prediction).split()
    return max(
        rouge_l_tokens(pred, normalize_answer(ref).split()) for ref in _as_references(references)
    )
