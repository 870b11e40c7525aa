"""Hand-computed checks of the continual-learning metrics in ``everlearn.evaluation.metrics``.

Notation in comments: R[t][j] = row t (0 = base model), stage j (1-based), i.e. ``R[t, j - 1]``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from everlearn.evaluation.metrics import (
    ap_estimated_rows,
    average_performance,
    backward_transfer,
    final_average_performance,
    forgetting,
    forward_transfer,
    fuar,
    knowledge_gaps,
    learning_accuracy,
    mean_ci,
    student_t_ppf,
    summarize,
    summarize_columns,
    summarize_stream,
    validate_matrix,
)

# --------------------------------------------------------------------------------------------
# Matrix A, T = 3.  Stage 1 improves after stage 2 (70 > 50), then drops, so forgetting (which
# takes the max over intermediate rows) differs from -BWT (which only uses the diagonal).
#
#            stage1  stage2  stage3
#   row 0:     0       0       0      (base)
#   row 1:    50      10       5
#   row 2:    70      60      20
#   row 3:    55      40      80
#
# AP_1 = 50
# AP_2 = (70 + 60) / 2 = 65
# AP_3 = (55 + 40 + 80) / 3 = 175 / 3 = 58.333...
# LA   = (R11 + R22 + R33) / 3 = (50 + 60 + 80) / 3 = 190 / 3 = 63.333...
# BWT: j=1: R31 - R11 = 55 - 50 = 5;  j=2: R32 - R22 = 40 - 60 = -20;  sum = -15
#      BWT (T-1) = -15 / 2 = -7.5;  BWT (TRACE, T) = -15 / 3 = -5
# F:   j=1: max(R11, R21) - R31 = max(50, 70) - 55 = 15
#      j=2: max(R22)      - R32 = 60 - 40          = 20
#      F = (15 + 20) / 2 = 17.5            (while -BWT = 7.5)
# FWT: j=2: R12 - R02 = 10 - 0 = 10;  j=3: R23 - R03 = 20 - 0 = 20;  FWT = 15
# --------------------------------------------------------------------------------------------
A = np.array(
    [
        [0.0, 0.0, 0.0],
        [50.0, 10.0, 5.0],
        [70.0, 60.0, 20.0],
        [55.0, 40.0, 80.0],
    ]
)

# --------------------------------------------------------------------------------------------
# Matrix C, T = 4, distinct non-zero base row. Stage 1 peaks at row T-1 = 3 (the last row the
# forgetting max may use); the superdiagonal carries FWT.
#
#            s1   s2   s3   s4
#   row 0:    1    2    3    4    (base)
#   row 1:   40    5    6    7
#   row 2:   50   60    8    9
#   row 3:   65   55   70   10
#   row 4:   30   50   60   80
#
# AP_1 = 40;  AP_2 = (50 + 60) / 2 = 55;  AP_3 = (65 + 55 + 70) / 3 = 190 / 3 = 63.333...
# AP_4 = (30 + 50 + 60 + 80) / 4 = 220 / 4 = 55
# LA   = (40 + 60 + 70 + 80) / 4 = 250 / 4 = 62.5
# BWT: j=1: 30 - 40 = -10;  j=2: 50 - 60 = -10;  j=3: 60 - 70 = -10;  sum = -30
#      BWT (T-1) = -30 / 3 = -10;  BWT (TRACE) = -30 / 4 = -7.5
# F:   j=1: max(40, 50, 65) - 30 = 35;  j=2: max(60, 55) - 50 = 10;  j=3: max(70) - 60 = 10
#      F = 55 / 3 = 18.333...
# FWT: j=2: R12 - R02 = 5 - 2 = 3;  j=3: R23 - R03 = 8 - 3 = 5;  j=4: R34 - R04 = 10 - 4 = 6
#      FWT = 14 / 3 = 4.666...
# --------------------------------------------------------------------------------------------
C = np.array(
    [
        [1.0, 2.0, 3.0, 4.0],
        [40.0, 5.0, 6.0, 7.0],
        [50.0, 60.0, 8.0, 9.0],
        [65.0, 55.0, 70.0, 10.0],
        [30.0, 50.0, 60.0, 80.0],
    ]
)

# --------------------------------------------------------------------------------------------
# Matrix P, T = 2, positive backward transfer and a base row that would dominate if it were
# (wrongly) included in the forgetting max.
#
#            s1   s2
#   row 0:   99    5    (base)
#   row 1:   40   10
#   row 2:   60   70
#
# AP = [40, (60 + 70) / 2 = 65];  LA = (40 + 70) / 2 = 55
# BWT = (60 - 40) / 1 = 20;  TRACE = 20 / 2 = 10
# F   = max(R11) - R21 = 40 - 60 = -20     (row 0's 99 is not a candidate)
# FWT = R12 - R02 = 10 - 5 = 5
# --------------------------------------------------------------------------------------------
P = np.array([[99.0, 5.0], [40.0, 10.0], [60.0, 70.0]])


def test_matrix_a_all_metrics():
    assert average_performance(A) == pytest.approx([50.0, 65.0, 175.0 / 3])
    assert final_average_performance(A) == pytest.approx(175.0 / 3)
    assert learning_accuracy(A) == pytest.approx(190.0 / 3)
    assert backward_transfer(A) == pytest.approx(-7.5)
    assert backward_transfer(A, denominator="T-1") == pytest.approx(-7.5)
    assert backward_transfer(A, denominator="T") == pytest.approx(-5.0)
    assert forgetting(A) == pytest.approx(17.5)
    assert forward_transfer(A) == pytest.approx(15.0)


def test_forgetting_differs_from_negative_bwt():
    # Matrix A: F = 17.5 but -BWT = 7.5, because stage 1 peaked at row 2 (70), not at R11 (50).
    assert forgetting(A) == pytest.approx(17.5)
    assert -backward_transfer(A) == pytest.approx(7.5)
    assert forgetting(A) != pytest.approx(-backward_transfer(A))


def test_matrix_c_all_metrics():
    assert average_performance(C) == pytest.approx([40.0, 55.0, 190.0 / 3, 55.0])
    assert final_average_performance(C) == pytest.approx(55.0)
    assert learning_accuracy(C) == pytest.approx(62.5)
    assert backward_transfer(C, "T-1") == pytest.approx(-10.0)
    assert backward_transfer(C, "T") == pytest.approx(-7.5)
    assert forgetting(C) == pytest.approx(55.0 / 3)
    assert forward_transfer(C) == pytest.approx(14.0 / 3)


def test_matrix_p_positive_transfer_and_base_row_excluded_from_forgetting():
    assert average_performance(P) == pytest.approx([40.0, 65.0])
    assert learning_accuracy(P) == pytest.approx(55.0)
    assert backward_transfer(P) == pytest.approx(20.0)
    assert backward_transfer(P, "T") == pytest.approx(10.0)
    assert forgetting(P) == pytest.approx(-20.0)
    assert forward_transfer(P) == pytest.approx(5.0)


def test_bwt_denominators_relate_by_factor():
    # Same sum, different denominators: TRACE = BWT * (T - 1) / T.
    for R in (A, C, P):
        T = R.shape[1]
        assert backward_transfer(R, "T") == pytest.approx(backward_transfer(R, "T-1") * (T - 1) / T)


def test_bwt_rejects_unknown_denominator():
    with pytest.raises(ValueError, match="denominator"):
        backward_transfer(A, denominator="T+1")  # type: ignore[arg-type]


def test_summarize_matrix_a():
    s = summarize(A)
    assert set(s) == {"ap", "final_ap", "la", "bwt", "bwt_trace", "forgetting", "fwt"}
    assert s["ap"] == pytest.approx([50.0, 65.0, 175.0 / 3])
    assert s["final_ap"] == pytest.approx(175.0 / 3)
    assert s["la"] == pytest.approx(190.0 / 3)
    assert s["bwt"] == pytest.approx(-7.5)
    assert s["bwt_trace"] == pytest.approx(-5.0)
    assert s["forgetting"] == pytest.approx(17.5)
    assert s["fwt"] == pytest.approx(15.0)
    # Plain Python values (not numpy scalars), so the dict serialises with json.
    assert isinstance(s["ap"], list)
    assert all(type(v) is float for v in s["ap"])
    for key in ("final_ap", "la", "bwt", "bwt_trace", "forgetting", "fwt"):
        assert type(s[key]) is float, key


def test_summarize_is_json_serialisable():
    import json

    assert json.loads(json.dumps(summarize(C)))["final_ap"] == pytest.approx(55.0)
    assert json.loads(json.dumps(summarize([[30.0], [70.0]])))["bwt"] is None


def test_single_stage():
    # T = 1: R = [[30], [70]]. AP = [70], LA = 70; BWT, forgetting, FWT undefined -> None.
    R = [[30.0], [70.0]]
    assert average_performance(R) == [70.0]
    assert final_average_performance(R) == 70.0
    assert learning_accuracy(R) == 70.0
    assert backward_transfer(R) is None
    assert backward_transfer(R, "T") is None
    assert forgetting(R) is None
    assert forward_transfer(R) is None
    assert summarize(R) == {
        "ap": [70.0],
        "final_ap": 70.0,
        "la": 70.0,
        "bwt": None,
        "bwt_trace": None,
        "forgetting": None,
        "fwt": None,
    }


def test_accepts_nested_lists():
    assert summarize(A.tolist()) == summarize(A)
    assert validate_matrix(A.astype(int).tolist()).dtype == np.float64


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((3, 3)),  # square: missing the base row
        np.zeros((2, 3)),  # too few rows
        np.zeros((4, 2)),  # too many rows
        np.zeros((1, 0)),  # T = 0
        np.zeros((0, 0)),
        np.zeros(4),  # 1-D
        np.zeros((2, 1, 1)),  # 3-D
    ],
)
def test_wrong_shapes_raise(bad):
    with pytest.raises(ValueError, match="shape"):
        summarize(bad)


def test_ragged_or_non_numeric_raises():
    with pytest.raises(ValueError):
        summarize([[1.0, 2.0], [3.0], [4.0, 5.0]])
    with pytest.raises(ValueError):
        summarize([["a"], ["b"]])


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_entries_raise(value):
    R = A.copy()
    R[0, 2] = value  # even an entry no metric reads is rejected
    with pytest.raises(ValueError, match="NaN"):
        summarize(R)
    for fn in (average_performance, learning_accuracy, backward_transfer, forgetting):
        with pytest.raises(ValueError, match="NaN"):
            fn(R)


# --------------------------------------------------------------------------------------------
# mean_ci / student_t_ppf
# --------------------------------------------------------------------------------------------
def test_mean_ci_textbook_example():
    # values 1..5: mean 3, sample variance = (4 + 1 + 0 + 1 + 4) / 4 = 2.5, n = 5, df = 4,
    # t_{0.975, 4} = 2.776 -> half-width = 2.776 * sqrt(2.5) / sqrt(5) = 2.776 * 0.7071 ~= 1.963
    mean, hw = mean_ci([1, 2, 3, 4, 5])
    assert mean == pytest.approx(3.0)
    assert hw == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5), rel=1e-3)
    assert hw == pytest.approx(2.7764451051977935 * math.sqrt(2.5) / math.sqrt(5), rel=1e-9)


def test_mean_ci_other_levels_and_sizes():
    # Two values [0, 2]: mean 1, s = sqrt(2), df = 1, t_{0.975, 1} = 12.706 -> hw = 12.706.
    mean, hw = mean_ci([0.0, 2.0])
    assert mean == pytest.approx(1.0)
    assert hw == pytest.approx(12.706204736174693, rel=1e-9)
    # 99 % level, df = 4: t_{0.995, 4} = 4.604 -> hw = 4.604 * sqrt(2.5) / sqrt(5).
    _, hw99 = mean_ci(np.array([1, 2, 3, 4, 5]), confidence=0.99)
    assert hw99 == pytest.approx(4.604094871349992 * math.sqrt(0.5), rel=1e-9)
    # 90 % level, df = 2 (values 1, 2, 3: s = 1): t_{0.95, 2} = 2.920 -> hw = 2.920 / sqrt(3).
    _, hw90 = mean_ci((1.0, 2.0, 3.0), confidence=0.90)
    assert hw90 == pytest.approx(2.9199855803537242 / math.sqrt(3), rel=1e-9)


def test_mean_ci_single_value_and_constant():
    assert mean_ci([42.0]) == (42.0, None)
    mean, hw = mean_ci([7.0, 7.0, 7.0])
    assert mean == pytest.approx(7.0)
    assert hw == 0.0
    assert type(mean) is float and type(hw) is float


@pytest.mark.parametrize(
    ("values", "confidence"),
    [([], 0.95), ([1.0, math.nan], 0.95), ([1.0, 2.0], 0.0), ([1.0, 2.0], 1.0)],
)
def test_mean_ci_errors(values, confidence):
    with pytest.raises(ValueError):
        mean_ci(values, confidence)


@pytest.mark.parametrize(
    ("q", "df", "expected"),
    [
        # Reference values computed with mpmath (30 digits), matching printed t tables.
        (0.975, 1, 12.706204736174693),
        (0.975, 2, 4.3026527297494618),
        (0.975, 4, 2.7764451051977935),
        (0.975, 10, 2.2281388519862744),
        (0.975, 30, 2.0422724563012379),
        (0.995, 3, 5.8409093097333554),
        (0.95, 5, 2.0150483733330235),
        (0.9995, 1, 636.61924876878973),
        (0.975, 10**7, 1.9599642217672051),  # close to the normal 1.95996
    ],
)
def test_student_t_ppf_table(q, df, expected):
    assert student_t_ppf(q, df) == pytest.approx(expected, rel=1e-9)
    assert student_t_ppf(1 - q, df) == pytest.approx(-expected, rel=1e-9)


@pytest.mark.parametrize("q", [0.6, 0.9, 0.975, 0.999])
def test_student_t_ppf_closed_forms(q):
    # df = 1 (Cauchy): t = tan(pi (q - 1/2));  df = 2: t = (2q - 1) / sqrt(2 q (1 - q)).
    assert student_t_ppf(q, 1) == pytest.approx(math.tan(math.pi * (q - 0.5)), rel=1e-9)
    assert student_t_ppf(q, 2) == pytest.approx((2 * q - 1) / math.sqrt(2 * q * (1 - q)), rel=1e-9)
    assert student_t_ppf(0.5, 3) == 0.0


def test_student_t_ppf_errors():
    with pytest.raises(ValueError):
        student_t_ppf(1.0, 3)
    with pytest.raises(ValueError):
        student_t_ppf(0.9, 0)


# --- groups of columns inside a mixed stream -------------------------------------------------
def test_summarize_columns_with_every_column_equals_summarize():
    rng = np.random.default_rng(0)
    for T in (1, 2, 3, 5):
        R = rng.uniform(0, 100, size=(T + 1, T))
        full, grouped = summarize(R), summarize_columns(R, range(T))
        assert full.keys() == grouped.keys()
        for key in full:
            assert grouped[key] == pytest.approx(full[key]), key


def test_summarize_columns_reads_the_streams_own_rows():
    # stages: 0 = task A (accuracy), 1 = text (perplexity), 2 = task B (accuracy)
    R = [[10, 30.0, 20],   # base
         [80, 25.0, 30],   # after A
         [60, 20.0, 50],   # after text: A drops, B gains before it is trained
         [70, 22.0, 90]]   # after B
    acc = summarize_columns(R, [0, 2])
    assert acc["ap"] == pytest.approx([80, 60, 80])  # rows 1..3 over the trained columns
    assert acc["final_ap"] == pytest.approx(80)
    assert acc["la"] == pytest.approx((80 + 90) / 2)
    assert acc["bwt"] == pytest.approx(70 - 80)  # only A precedes the last stage
    assert acc["bwt_trace"] == pytest.approx((70 - 80) / 2)
    assert acc["forgetting"] == pytest.approx(max(80, 60) - 70)  # rows 1 and 2 count for A
    assert acc["fwt"] == pytest.approx(50 - 20)  # B just before training (row 2) vs base
    ppl = summarize_columns(R, [1], higher_is_better=False)
    assert ppl["ap"] == pytest.approx([20, 22])
    assert ppl["la"] == pytest.approx(20)
    assert ppl["bwt"] == pytest.approx(-(22 - 20))  # perplexity rose by 2: negative BWT
    assert ppl["forgetting"] == pytest.approx(22 - 20)
    assert ppl["fwt"] == pytest.approx(-(25 - 30))  # A's training lowered its perplexity


def test_summarize_columns_rejects_bad_columns():
    with pytest.raises(ValueError, match="cols"):
        summarize_columns([[0, 0], [1, 1], [2, 2]], [2])


# --------------------------------------------------------------------------------------------
# FUAR (CKL). Scores are split accuracies in %, before and after one training step.
#
# Step 1: invariant 80 -> 60 (forgotten 20), updated 10 -> 50 (+40), new 0 -> 30 (+30)
#         FUAR = 20 / (40 + 30) = 2/7
# Step 2: invariant 50 -> 70 (improved: forgotten clips to 0), updated 40 -> 30 (lost: gain
#         clips to 0), new 20 -> 60 (+40); alone FUAR = 0 / 40 = 0
# Both:   (20 + 0) / (70 + 40) = 2/11
# --------------------------------------------------------------------------------------------
STEP_1 = ({"invariant": 80.0, "updated": 10.0, "new": 0.0},
          {"invariant": 60.0, "updated": 50.0, "new": 30.0})

STEP_2 = ({"invariant": 50.0, "updated": 40.0, "new": 20.0},
          {"invariant": 70.0, "updated": 30.0, "new": 60.0})


def test_knowledge_gaps_by_hand():
    assert knowledge_gaps(*STEP_1) == pytest.approx((20.0, 40.0, 30.0))
    assert knowledge_gaps(*STEP_2) == pytest.approx((0.0, 0.0, 40.0))


def test_fuar_by_hand():
    assert fuar([STEP_1]) == pytest.approx(2 / 7)
    assert fuar([STEP_2]) == 0.0  # gained without forgetting
    assert fuar([STEP_1, STEP_2]) == pytest.approx(20 / 110)


def test_fuar_not_defined_when_nothing_gained():
    no_gain = ({"invariant": 90.0, "updated": 40.0, "new": 30.0},
               {"invariant": 50.0, "updated": 40.0, "new": 10.0})
    assert knowledge_gaps(*no_gain) == pytest.approx((40.0, 0.0, 0.0))
    assert fuar([no_gain]) is None  # "n.d.": forgetting without any gain
    assert fuar([]) is None


def test_fuar_missing_splits_count_zero():
    # the first period of a stream has only new facts: no invariant or updated probes
    first = ({"new": 12.5, "invariant": None}, {"new": 62.5, "invariant": None})
    assert knowledge_gaps(*first) == (0.0, 0.0, 50.0)
    assert fuar([first]) == 0.0
    with pytest.raises(ValueError, match="finite"):
        knowledge_gaps({"invariant": float("nan")}, {"invariant": 1.0})


# --------------------------------------------------------------------------------------------
# Partial matrices (an evaluation schedule skipped cells: NaN or None, allow_missing=True).
# Matrix C without the cells a sampled schedule did not score ("-"):
#
#            s1   s2   s3   s4
#   row 0:    1    2    3    4    (base: always full)
#   row 1:   40    5    -    -    (just trained s1, next s2)
#   row 2:    -   60    8    -    (s2, next s3; s1 not sampled)
#   row 3:    -   55   70   10    (s3, next s4; s2 sampled, s1 not)
#   row 4:   30   50   60   80    (last row: always full)
#
# AP_1 = 40;  AP_2 = mean(60) = 60 (estimate; full: 55);  AP_3 = (55 + 70) / 2 = 62.5
# (estimate; full: 63.33);  AP_4 = 55;  ap_estimated = [2, 3]
# LA = 62.5, BWT = -10, TRACE = -7.5, FWT = 14/3: the cells they read are all scored (as in C)
# F:   j=1: max(R11) - R41 = 40 - 30 = 10 (rows 2, 3 not scored; full: 35)
#      j=2: max(60, 55) - 50 = 10;  j=3: 70 - 60 = 10;  F = 10, a lower bound of 18.33
# --------------------------------------------------------------------------------------------
_ = None

C_PARTIAL = [
    [1.0, 2.0, 3.0, 4.0],
    [40.0, 5.0, _, _],
    [_, 60.0, 8.0, _],
    [_, 55.0, 70.0, 10.0],
    [30.0, 50.0, 60.0, 80.0],
]


def test_partial_matrix_by_hand():
    m = summarize(C_PARTIAL, allow_missing=True)
    assert m["ap"] == pytest.approx([40.0, 60.0, 62.5, 55.0])
    assert m["final_ap"] == pytest.approx(55.0)
    assert m["la"] == pytest.approx(62.5)
    assert m["bwt"] == pytest.approx(-10.0)
    assert m["bwt_trace"] == pytest.approx(-7.5)
    assert m["forgetting"] == pytest.approx(10.0)
    assert m["fwt"] == pytest.approx(14.0 / 3)
    assert m["ap_estimated"] == [2, 3]
    assert m["forgetting_lower_bound"] is True
    assert ap_estimated_rows(C_PARTIAL) == [2, 3]
    grouped = summarize_columns(C_PARTIAL, range(4), allow_missing=True)
    assert grouped.keys() == m.keys()
    for key in m:
        assert grouped[key] == pytest.approx(m[key]), key
    nan = np.array(C_PARTIAL, dtype=float)  # NaN and None mean the same
    assert summarize(nan, allow_missing=True) == m


def test_partial_matrix_is_rejected_unless_allowed():
    with pytest.raises(ValueError, match="NaN"):
        summarize(C_PARTIAL)
    with pytest.raises(ValueError, match="NaN"):
        summarize_columns(C_PARTIAL, range(4))


@pytest.mark.parametrize("M", [A, C, P])
def test_full_matrix_gives_the_same_results_with_allow_missing(M):
    assert summarize(M, allow_missing=True) == summarize(M)
    cols = range(M.shape[1])
    assert summarize_columns(M, cols, allow_missing=True) == summarize_columns(M, cols)


@pytest.mark.parametrize("cell, what", [((2, 1), "learning accuracy"), ((4, 0), "BWT"),
                                        ((1, 1), "FWT"), ((0, 2), "FWT")])
def test_cells_a_schedule_always_scores_are_required(cell, what):
    R = C.copy()
    R[cell] = math.nan  # the diagonal, the last row, the next stage, the base row
    with pytest.raises(ValueError, match="not scored"):
        summarize(R, allow_missing=True)
    with pytest.raises(ValueError, match="not scored"):
        summarize_columns(R, range(4), allow_missing=True)
    fn = {"learning accuracy": learning_accuracy, "BWT": backward_transfer,
          "FWT": forward_transfer}[what]
    with pytest.raises(ValueError, match=what):
        fn(R, allow_missing=True)


def test_infinite_entries_are_rejected_even_when_missing_cells_are_allowed():
    R = C.copy()
    R[1, 3] = math.inf
    with pytest.raises(ValueError, match="infinite"):
        summarize(R, allow_missing=True)


def test_partial_group_columns_by_hand():
    # the mixed stream of test_summarize_columns_reads_the_streams_own_rows, with task A not
    # scored after the text stage: the accuracy group's row 2 has no scored cell among the
    # stages trained by then (A), so AP_2 is None, and A's forgetting max is over row 1 only
    R = [[10, 30.0, 20],
         [80, 25.0, 30],
         [None, 20.0, 50],
         [70, 22.0, 90]]
    acc = summarize_columns(R, [0, 2], allow_missing=True)
    assert acc["ap"] == [80.0, None, 80.0]
    assert acc["ap_estimated"] == [2]
    assert acc["la"] == pytest.approx((80 + 90) / 2)
    assert acc["bwt"] == pytest.approx(70 - 80)
    assert acc["forgetting"] == pytest.approx(80 - 70)  # = the full value here (80 > 60)
    assert acc["forgetting_lower_bound"] is True
    assert acc["fwt"] == pytest.approx(50 - 20)
    ppl = summarize_columns(R, [1], higher_is_better=False, allow_missing=True)
    assert "ap_estimated" not in ppl  # the perplexity column is fully scored
    assert ppl["forgetting"] == pytest.approx(22 - 20)


def test_stream_metrics_by_hand():
    # 3 rows after the base (boundaries), 2 stages; stage 0 trained at row 1, stage 1 at row 3
    R = [[50.0, 40.0], [80.0, 42.0], [70.0, 60.0], [60.0, 90.0]]
    m = summarize_stream(R, [0, 1], trained_rows=[1, 3], before_rows=[0, 2])
    assert m["ap"] == [80.0, 70.0, 75.0] and m["final_ap"] == 75.0
    assert m["la"] == pytest.approx((80 + 90) / 2)
    assert m["bwt"] == pytest.approx(60 - 80)  # only stage 0 was trained before the last row
    assert m["bwt_trace"] == pytest.approx((60 - 80) / 2)
    assert m["forgetting"] == pytest.approx(max(80 - 60, 70 - 60))
    assert m["fwt"] == pytest.approx(60 - 40)  # stage 1 before training (row 2) vs base
    ppl = summarize_stream(R, [0], [1, 3], [0, 2], higher_is_better=False)
    assert ppl["bwt"] == pytest.approx(-(60 - 80)) and ppl["final_ap"] == 60.0
