"""Continual-learning metrics over an accuracy matrix, plus a Student-t confidence interval.

Pure numpy / standard library: no torch, no scipy.

The accuracy matrix ``R`` has shape ``(T + 1, T)``: ``R[t, j - 1]`` is the score on stage ``j``'s
test set after training stage ``t``. Row 0 is the untrained base model, rows ``1..T`` follow each
stage, columns are stages ``1..T``. The formulas below use the design doc's 1-based stage indices,
writing ``R[t][j]`` for ``R[t, j - 1]``.

By default every entry must be finite (the base row and the upper triangle included), so
matrices with missing evaluations are rejected rather than silently averaged. With
``allow_missing=True`` a NaN (or ``None``) entry is a cell an evaluation schedule did not score
(``eval.every`` / ``eval.sample_earlier``), and every metric reads the scored cells only:

* ``AP_t`` averages the scored cells of row ``t`` among stages ``1..t`` (``None`` when none is
  scored); a row with unscored cells gives an *estimate*, listed in ``ap_estimated``;
* forgetting takes its max over the scored rows ``l in [j, T-1]``: a lower bound of the full
  matrix's value when some of them were skipped (``forgetting_lower_bound``);
* LA, BWT and FWT read only cells that a schedule always scores (the diagonal ``R[j][j]``, the
  next stage ``R[j-1][j]``, the base row and the last row); a missing one raises ValueError.

On a full matrix the results are the same with or without ``allow_missing``. Metrics that need
at least two stages (BWT, forgetting, FWT) return ``None`` when ``T == 1``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np

__all__ = [
    "ap_estimated_rows",
    "average_performance",
    "backward_transfer",
    "final_average_performance",
    "forgetting",
    "forward_transfer",
    "fuar",
    "knowledge_gaps",
    "learning_accuracy",
    "mean_ci",
    "student_t_ppf",
    "summarize",
    "validate_matrix",
]


def validate_matrix(R: np.ndarray | Iterable[Iterable[float]],
                    allow_missing: bool = False) -> np.ndarray:
    """Return ``R`` as a float array of shape ``(T + 1, T)`` with ``T >= 1``; else ValueError.

    Raises ValueError on a non-numeric input, a wrong shape, or any NaN/infinite entry. With
    ``allow_missing`` NaN and ``None`` entries are accepted (as NaN: cells not scored); infinite
    ones are still rejected.
    """
    try:
        arr = np.asarray(R, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"accuracy matrix must be numeric: {exc}") from exc
    if arr.ndim != 2:
        raise ValueError(
            f"accuracy matrix must be 2-D with shape (T+1, T), got {arr.ndim}-D shape {arr.shape}"
        )
    rows, cols = arr.shape
    if cols < 1 or rows != cols + 1:
        raise ValueError(
            f"accuracy matrix must have shape (T+1, T) with T >= 1 (row 0 = base model, one row "
            f"per stage after it), got shape {arr.shape}"
        )
    bad = np.isinf(arr) if allow_missing else ~np.isfinite(arr)
    if bad.any():
        where = [(int(r), int(c)) for r, c in np.argwhere(bad)[:5]]
        what = "infinite" if allow_missing else "NaN or infinite"
        raise ValueError(
            f"accuracy matrix contains {what} entries at (row, col) {where}"
            + (" ..." if int(bad.sum()) > 5 else "")
        )
    return arr


def _nanmean(values: np.ndarray) -> float | None:
    """Mean of the scored (non-NaN) values; None when there are none."""
    scored = values[~np.isnan(values)]
    return float(scored.mean()) if scored.size else None


def _need(arr: np.ndarray, cells: Iterable[tuple[int, int]], what: str) -> None:
    """ValueError unless every ``(row, col)`` cell is scored (0-based array indices)."""
    missing = [(r, c) for r, c in cells if math.isnan(arr[r, c])]
    if missing:
        raise ValueError(
            f"{what} needs the cells (row, col) {missing[:5]}{' ...' if len(missing) > 5 else ''}"
            " of the accuracy matrix, which were not scored (an evaluation schedule always "
            "scores the base row, the last row, the stage just trained and the next one)")


def ap_estimated_rows(R: np.ndarray | Iterable[Iterable[float]],
                      cols: Iterable[int] | None = None) -> list[int]:
    """Rows ``t`` (1-based, as in ``AP_t``) whose AP averages only some of the stages ``<= t``
    (of ``cols``, 0-based; default all) because the others were not scored."""
    arr = validate_matrix(R, allow_missing=True)
    T = arr.shape[1]
    cols = sorted(set(range(T) if cols is None else cols))
    return [t for t in range(1, T + 1)
            if any(math.isnan(arr[t, j]) for j in cols if j < t)]


def _forgetting_lower_bound(arr: np.ndarray, cols: Iterable[int]) -> bool:
    """Whether some row between a stage's own training and the last was not scored for it."""
    T = arr.shape[1]
    return any(math.isnan(arr[row, j]) for j in cols if j + 1 < T for row in range(j + 1, T))


def average_performance(R: np.ndarray | Iterable[Iterable[float]],
                        allow_missing: bool = False) -> list[float | None]:
    """Average performance after every stage: ``AP_t = mean_{j<=t} R[t][j]`` for ``t = 1..T``.

    Returns a list of length ``T``; ``AP_t`` averages the stages seen so far, after stage ``t``
    (with ``allow_missing``: those of them scored in row ``t``; None when none is).
    """
    arr = validate_matrix(R, allow_missing)
    T = arr.shape[1]
    return [_nanmean(arr[t, :t]) for t in range(1, T + 1)]


def final_average_performance(R: np.ndarray | Iterable[Iterable[float]],
                              allow_missing: bool = False) -> float | None:
    """Final average performance ``AP_T = mean_{j<=T} R[T][j]`` (last row, all stages)."""
    arr = validate_matrix(R, allow_missing)
    return _nanmean(arr[-1])


def learning_accuracy(R: np.ndarray | Iterable[Iterable[float]],
                      allow_missing: bool = False) -> float:
    """Learning accuracy ``LA = mean_{j=1..T} R[j][j]`` (score on each stage right after it)."""
    arr = validate_matrix(R, allow_missing)
    T = arr.shape[1]
    _need(arr, [(j, j - 1) for j in range(1, T + 1)], "learning accuracy")
    return float(np.mean([arr[j, j - 1] for j in range(1, T + 1)]))


def backward_transfer(
    R: np.ndarray | Iterable[Iterable[float]],
    denominator: Literal["T-1", "T"] = "T-1",
    allow_missing: bool = False,
) -> float | None:
    """Backward transfer ``BWT = sum_{j=1..T-1} (R[T][j] - R[j][j]) / D``.

    ``denominator="T-1"`` (default, GEM / Lopez-Paz & Ranzato) uses ``D = T - 1``, i.e. the mean
    over the first ``T - 1`` stages; ``denominator="T"`` is the TRACE variant with ``D = T`` (same
    sum). Negative values mean forgetting. Returns ``None`` when ``T == 1`` (either variant).
    """
    if denominator not in ("T-1", "T"):
        raise ValueError(f"denominator must be 'T-1' or 'T', got {denominator!r}")
    arr = validate_matrix(R, allow_missing)
    T = arr.shape[1]
    if T < 2:
        return None
    _need(arr, [c for j in range(1, T) for c in ((T, j - 1), (j, j - 1))], "BWT")
    total = sum(arr[T, j - 1] - arr[j, j - 1] for j in range(1, T))
    return float(total / (T - 1 if denominator == "T-1" else T))


def forgetting(R: np.ndarray | Iterable[Iterable[float]],
               allow_missing: bool = False) -> float | None:
    """Forgetting ``F = mean_{j=1..T-1} max_{l in [j, T-1]} (R[l][j] - R[T][j])``.

    For each earlier stage ``j``, the drop from its best score at any point from its own training
    (``l = j``) up to before the last stage (``l = T - 1``) to its final score. The base row is
    never a candidate. Returns ``None`` when ``T == 1``. With ``allow_missing`` the max runs over
    the scored rows only (``R[j][j]`` and the last row must be scored).
    """
    arr = validate_matrix(R, allow_missing)
    T = arr.shape[1]
    if T < 2:
        return None
    _need(arr, [c for j in range(1, T) for c in ((T, j - 1), (j, j - 1))], "forgetting")
    drops = [np.nanmax(arr[j:T, j - 1]) - arr[T, j - 1] for j in range(1, T)]
    return float(np.mean(drops))


def forward_transfer(R: np.ndarray | Iterable[Iterable[float]],
                     allow_missing: bool = False) -> float | None:
    """Forward transfer ``FWT = mean_{j=2..T} (R[j-1][j] - R[0][j])``.

    Score on stage ``j`` just before training on it, relative to the untrained base model (row 0).
    Returns ``None`` when ``T == 1``.
    """
    arr = validate_matrix(R, allow_missing)
    T = arr.shape[1]
    if T < 2:
        return None
    _need(arr, [c for j in range(2, T + 1) for c in ((j - 1, j - 1), (0, j - 1))], "FWT")
    return float(np.mean([arr[j - 1, j - 1] - arr[0, j - 1] for j in range(2, T + 1)]))


def summarize(R: np.ndarray | Iterable[Iterable[float]],
              allow_missing: bool = False) -> dict[str, float | list[float] | None]:
    """All metrics of ``R`` as plain Python values.

    Keys: ``ap`` (list of ``AP_t``, t = 1..T), ``final_ap`` (``AP_T``), ``la``, ``bwt``
    (denominator ``T - 1``), ``bwt_trace`` (denominator ``T``), ``forgetting``, ``fwt``. The last
    four are ``None`` when ``T == 1``. When ``allow_missing`` and some cell is not scored, also
    ``ap_estimated`` (:func:`ap_estimated_rows`) and ``forgetting_lower_bound`` (whether the
    forgetting max skipped unscored rows).
    """
    arr = validate_matrix(R, allow_missing)
    ap = average_performance(arr, allow_missing)
    out = {
        "ap": ap,
        "final_ap": ap[-1],
        "la": learning_accuracy(arr, allow_missing),
        "bwt": backward_transfer(arr, "T-1", allow_missing),
        "bwt_trace": backward_transfer(arr, "T", allow_missing),
        "forgetting": forgetting(arr, allow_missing),
        "fwt": forward_transfer(arr, allow_missing),
    }
    if np.isnan(arr).any():
        out["ap_estimated"] = ap_estimated_rows(arr)
        out["forgetting_lower_bound"] = _forgetting_lower_bound(arr, range(arr.shape[1]))
    return out


def summarize_columns(R: np.ndarray | Iterable[Iterable[float]], cols: Iterable[int],
                      higher_is_better: bool = True,
                      allow_missing: bool = False) -> dict[str, float | list[float] | None]:
    """The metrics of the stages ``cols`` (0-based) inside the matrix of a whole stream.

    A stream may mix scores that cannot be averaged together (accuracy and perplexity); each
    group gets its own metrics, but every formula still reads the stream's own rows: FWT takes
    the row just before a stage was trained, whatever stage that row followed, and forgetting
    looks at every row after a stage. For lower-is-better scores the differences are negated so
    that, as for accuracy, negative BWT and positive forgetting mean forgetting. With all
    columns and ``higher_is_better`` this equals :func:`summarize`.

    With ``allow_missing`` the group's cells that were not scored (NaN or None) are left out as
    in :func:`summarize`: AP_t over the group's scored cells of row t (None when none is),
    forgetting's max over the scored rows; ``ap_estimated`` (rows t, 1-based) and
    ``forgetting_lower_bound`` are added when some of the group's cells are missing.
    """
    arr = validate_matrix(R, allow_missing)
    T = arr.shape[1]
    cols = sorted(set(cols))
    if not cols or cols[0] < 0 or cols[-1] >= T:
        raise ValueError(f"cols must be stage indices in [0, {T - 1}], got {cols}")
    sign = 1.0 if higher_is_better else -1.0
    _need(arr, [c for j in cols for c in ((j + 1, j), (T, j))], "LA, BWT and forgetting")
    _need(arr, [c for j in cols if j >= 1 for c in ((j, j), (0, j))], "FWT")
    ap = [_nanmean(arr[t, [j for j in cols if j < t]]) for t in range(cols[0] + 1, T + 1)]
    before_last = [j for j in cols if j + 1 < T]
    bwt_sum = sum(sign * (arr[T, j] - arr[j + 1, j]) for j in before_last)
    drops = [max(sign * (arr[row, j] - arr[T, j]) for row in range(j + 1, T)
                 if not math.isnan(arr[row, j]))
             for j in before_last]
    fwt = [sign * (arr[j, j] - arr[0, j]) for j in cols if j >= 1]
    out = {
        "ap": ap,
        "final_ap": ap[-1],
        "la": float(np.mean([arr[j + 1, j] for j in cols])),
        "bwt": float(bwt_sum / len(before_last)) if before_last else None,
        "bwt_trace": float(bwt_sum / len(cols)) if before_last else None,
        "forgetting": float(np.mean(drops)) if drops else None,
        "fwt": float(np.mean(fwt)) if fwt else None,
    }
    if np.isnan(arr[:, cols]).any():
        out["ap_estimated"] = [t for t in ap_estimated_rows(arr, cols) if t > cols[0]]
        out["forgetting_lower_bound"] = _forgetting_lower_bound(arr, cols)
    return out


def summarize_stream(R: Iterable[Iterable[float]], cols: Iterable[int],
                     trained_rows: list[int | None], before_rows: list[int | None],
                     higher_is_better: bool = True) -> dict[str, Any]:
    """The metrics of a boundary-free text stream (everlearn.training.textstream), whose rows of R
    are
    boundaries rather than stages: ``R`` is (boundaries + 1) x stages.

    Stage j counts as trained at row ``trained_rows[j]`` (in everlearn.training.textstream: the
    boundary nearest to the end of its text; None: never reached) and as not yet trained at
    row ``before_rows[j]`` (the boundary nearest to where its text begins). With those rows
    in place of the diagonal the definitions are the stage-wise ones
    (:func:`summarize_columns`): ``AP_t`` over the stages trained by row t (None before the
    first), ``LA = mean R[a_j][j]``, ``BWT = mean (R[T][j] - R[a_j][j])`` over stages trained
    before the last row (``bwt_trace`` divides by every trained stage),
    ``F = mean max_{a_j <= l < T} (R[l][j] - R[T][j])`` and ``FWT = mean (R[b_j][j] - R[0][j])``
    over stages with ``b_j >= 1``. Lower-is-better columns are negated as there.
    """
    arr = np.asarray(R, dtype=float)
    if arr.ndim != 2 or arr.shape[0] < 2 or not np.isfinite(arr).all():
        raise ValueError(f"R must be a finite (rows >= 2) x stages matrix, got {arr.shape}")
    T = arr.shape[0] - 1
    sign = 1.0 if higher_is_better else -1.0
    done = [j for j in sorted(set(cols)) if trained_rows[j] is not None]
    ap: list[float | None] = []
    for t in range(1, T + 1):
        seen = [arr[t, j] for j in done if trained_rows[j] <= t]
        ap.append(float(np.mean(seen)) if seen else None)
    before_last = [j for j in done if trained_rows[j] < T]
    bwt_sum = sum(sign * (arr[T, j] - arr[trained_rows[j], j]) for j in before_last)
    drops = [max(sign * (arr[row, j] - arr[T, j]) for row in range(trained_rows[j], T))
             for j in before_last]
    fwt = [sign * (arr[before_rows[j], j] - arr[0, j]) for j in done
           if before_rows[j] is not None and before_rows[j] >= 1]
    return {
        "ap": ap,
        "final_ap": ap[-1],
        "la": float(np.mean([arr[trained_rows[j], j] for j in done])) if done else None,
        "bwt": float(bwt_sum / len(before_last)) if before_last else None,
        "bwt_trace": float(bwt_sum / len(done)) if before_last else None,
        "forgetting": float(np.mean(drops)) if drops else None,
        "fwt": float(np.mean(fwt)) if fwt else None,
    }


# --------------------------------------------------------------------------------------------
# Student's t quantile without scipy: numeric inversion of the t CDF, which is written with the
# regularized incomplete beta function I_x(a, b) (continued fraction, modified Lentz method, as in
# Numerical Recipes "betacf"). Exact to ~1e-12 for any confidence level and any df > 0.
# --------------------------------------------------------------------------------------------

_EPS = 1e-15
_TINY = 1e-300


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = _TINY if abs(d) < _TINY else d
    d = 1.0 / d
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = _TINY if abs(d) < _TINY else d
        c = 1.0 + aa / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = _TINY if abs(d) < _TINY else d
        c = 1.0 + aa / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function ``I_x(a, b)`` for ``a, b > 0``, ``0 <= x <= 1``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_bt = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    bt = math.exp(log_bt)
    if x < (a + 1.0) / (a + b + 2.0):
        return bt * _betacf(a, b, x) / a
    return 1.0 - bt * _betacf(b, a, 1.0 - x) / b


def _t_upper_tail(t: float, df: float) -> float:
    """``P(T > t)`` for ``t >= 0`` and Student's t with ``df`` degrees of freedom."""
    return 0.5 * _betainc(0.5 * df, 0.5, df / (df + t * t))


def student_t_ppf(q: float, df: float) -> float:
    """Quantile ``t`` with ``P(T <= t) = q`` for Student's t with ``df > 0`` degrees of freedom.

    Computed without scipy by bisection on the CDF ``1 - I_{df/(df+t^2)}(df/2, 1/2) / 2`` (for
    ``t >= 0``), using a continued-fraction regularized incomplete beta; relative error ~1e-12.
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    if not df > 0:
        raise ValueError(f"df must be positive, got {df}")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -student_t_ppf(1.0 - q, df)
    tail = 1.0 - q
    lo, hi = 0.0, 1.0
    while _t_upper_tail(hi, df) > tail:
        lo, hi = hi, hi * 2.0
        if hi > 1e300:  # pragma: no cover - unreachable for q representable below 1
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_upper_tail(mid, df) > tail:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * hi:
            break
    return 0.5 * (lo + hi)


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float | None]:
    """Mean and Student-t confidence half-width: ``t_{(1+c)/2, n-1} * s / sqrt(n)``.

    ``s`` is the sample standard deviation (``ddof=1``); the t quantile comes from
    :func:`student_t_ppf` (exact numeric inversion, no scipy). Returns ``(mean, None)`` for a
    single value (no spread can be estimated). Raises ValueError on an empty input, non-finite
    values, or ``confidence`` outside ``(0, 1)``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    arr = np.asarray(list(values), dtype=float).ravel()
    if arr.size == 0:
        raise ValueError("mean_ci needs at least one value")
    if not np.isfinite(arr).all():
        raise ValueError("mean_ci values contain NaN or infinite entries")
    mean = float(arr.mean())
    n = arr.size
    if n == 1:
        return mean, None
    sd = float(arr.std(ddof=1))
    t = student_t_ppf(0.5 * (1.0 + confidence), n - 1)
    return mean, float(t * sd / math.sqrt(n))


# --------------------------------------------------------------------------------------------
# Temporal knowledge: FUAR (Jang et al., ICLR 2022, "Towards Continual Knowledge Learning of
# Language Models", the Forgotten / (Updated + Acquired) Ratio).
# --------------------------------------------------------------------------------------------

KnowledgeScores = Mapping[str, "float | None"]


def knowledge_gaps(before: KnowledgeScores, after: KnowledgeScores) -> tuple[float, float, float]:
    """CKL's three gaps for one training step, as ``(forgotten, updated, acquired)``.

    ``before`` and ``after`` map the probe splits ``invariant``, ``updated`` and ``new`` to the
    score (accuracy in [0, 100]) on one fixed probe set, measured before and after the step
    (for worldline: the probes of period *t*, after stage *t - 1* and after stage *t*)::

        forgotten = max(0, before[invariant] - after[invariant])
        updated   = max(0, after[updated]    - before[updated])
        acquired  = max(0, after[new]        - before[new])

    This is CKL's ``Gap(T, D_a, D_b) = score of T after D_a - score of T after D_b``, clipped at
    zero. On a fixed probe set a gap is the *net* share of probes that flipped, e.g.
    ``100 * (right->wrong - wrong->right) / n`` for the invariant split. A split that is
    missing or None (no probes of that kind) contributes 0.
    """

    def score(m: KnowledgeScores, split: str) -> float | None:
        v = m.get(split)
        if v is not None and not math.isfinite(v):
            raise ValueError(f"knowledge score {split!r} must be finite, got {v}")
        return v

    def gap(a: float | None, b: float | None) -> float:
        return 0.0 if a is None or b is None else max(0.0, float(a) - float(b))

    return (gap(score(before, "invariant"), score(after, "invariant")),
            gap(score(after, "updated"), score(before, "updated")),
            gap(score(after, "new"), score(before, "new")))


def fuar(steps: Iterable[tuple[KnowledgeScores, KnowledgeScores]]) -> float | None:
    """FUAR = sum of forgotten / (sum of updated + sum of acquired) over the steps given.

    Each step is a ``(before, after)`` pair for :func:`knowledge_gaps`. CKL sums the gaps over
    its probe tasks; a stream of periods contributes one step per period (the probes of period
    *t* across the training of stage *t*). Lower is better: 0 = nothing forgotten; 1 = as much
    invariant knowledge lost as updated and new knowledge gained. Returns ``None`` — reported
    as "n.d." (not defined) — when nothing was gained (the denominator is 0).
    """
    forgotten = gained = 0.0
    for before, after in steps:
        f, u, a = knowledge_gaps(before, after)
        forgotten += f
        gained += u + a
    return forgotten / gained if gained > 0 else None

