"""Text scorers for generated answers: SQuAD-style exact match, ROUGE-L, and TRACE's string
equality, answer letter and edit similarity (SARI is :mod:`everlearn.evaluation.sari`).

No torch: exact match is standard library, ROUGE-L the ``rouge-score`` package (the one
published tables use), edit similarity ``rapidfuzz``. Every scorer returns a value in
``[0, 1]`` and takes the max over the acceptable references; the evaluator scales by 100.

TRACE's rules (github.com/BeyonderXX/TRACE at commit 462e39f: ``metrics.py`` and
``evaluations/eval_<task>.py``, called by ``inference/infer_single.py`` on the raw decoded
generation) are :func:`strict_match` (C-STANCE, FOMC, NumGLUE-cm, NumGLUE-ds),
:func:`first_char_match` (ScienceQA) and :func:`edit_similarity` (Py150). TRACE compares the
decoded text as it is; everlearn's decoder strips a generation's ends, so these scorers strip
the reference's too, and that is the one leniency they add.

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

__all__ = ["can_still_equal", "can_still_match", "comparable", "edit_similarity",
           "exact_match", "first_char_match", "first_char_open", "normalize_answer",
           "normalize_light", "py150_literals", "rouge_l", "rouge_l_summary", "strict_match"]

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


# --- TRACE's rules -------------------------------------------------------------------------
_UNSETTLED = "\ufffd"  # what a decoder writes for a character whose bytes have not all come


def strict_match(prediction: str, references: str | Sequence[str]) -> float:
    """``1.0`` if the prediction is a reference character for character (its ends stripped,
    as the generation's are), else ``0.0``: TRACE's accuracy (``metrics.caculate_accuracy``,
    ``prediction == target``, no normalisation: ``"A."`` or ``"a"`` is not ``"A"``, ``"5.0"``
    is not ``"5"``). An empty prediction never matches (TRACE skips it, scoring 0).
    Raises ValueError when ``references`` is empty."""
    refs = _as_references(references)
    return 1.0 if prediction and any(prediction == ref.strip() for ref in refs) else 0.0


def can_still_equal(prefix: str, references: str | Sequence[str]) -> bool:
    """Whether some continuation of the generated ``prefix`` could still score
    :func:`strict_match` 1.0: the prefix, less its last character (which the next token may
    still change: a character whose bytes are split over tokens, a space a decoder cleans up),
    begins some reference."""
    stable = prefix.rstrip(_UNSETTLED)[:-1]
    return any(ref.strip().startswith(stable) for ref in _as_references(references))


def first_char_match(prediction: str, references: str | Sequence[str]) -> float:
    """``1.0`` if the prediction's first character is a reference's first character, else
    ``0.0``: TRACE's ScienceQA accuracy (``evaluations/eval_ScienceQA.py`` takes character 0
    of the generation and of the answer, ``"B\nBecause ..."``, as the option letter, and
    compares them as :func:`strict_match` does). ``"B. because"`` and ``"B"`` both match
    ``"B\n..."``; ``"b"`` and ``"(B)"`` do not. An empty prediction never matches.
    Raises ValueError when ``references`` is empty."""
    refs = _as_references(references)
    first = prediction[:1]
    return 1.0 if first and any(first == ref.strip()[:1] for ref in refs) else 0.0


def first_char_open(prefix: str, references: str | Sequence[str]) -> bool:
    """Whether the generated ``prefix`` has not settled its first character yet (nothing but
    characters whose bytes are still coming), so decoding goes on; once it has, what follows
    cannot change :func:`first_char_match` and the row stops."""
    return not prefix.strip(_UNSETTLED)


_LITERAL = re.compile(r"<(STR|NUM|CHAR)_LIT:(.*?)>", re.S)


def py150_literals(code: str) -> str:
    """Py150's literal placeholders as TRACE's ``evaluations/eval_Py150.py`` rewrites them
    before scoring: ``<NUM_LIT>`` -> ``0``, ``<STR_LIT>`` and ``<CHAR_LIT>`` -> nothing, then a
    placeholder that carries its literal (``<STR_LIT:utf-8>``) -> the literal (``utf-8``).
    Text without placeholders is unchanged."""
    code = code.replace("<NUM_LIT>", "0").replace("<STR_LIT>", "").replace("<CHAR_LIT>", "")
    return _LITERAL.sub(lambda m: m.group(2), code)


def edit_similarity(prediction: str, references: str | Sequence[str]) -> float:
    """TRACE's Py150 score (``metrics.caculate_fuzz``, after :func:`py150_literals` on both
    texts), max over ``references``, in ``[0, 1]``: fuzzywuzzy's ``fuzz.ratio``, the
    CodeXGLUE code-completion edit similarity, divided by 100. That is
    ``round(100 * (1 - d / (len(a) + len(b))))`` with ``d`` the Indel distance (insertions and
    deletions; a substitution costs 2) over characters, rounded to a whole number per record as
    fuzzywuzzy rounds it; ``rapidfuzz.fuzz.ratio`` computes the same ratio (python-Levenshtein,
    fuzzywuzzy's fast path, is built on it). Identical texts score ``1.0``; an empty
    prediction or reference (after the rewrite) scores ``0.0``, as TRACE skips it.
    Raises ValueError when ``references`` is empty."""
    from rapidfuzz import fuzz

    refs = _as_references(references)
    pred = py150_literals(prediction)
    best = 0.0
    for ref in refs:
        gold = py150_literals(ref.strip())
        if pred and gold:
            best = max(best, round(fuzz.ratio(pred, gold)) / 100)
    return best


def rouge_l_summary(prediction: str, references: str | Sequence[str]) -> float:
    """TRACE's MeetingBank score (``metrics.caculate_rouge`` -> ``score_rouge``), max over
    ``references``, in ``[0, 1]``: the ``rouge`` package's (1.0.1, TRACE's pin) summary-level
    ROUGE-L F, Lin 2004's union LCS over sentences. That package splits each text at every
    ``.``, joins whitespace runs, and counts case-sensitive whitespace tokens (each distinct
    one once, ``exclusive=True``); nothing is stemmed or lowercased, unlike :func:`rouge_l`.
    TRACE passes the reference as the package's hypothesis and the generation as its
    reference (``score_rouge(target, prediction)``), and the union LCS is not symmetric, so
    the same order is kept here. An empty prediction or reference scores ``0.0`` (TRACE skips
    it and still divides by every record). Raises ValueError when ``references`` is empty."""
    refs = _as_references(references)
    best = 0.0
    for ref in refs:
        if _has_sentence(prediction) and _has_sentence(ref):
            scores = _summary_rouge().get_scores(ref, prediction)
            best = max(best, float(scores[0]["rouge-l"]["f"]))
    return best


def _has_sentence(text: str) -> bool:
    """Whether the ``rouge`` package finds a word in ``text`` (it raises on a text without)."""
    return any(part.split() for part in text.split("."))


@functools.cache
def _summary_rouge():
    from rouge import Rouge

    return Rouge(metrics=["rouge-l"])
