"""SARI (``everlearn.evaluation.sari``), TRACE's 20Minuten score, against hand-computed values
and the value the Hugging Face ``sari`` metric documents for its example."""

from __future__ import annotations

import pytest

from everlearn.evaluation.sari import normalize, sari
from everlearn.evaluation.scoring import rouge_l


def test_the_documented_example_of_the_hugging_face_metric():
    """The example in the docstring of the ``sari`` metric TRACE loads (datasets'
    metrics/sari/sari.py, evaluate's too): {'sari': 26.953601953601954}."""
    refs = ["About 95 species are currently known .", "About 95 species are now accepted .",
            "95 species are now accepted ."]
    value = sari("About 95 species are currently accepted .", "About 95 you now get in .", refs)
    assert 100 * value == pytest.approx(26.953601953601954, abs=1e-12)


def test_hand_computed_one_reference():
    """source "the cat sat", prediction "the cat", reference "cat sat".
    1-grams: keep P = 1/2 ("cat" of the, cat), R = 1/2 (cat of cat, sat) -> F 1/2; the deletion
    of "sat" is wrong (the reference keeps it) -> P 0; nothing to add -> F 1.
    2-grams: keep "the cat", which the reference drops -> F 0; deleting "cat sat" is wrong -> 0;
    add F 1. 3-grams: nothing kept or wanted -> 1; deleting "the cat sat" is right -> 1; add 1.
    4-grams: none -> 1, 1, 1. SARI = ((1/2 + 0 + 1 + 1) / 4 + (0 + 0 + 1 + 1) / 4 + 1) / 3."""
    expected = (0.625 + 0.5 + 1.0) / 3
    assert sari("the cat sat", "the cat", ["cat sat"]) == pytest.approx(expected, abs=1e-15)
    assert rouge_l("the cat", ["cat sat"]) == pytest.approx(0.5)  # the stand-in
    assert sari("the cat sat", "cat sat", ["cat sat"]) == pytest.approx(1.0)


def test_hand_computed_two_references_count_the_source_twice():
    """source "a b", prediction "a", references "a" and "a b": the source's and the
    prediction's counts are doubled (a: 2, b: 2), the references' summed (a: 2, b: 1).
    1-grams: keep P = 1, R = 2/3 -> F 0.8; deleting b: right once of twice -> 0.5; add 1.
    2-grams: keep P = 1 (nothing kept), R = 0 (one reference keeps "a b") -> F 0; deleting
    "a b": 1 of 2 -> 0.5; add 1. 3- and 4-grams: 1 each."""
    expected = ((0.8 + 0 + 1 + 1) / 4 + (0.5 + 0.5 + 1 + 1) / 4 + 1) / 3
    assert sari("a b", "a", ["a", "a b"]) == pytest.approx(expected, abs=1e-15)


def test_an_empty_prediction_is_scored_as_the_metric_scores_it():
    """An empty text is one empty token (split on " "), and TRACE passes every prediction, so an
    empty one is not 0: 1-grams keep F 0, deletion 1/2 (b right, a wrong), add F 0; 2-grams
    keep 1, deletion 1, add 1; 3-, 4-grams 1."""
    expected = ((0 + 1 + 1 + 1) / 4 + (0.5 + 1 + 1 + 1) / 4 + (0 + 1 + 1 + 1) / 4) / 3
    assert sari("a b", "", ["a"]) == pytest.approx(expected, abs=1e-15)


def test_texts_are_lowercased_and_13a_tokenised():
    assert normalize("Der Hund, die Katze.") == "der hund , die katze ."
    assert normalize("Es kostet 1,50 Fr.") == "es kostet 1,50 fr ."
    assert sari("Der Hund bellt.", "der hund bellt .", ["DER HUND BELLT."]) == pytest.approx(1.0)


def test_references_are_required():
    assert sari("a b", "a", "a") == sari("a b", "a", ["a"])  # a bare string is one reference
    with pytest.raises(ValueError):
        sari("a", "a", [])
