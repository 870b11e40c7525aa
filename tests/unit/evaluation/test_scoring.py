"""Checks of the text scorers in ``everlearn.evaluation.scoring`` against hand-computed values;
TRACE's (strict_match, first_char_match, edit_similarity) with cases that the stand-ins TRACE's
benchmark entry used before (exact_match, rouge_l) score otherwise."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from everlearn.evaluation.scoring import (
    can_still_equal,
    can_still_match,
    edit_similarity,
    exact_match,
    first_char_match,
    first_char_open,
    normalize_answer,
    py150_literals,
    rouge_l,
    rouge_l_summary,
    strict_match,
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


# --- TRACE: string equality (C-STANCE, FOMC, NumGLUE) ------------------------------------------
def test_strict_match_is_string_equality_where_exact_match_normalises():
    """TRACE's accuracy is ``prediction == target``: what SQuAD normalisation forgives is a miss."""
    assert strict_match("A", ["A"]) == 1.0 and strict_match("42", ["41", "42"]) == 1.0
    for prediction, answer in [("A.", "A"), ("a", "A"), ("The answer is B", "B"),
                               ("5.0", "5"), ("5 .", "5"), ("x  y", "x y")]:
        assert strict_match(prediction, [answer]) == 0.0, prediction
    assert exact_match("A.", ["A"]) == 1.0 and exact_match("a", ["A"]) == 1.0  # the stand-in
    assert strict_match("B", "B") == 1.0  # a bare string is one reference


def test_strict_match_strips_the_reference_as_the_generation_is_and_never_matches_empty():
    assert strict_match("A", ["A\n"]) == 1.0 and strict_match("A", [" A "]) == 1.0
    assert strict_match("", [""]) == 0.0 and strict_match("", ["A"]) == 0.0
    with pytest.raises(ValueError):
        strict_match("A", [])


def test_can_still_equal_stops_once_the_prefix_left_the_answer():
    assert can_still_equal("", ["A"]) and can_still_equal("A", ["A"])
    assert can_still_equal("AB", ["A"])  # the last character may still change
    assert not can_still_equal("ABC", ["A"])
    assert not can_still_equal("A\nB", ["A"])  # a second line: TRACE's string is not "A"
    assert can_still_equal("1\ufffd", ["1\u00e9"])  # a character whose bytes are still coming
    assert can_still_equal("12", ["13", "12.5"])


@given(text=st.text(alphabet="AB1.\n ", max_size=6),
       refs=st.lists(st.text(alphabet="AB1. ", min_size=1, max_size=4), min_size=1, max_size=3))
def test_a_prefix_that_can_no_longer_equal_never_ends_equal(text, refs):
    if strict_match(text.strip(), refs):
        for k in range(len(text) + 1):
            assert can_still_equal(text[:k].strip(), refs), (text[:k], refs)


# --- TRACE: the answer letter (ScienceQA) ---------------------------------------------------
def test_first_char_match_compares_the_letter_only():
    answer = "B\nBecause magnets attract iron."  # TRACE's ScienceQA answers: letter, newline, why
    assert first_char_match("B. because magnets pull", [answer]) == 1.0
    assert first_char_match("B", [answer]) == 1.0
    assert first_char_match("B\nBecause of gravity.", [answer]) == 1.0  # reasoning not scored
    assert exact_match("B. because magnets pull", [answer]) == 0.0  # the stand-in
    for prediction in ["C\nBecause magnets attract iron.", "b", "(B)", "Answer: B", ""]:
        assert first_char_match(prediction, [answer]) == 0.0, prediction
    assert first_char_match("A", ["B", "A\n..."]) == 1.0


def test_first_char_open_until_a_character_is_written():
    assert first_char_open("", ["B"]) and first_char_open("\ufffd", ["B"])
    assert not first_char_open("B", ["B"]) and not first_char_open("C", ["B"])
    assert not first_char_open("\ufffdB", ["B"])


# --- TRACE: edit similarity (Py150) ---------------------------------------------------------
def test_edit_similarity_is_the_indel_ratio_rounded_per_record():
    """kitten / sitting: LCS "ittn" (4), Indel distance 6 + 7 - 2 * 4 = 5, ratio 8 / 13 =
    61.5 -> 62 (Levenshtein's distance 3 would give 57); ROUGE-L sees two different words."""
    assert edit_similarity("kitten", ["sitting"]) == 0.62
    assert rouge_l("kitten", ["sitting"]) == 0.0  # the stand-in
    # "return self.x" / "return self.y": 26 characters, LCS 12, ratio 24 / 26 = 92.3 -> 92
    assert edit_similarity("return self.x", ["return self.y"]) == 0.92
    assert rouge_l("return self.x", ["return self.y"]) == pytest.approx(2 / 3)
    assert edit_similarity("x = 1", ["x = 1"]) == 1.0


def test_edit_similarity_rounds_half_to_even_as_fuzzywuzzy():
    """fuzzywuzzy returns int(round(100 * ratio)): Python rounds halves to even."""
    assert edit_similarity("abcde", ["abcdefghijk"]) == 0.62  # 10 / 16 = 62.5 -> 62
    assert edit_similarity("abc", ["abcdefghijklm"]) == 0.38  # 6 / 16 = 37.5 -> 38


def _lcs(a: str, b: str) -> int:
    row = [0] * (len(b) + 1)
    for ca in a:
        prev = 0
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if ca == cb else max(row[j], row[j - 1])
    return row[-1]


@given(a=st.text(alphabet="ab c(", min_size=1, max_size=12),
       b=st.text(alphabet="ab c(", min_size=1, max_size=12))
def test_edit_similarity_equals_twice_the_lcs_over_the_lengths(a, b):
    if a.strip() == b.strip() or not a.strip() or not b.strip():
        return
    expected = round(100 * (1 - (len(a) + len(b.strip()) - 2 * _lcs(a, b.strip()))
                            / (len(a) + len(b.strip())))) / 100
    assert edit_similarity(a, [b]) == expected


def test_py150_literals_are_rewritten_before_scoring():
    code = "x = <NUM_LIT> + <NUM_LIT:3> ; s = <STR_LIT> + <STR_LIT:utf-8> + <CHAR_LIT>"
    assert py150_literals(code) == "x = 0 + 3 ; s =  + utf-8 + "
    assert py150_literals("open(<STR_LIT:a b>)") == "open(a b)"
    assert py150_literals("no placeholders < here >") == "no placeholders < here >"
    assert edit_similarity("f(<NUM_LIT>)", ["f(0)"]) == 1.0
    assert edit_similarity("print(<STR_LIT:hi>)", ["print(hi)"]) == 1.0


def test_edit_similarity_of_empty_texts_is_zero():
    assert edit_similarity("", ["x"]) == 0.0 and edit_similarity("x", [""]) == 0.0
    assert edit_similarity("<STR_LIT>", ["<STR_LIT>"]) == 0.0  # empty once rewritten: skipped
    assert edit_similarity("abc", ["zzz", "abd"]) == 0.67  # the best answer: 4 / 6
    with pytest.raises(ValueError):
        edit_similarity("x", [])


def test_rouge_l_summary_unions_lcs_over_sentences_where_rouge_l_takes_one():
    """TRACE's MeetingBank ROUGE-L (the rouge package): the reference split at '.' into "d e"
    and "A b c"; the generation "A c d" shares "A c" with one sentence and "d" with the other,
    union 3 of its 3 words and of the reference's 5 -> P 3/5, R 1, F 0.75. rouge-score's one
    LCS over the whole text finds "A c" only: F 2 * (2/3 * 2/5) / (2/3 + 2/5) = 0.5."""
    assert rouge_l_summary("A c d", "d e. A b c") == pytest.approx(0.75, abs=1e-6)
    assert rouge_l("A c d", "d e. A b c") == pytest.approx(0.5)


def test_rouge_l_summary_is_case_sensitive_and_scores_empty_texts_zero():
    # "a" is not "A": union LCS {c, d}: P 2/5, R 2/3 -> F 0.5 (rouge_l lowercases: 0.75)
    assert rouge_l_summary("a c d", "A b c. d e") == pytest.approx(0.5, abs=1e-6)
    assert rouge_l("a c d", "A b c. d e") == pytest.approx(0.75)
    assert rouge_l_summary("", "x") == 0.0 and rouge_l_summary("...", "x") == 0.0
    assert rouge_l_summary("x y", ["nothing", "x y"]) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        rouge_l_summary("x", [])
