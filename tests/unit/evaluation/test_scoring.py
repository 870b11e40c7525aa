"""Checks of the text scorers in ``everlearn.evaluation.scoring`` against hand-computed values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from everlearn.evaluation.scoring import (
    can_still_match,
    exact_match,
    normalize_answer,
    rouge_l,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The Eiffel Tower.", "eiffel tower"),
        ("  An apple a DAY!  ", "apple day"),
        ("the\tcat\n\nsat", "cat sat"),
        ("theater anthem", "theater anthem"),  # articles only as whole words
        ("A.B.C", "abc"),  # punctuation is deleted, not replaced by spaces
        ("rock-n-roll, 'quoted' (x)", "rocknroll quoted x"),
        ("", ""),
        ("The a an", ""),
        ("Café Ünïcode", "café ünïcode"),  # non-ASCII letters kept, lowercased
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_exact_match_single_and_multiple_references():
    assert exact_match("The Eiffel Tower.", ["eiffel tower"]) == 1.0
    assert exact_match("Paris", ["London", "paris!", "Rome"]) == 1.0
    assert exact_match("Paris, France", ["London", "paris"]) == 0.0
    assert exact_match("an answer", ["answer"]) == 1.0
    assert exact_match("", [""]) == 0.0  # an empty prediction never matches
    assert exact_match("", ["x"]) == 0.0


def test_exact_match_returns_float_and_accepts_bare_string():
    assert type(exact_match("yes", ["yes"])) is float
    assert exact_match("Yes.", "yes") == 1.0
    assert exact_match("ye", "yes") == 0.0  # a bare string is one reference, not characters


def test_empty_references_raise():
    with pytest.raises(ValueError):
        exact_match("x", [])
    with pytest.raises(ValueError):
        rouge_l("x", [])


def test_rouge_l_identical_and_disjoint():
    assert rouge_l("The cat sat on the mat.", ["the cat sat on the mat"]) == 1.0
    assert rouge_l("red green blue", ["cyan magenta yellow"]) == 0.0


def test_rouge_l_partial_overlap_keeps_articles_and_stems():
    # rouge-score's tokeniser keeps articles and Porter-stems: "the cat sat on the mat" vs
    # "a cat sat on a mat" -> LCS [cat, sat, on, mat] = 4 of 6 tokens each side: F = 2/3
    # (the example: SQuAD normalisation, which drops the articles, gave 1.0)
    assert rouge_l("the cat sat on the mat", ["a cat sat on a mat"]) == pytest.approx(2 / 3)
    # "was" -> "wa", "sitting" -> "sit": LCS [cat, on, mat] = 3; P = 3/6, R = 3/7
    assert rouge_l("the cat sat on the mat", ["a cat was sitting on a mat"]) == \
        pytest.approx(2 * (3 / 6) * (3 / 7) / (3 / 6 + 3 / 7))
    assert rouge_l("cats running", ["cat runs"]) == 1.0  # stemmed: [cat, run] both


PAIRS = [
    ("The cat sat on the mat.", "the cat sat on the mat"),
    ("the cat sat on the mat", "a cat sat on a mat"),
    ("Paris is the capital of France", "The capital of France is Paris."),
    ("running quickly towards the houses", "he runs quick toward a house"),
    ("positive", "Positive"),
    ("2 + 3 = 5", "5"),
    ("x y z w", "x"),
    ("", "cat"),
    ("cat", ""),
    ("Café Ünïcode résumé", "cafe unicode resume"),
    ("The answer is (B) because", "B"),
    ("one two three four five", "five four three two one"),
]


@pytest.mark.parametrize(("prediction", "reference"), PAIRS)
def test_rouge_l_equals_the_rouge_score_package(prediction, reference):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)  # SuperNI's settings
    expected = scorer.score(reference, prediction)["rougeL"].fmeasure
    assert rouge_l(prediction, [reference]) == pytest.approx(expected, abs=1e-12)
    assert rouge_l(prediction, ["zzz", reference]) == pytest.approx(expected, abs=1e-12)


def test_rouge_l_order_matters():
    # prediction [y, x, z, w], reference [x, y, z, w]: LCS = 3 ([x, z, w] or [y, z, w]),
    # P = R = 3/4 -> F = 0.75. (A bag-of-words F1 would give 1.0.)
    assert rouge_l("y x z w", ["x y z w"]) == pytest.approx(0.75)


def test_rouge_l_unequal_lengths():
    # prediction [x] vs reference [x, y, z, w]: LCS = 1, P = 1, R = 1/4,
    # F = 2 * 1 * 0.25 / 1.25 = 0.4
    assert rouge_l("x", ["x y z w"]) == pytest.approx(0.4)
    assert rouge_l("x y z w", ["x"]) == pytest.approx(0.4)  # symmetric for beta = 1


def test_rouge_l_max_over_references():
    refs = ["cyan magenta", "a cat sat on a mat", "cat"]
    # vs "cyan magenta": 0; vs the partial case: 2/3; vs [cat]: LCS 1, P = 1/6, R = 1,
    # F = 2/7.  Max = 2/3.
    assert rouge_l("the cat sat on the mat", refs) == pytest.approx(2 / 3)
    assert rouge_l("cat", "the cat") == pytest.approx(2 / 3)  # a bare string is one reference


def test_rouge_l_empty_texts():
    # An empty prediction scores 0.0, even against an empty reference; articles are tokens.
    assert rouge_l("", [""]) == 0.0
    assert rouge_l("The.", ["a"]) == 0.0
    assert rouge_l("A.", ["a"]) == 1.0
    assert rouge_l("", ["cat"]) == 0.0
    assert rouge_l("cat", ["the"]) == 0.0


def test_rouge_l_in_unit_interval():
    cases = [
        ("a b c", ["c b a"]),
        ("one two three four five", ["five four three two one", "two four"]),
        ("x x x", ["x"]),
    ]
    for pred, refs in cases:
        value = rouge_l(pred, refs)
        assert 0.0 <= value <= 1.0
        assert type(value) is float


@pytest.mark.parametrize("prediction", ["", " ", ".", "The", "an", "the an"])
def test_article_reference_needs_the_article(prediction):
    # "A" (a multiple-choice letter) is all article: SQuAD's normalisation empties it, so an
    # empty answer or another article used to match it
    assert exact_match(prediction, ["A"]) == 0.0
    assert rouge_l(prediction, ["A"]) == 0.0


@pytest.mark.parametrize("prediction", ["A", "a", "A.", " (a) "])
def test_article_reference_matches_itself(prediction):
    assert exact_match(prediction, ["A"]) == 1.0
    assert rouge_l(prediction, ["A"]) == 1.0
    assert exact_match(prediction, ["B", "a"]) == 1.0


def test_empty_prediction_never_matches():
    for refs in ([""], ["."], ["The"], ["x", ""]):
        assert exact_match("", refs) == 0.0
        assert rouge_l("", refs) == 0.0
    assert exact_match("The", ["the"]) == 1.0  # article-only reference: compared as it is
    assert exact_match("An", ["the"]) == 0.0
    assert exact_match("The Eiffel Tower", ["eiffel tower"]) == 1.0  # SQuAD's rule otherwise


# --- stopping a generation that can no longer match ---------------------------------------
def test_can_still_match_stops_a_ramble_and_keeps_a_live_answer():
    assert not can_still_match("The sum of the", ["<0794>"])  # 'sum' is stable and wrong
    assert can_still_match("The sum of", ["<0794>"])  # 'sum' may still merge with 'of...'
    assert not can_still_match("The sum is ", ["<0794>"])
    assert can_still_match("The sum ", ["<0794>"])  # a following "n't" could still merge
    assert can_still_match("The", ["<0794>"])  # an article, and the last word may still grow
    assert can_still_match("<07", ["<0794>"])
    assert can_still_match("The <0794>", ["<0794>"])  # articles vanish in normalisation
    assert can_still_match("0794 and more", ["0794"])  # 'and' may still merge with 'more'
    assert not can_still_match("0794 and more words", ["0794"])
    assert can_still_match("blue sky is", ["red", "blue sky"])  # any reference keeps it
    assert not can_still_match("The a b", ["A"])  # 'The' against the article-only reference


_WORDS = st.sampled_from(["a", "A", "an", "the", "The", "blue", "sky", "n't", "don", ".", ",",
                          "'s", "<07>", "0794", "-"])


@given(words=st.lists(_WORDS, max_size=7), refs=st.lists(
    st.lists(_WORDS, min_size=1, max_size=3).map(" ".join), min_size=1, max_size=3),
    glue=st.lists(st.sampled_from([" ", "", "  "]), min_size=7, max_size=7))
def test_a_prefix_declared_hopeless_never_ends_in_a_match(words, refs, glue):
    text = "".join(w + g for w, g in zip(words, glue))
    if exact_match(text, refs) or exact_match(text.strip(), refs):
        for k in range(len(text) + 1):
            assert can_still_match(text[:k], refs), (text[:k], text, refs)
