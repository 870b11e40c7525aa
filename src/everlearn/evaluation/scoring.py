"""Text scorers for generated answers: SQuAD-style exact match and ROUGE-L.

Pure standard library (no torch). Every scorer returns a value in ``[0, 1]`` and takes the max
over the acceptable references; the evaluator scales by 100.

Two rules on top of SQuAD's normalisation keep a model that answers nothing from scoring:

* an empty prediction (after normalisation) never matches, not even an empty reference;
* a reference that SQuAD's normalisation empties (``"A"``, ``"The"``: multiple-choice letters
  are articles) is compared with :func:`normalize_light` on both sides, which keeps articles,
  so ``"A"`` matches ``"a"`` and ``"A."`` but not ``""``, ``"The"`` or ``"an"``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

__all__ = ["can_still_match", "comparable", "exact_match", "lcs_length", "normalize_answer",
           "normalize_light", "rouge_l", "rouge_l_tokens"]

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

    Tokenisation: the texts of :func:`comparable`, split on whitespace, i.e. lowercase, ASCII
    punctuation and the articles a/an/the removed (kept when the reference is nothing but
    articles); no stemming (so values differ slightly from the ``rouge-score`` package). See
    :func:`rouge_l_tokens` for the F-measure. A prediction that normalises to nothing scores
    ``0.0``, even against an empty reference. Raises ValueError when ``references`` is empty.
    """
    best = 0.0
    for ref in _as_references(references):
        pred, gold = comparable(prediction, ref)
        if pred:
            best = max(best, rouge_l_tokens(pred.split(), gold.split()))
    return best
