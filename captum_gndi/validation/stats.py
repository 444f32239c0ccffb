"""Statistics that compare importance scores with ablation damage across units.

A *unit* is whatever was ablated (a layer, a channel, ...). Every function takes a score vector
``(U,)`` and a damage vector ``(U,)`` over the same units; a score may also be a stack ``(S, U)``
of several runs of one method (e.g. random scores with ``S`` seeds), in which case each statistic
is the mean of the per-run statistics. (One concept, the agreement statistics and their shared
resampling conventions, so the module stays one file past 500 lines.)

Conventions (see ``docs/statistics.md``):

- A score or damage whose relative spread ``(max - min) / max|x|`` is below ``1e-6`` is
  *constant*: it has no rank correlation, and the result carries a note instead of NaN.
- Confidence intervals come from :func:`scipy.stats.bootstrap` over the units: each resample
  draws ``U`` unit indices with replacement and evaluates every vector on the same indices
  (paired resampling). The interval is BCa; where BCa is undefined (a degenerate bootstrap
  distribution, e.g. a score that ranks the units exactly like the damage, or resamples in
  which one side is constant, where the correlation is undefined) it falls back to the
  percentile interval of the resamples where the statistic is defined, and says so in
  ``ci_method``.
- p-values come from :func:`scipy.stats.permutation_test` (``permutation_type="pairings"``):
  the damage is held fixed and the units of the score are permuted; two-sided; exact when
  ``U!`` is at most the number of permutations requested.
- Correlations are rounded to 12 decimals so that exact agreement reads exactly 1 (or 0).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy import stats

__all__ = [
    "CONSTANT_RTOL",
    "CORRELATIONS",
    "PARTIAL",
    "STATISTICS",
    "Agreement",
    "Estimate",
    "correlation",
    "is_constant",
    "partial_spearman",
    "per_example_agreement",
    "spearman_difference",
    "top_k_overlap",
    "verdict",
]

CONSTANT_RTOL = 1e-6
CORRELATIONS = ("pearson", "spearman", "kendall")
PARTIAL = "partial_spearman"
"""Key of the partial Spearman correlation given depth among a report's statistics."""
STATISTICS = (*CORRELATIONS, PARTIAL)
"""The statistics a validation report holds per criterion and damage metric, in table order."""
CorrelationKind = Literal["pearson", "spearman", "kendall"]
CIMethod = Literal["BCa", "percentile"]

_DECIMALS = 12
_EXPLAINED_RTOL = 1e-9  # residual norm / rank norm below which a variable is fully explained
_BATCH_ELEMENTS = 1 << 20  # bound on the (runs x resamples x units) of one vectorised call


@dataclass(frozen=True)
class Estimate:
    """A statistic with its bootstrap confidence interval and permutation p-value.

    Attributes:
        value: The point estimate, or ``None`` when it is undefined (``note`` says why).
        ci_low: Lower bound of the confidence interval (``None`` if not computed).
        ci_high: Upper bound of the confidence interval (``None`` if not computed).
        p_value: Two-sided permutation p-value (``None`` if not computed).
        ci_method: ``"BCa"`` or ``"percentile"`` (the fallback where BCa is undefined).
        note: Why ``value`` is ``None``, e.g. ``"constant score: no correlation"``.
    """

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    ci_method: str | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, float | str | None]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class Agreement:
    """Distribution over examples of the per-example rank correlation across units.

    Attributes:
        median: Median Spearman correlation over the examples used (``None`` if none).
        q25: 25th percentile (``None`` if no example was used).
        q75: 75th percentile (``None`` if no example was used).
        n_used: Number of examples (times runs) that entered the summary.
        n_skipped: Number skipped because their score or damage row was constant.
    """

    median: float | None
    q25: float | None
    q75: float | None
    n_used: int
    n_skipped: int

    def to_dict(self) -> dict[str, float | int | None]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def is_constant(values: np.ndarray, rtol: float = CONSTANT_RTOL) -> bool:
    """Whether ``values`` are equal up to a relative spread of ``rtol``.

    Args:
        values: Any array.
        rtol: Largest ``(max - min) / max|values|`` still called constant.

    Returns:
        ``True`` when ``max - min <= rtol * max|values|`` (all zeros included).

    Examples:
        >>> is_constant(np.array([3.0, 3.0 + 1e-9, 3.0]))
        True
        >>> is_constant(np.array([1.0, 2.0]))
        False
    """
    return bool(_flat(np.asarray(values, dtype=float).reshape(-1), rtol))


def correlation(
    scores: np.ndarray,
    damage: np.ndarray,
    kind: CorrelationKind = "spearman",
    *,
    n_boot: int = 2000,
    n_perm: int = 2000,
    seed: int = 0,
    confidence_level: float = 0.95,
    ci_method: CIMethod = "BCa",
) -> Estimate:
    """Correlation of scores with damage across units, with bootstrap CI and permutation p.

    Args:
        scores: ``(U,)`` scores, or ``(S, U)`` for ``S`` runs whose correlations are averaged.
        damage: ``(U,)`` damage of ablating each unit.
        kind: ``"pearson"``, ``"spearman"`` or ``"kendall"`` (tau-b).
        n_boot: Bootstrap resamples of the units (0: no interval).
        n_perm: Permutations for the p-value (0: no p-value).
        seed: Seed of the resampling and the permutations.
        confidence_level: Coverage of the interval.
        ci_method: ``"BCa"`` (default) or ``"percentile"``.

    Returns:
        An :class:`Estimate`; ``value`` is ``None`` with a note when either side is constant.

    Examples:
        >>> est = correlation(np.array([1.0, 2, 3, 4]), np.array([1.0, 3, 2, 4]), n_boot=0)
        >>> est.value
        0.8
    """
    x, y = _check_pair(scores, damage)
    corr = _correlation_function(kind)
    note = _constant_note(x, y)
    if note:
        return Estimate(None, note=note)
    n = y.shape[-1]
    work = len(x) * n

    def resampled(idx: np.ndarray) -> np.ndarray:
        return corr(x[:, idx], y[idx]).mean(axis=0)

    # permuting the units permutes the ranks: Spearman's permutations need no re-ranking
    px, py, pcorr = x, y, corr
    if kind == "spearman":
        px, py, pcorr = stats.rankdata(x, axis=-1), stats.rankdata(y), _pearson

    def permuted(idx: np.ndarray) -> np.ndarray:
        return pcorr(px[:, idx], py).mean(axis=0)

    low, high, used = _bootstrap(resampled, n, n_boot, seed, confidence_level, ci_method, work)
    p_value = _permutation_p(permuted, n, n_perm, seed, work)
    return Estimate(_point(resampled, n), low, high, p_value, used)


def partial_spearman(
    scores: np.ndarray,
    damage: np.ndarray,
    control: np.ndarray,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    confidence_level: float = 0.95,
    ci_method: CIMethod = "BCa",
) -> Estimate:
    """Partial Spearman correlation of scores and damage given a control (e.g. depth).

    The ranks of the scores and of the damage are each regressed (least squares, with
    intercept) on the ranks of the control; the result is the Pearson correlation of the two
    residuals. When the control's ranks explain one side entirely (residual norm below
    ``1e-9`` of its rank norm; e.g. a score equal to depth) the partial correlation is 0
    exactly: that side knows nothing beyond the control.

    Args:
        scores: ``(U,)`` scores or ``(S, U)`` runs (averaged).
        damage: ``(U,)`` damage.
        control: ``(U,)`` control variable, e.g. the depth (forward position) of each unit.
        n_boot: Bootstrap resamples (0: no interval).
        seed: Seed of the resampling.
        confidence_level: Coverage of the interval.
        ci_method: ``"BCa"`` or ``"percentile"``.

    Returns:
        An :class:`Estimate` without p-value.

    Examples:
        >>> depth = np.arange(5.0)
        >>> partial_spearman(depth, np.array([1.0, 0, 3, 2, 4]), depth, n_boot=0).value
        0.0
    """
    x, y = _check_pair(scores, damage)
    z = _check_pair(control, damage, names=("control", "damage"))[0][0]
    note = _constant_note(x, y)
    if note:
        return Estimate(None, note=note)
    n = y.shape[-1]

    def resampled(idx: np.ndarray) -> np.ndarray:
        return _partial(x[:, idx], y[idx], z[idx]).mean(axis=0)

    low, high, used = _bootstrap(
        resampled, n, n_boot, seed, confidence_level, ci_method, len(x) * n
    )
    return Estimate(_point(resampled, n), low, high, None, used)


def spearman_difference(
    scores: np.ndarray,
    other: np.ndarray,
    damage: np.ndarray,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    confidence_level: float = 0.95,
    ci_method: CIMethod = "BCa",
) -> Estimate:
    """Spearman(scores, damage) - Spearman(other, damage), with a paired bootstrap CI.

    Each bootstrap resample draws the same units for both methods, so the interval accounts
    for the correlation between the two methods' errors.

    Args:
        scores: ``(U,)`` or ``(S, U)`` scores of the method under test.
        other: ``(U,)`` or ``(S', U)`` scores of the method compared with (e.g. a control;
            several runs are averaged).
        damage: ``(U,)`` damage.
        n_boot: Bootstrap resamples (0: no interval).
        seed: Seed of the resampling.
        confidence_level: Coverage of the interval.
        ci_method: ``"BCa"`` or ``"percentile"``.

    Returns:
        An :class:`Estimate` without p-value; ``value`` is ``None`` with a note when either
        method (or the damage) is constant. :func:`verdict` reads it.

    Examples:
        >>> y = np.array([1.0, 2, 3, 4])
        >>> spearman_difference(y, y[::-1], y, n_boot=0).value
        2.0
    """
    x, y = _check_pair(scores, damage)
    w, _ = _check_pair(other, damage, names=("other", "damage"))
    note = _constant_note(x, y) or _constant_note(w, y, side="compared score")
    if note:
        return Estimate(None, note=note)
    n = y.shape[-1]

    def resampled(idx: np.ndarray) -> np.ndarray:
        yi = y[idx]
        return np.round(
            _spearman(x[:, idx], yi).mean(axis=0) - _spearman(w[:, idx], yi).mean(axis=0),
            _DECIMALS,
        )

    work = (len(x) + len(w)) * n
    low, high, used = _bootstrap(resampled, n, n_boot, seed, confidence_level, ci_method, work)
    return Estimate(_point(resampled, n), low, high, None, used)


def verdict(difference: Estimate) -> str | None:
    """Plain-words reading of a :func:`spearman_difference` interval.

    Args:
        difference: The estimate of ``Spearman(method) - Spearman(control)``.

    Returns:
        ``"beats"`` (interval above 0), ``"loses to"`` (below 0), ``"does not beat"``
        (includes 0), or ``None`` when the difference or its interval is undefined.

    Examples:
        >>> verdict(Estimate(0.1, 0.02, 0.2))
        'beats'
    """
    if difference.value is None or difference.ci_low is None or difference.ci_high is None:
        return None
    if difference.ci_low > 0:
        return "beats"
    if difference.ci_high < 0:
        return "loses to"
    return "does not beat"


def top_k_overlap(scores: np.ndarray, damage: np.ndarray, k: int) -> float | None:
    """Fraction of the ``k`` most damaging units that are among the ``k`` top-scored units.

    Ties are broken by unit order (stable sort), for scores and damage alike.

    Args:
        scores: ``(U,)`` scores or ``(S, U)`` runs (the overlaps are averaged).
        damage: ``(U,)`` damage.
        k: How many units, ``1 <= k <= U``.

    Returns:
        ``|top-k by score & top-k by damage| / k``, or ``None`` for a constant score.

    Examples:
        >>> top_k_overlap(np.array([4.0, 3, 2, 1]), np.array([4.0, 1, 3, 2]), 2)
        0.5
    """
    x, y = _check_pair(scores, damage)
    n = y.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of units ({n}); got {k}.")
    if _constant_note(x, y, side="score"):
        return None
    top_damage = set(np.argsort(-y, kind="stable")[:k].tolist())
    overlaps = [len(top_damage.intersection(np.argsort(-row, kind="stable")[:k])) for row in x]
    return float(np.mean(overlaps)) / k


def per_example_agreement(scores: np.ndarray, damage: np.ndarray) -> Agreement:
    """Per-example Spearman correlation across units of predicted and true damage.

    Args:
        scores: ``(N, U)`` per-example scores, or ``(S, N, U)`` for ``S`` runs (pooled).
        damage: ``(N, U)`` per-example damage of ablating each unit.

    Returns:
        The median and interquartile range of the correlations over examples; rows where the
        score or the damage is constant are skipped and counted.

    Examples:
        >>> s = np.array([[1.0, 2, 3], [3.0, 2, 1], [1.0, 1, 1]])
        >>> per_example_agreement(s, np.array([[1.0, 2, 3]] * 3))
        Agreement(median=0.0, q25=-0.5, q75=0.5, n_used=2, n_skipped=1)
    """
    x = _finite(scores, "per-example scores")
    y = _finite(damage, "per-example damage")
    if y.ndim != 2 or x.ndim not in (2, 3) or x.shape[-2:] != y.shape:
        raise ValueError(
            "per-example scores must have shape (N, U) or (S, N, U) and per-example damage "
            f"(N, U) with the same N and U; got {x.shape} and {y.shape}."
        )
    x = x.reshape(-1, y.shape[0], y.shape[1])
    keep = ~(_flat(x) | _flat(y))
    rho = _spearman(x, y)[keep]
    if rho.size == 0:
        return Agreement(None, None, None, 0, int((~keep).sum()))
    q25, median, q75 = (float(q) for q in np.percentile(rho, [25, 50, 75]))
    return Agreement(median, q25, q75, int(rho.size), int((~keep).sum()))


# -- vectorised statistics along the last axis ------------------------------------------------


def _flat(a: np.ndarray, rtol: float = CONSTANT_RTOL) -> np.ndarray:
    """Constant rows of ``a`` along its last axis."""
    return np.ptp(a, axis=-1) <= rtol * np.max(np.abs(a), axis=-1)


def _finish(num: np.ndarray, den: np.ndarray, undefined: np.ndarray) -> np.ndarray:
    """``num / den`` clipped to [-1, 1] and rounded; NaN where undefined (a constant side)."""
    undefined = undefined | (den <= 0)
    r = np.where(undefined, np.nan, num / np.where(undefined, 1.0, den))
    return np.round(np.clip(r, -1.0, 1.0), _DECIMALS)


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ac = a - a.mean(axis=-1, keepdims=True)
    bc = b - b.mean(axis=-1, keepdims=True)
    num = (ac * bc).sum(axis=-1)
    den = np.sqrt((ac * ac).sum(axis=-1) * (bc * bc).sum(axis=-1))
    return _finish(num, den, _flat(a) | _flat(b))


def _spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _pearson(stats.rankdata(a, axis=-1), stats.rankdata(b, axis=-1))


def _kendall(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall's tau-b by Knight's O(m log m) algorithm, vectorised over rows.

    The units of each row are sorted by ``(b, a)``; the discordant pairs are then the
    inversions of ``a`` (counted with a Fenwick tree, all rows at once), and
    ``tau_b = (n0 - n_a - n_b + n_ab - 2 * discordant) / sqrt((n0 - n_a) (n0 - n_b))`` with
    ``n0`` all pairs and ``n_a``, ``n_b``, ``n_ab`` the pairs tied in a, in b, in both.
    """
    a, b = np.broadcast_arrays(a, b)
    shape, m = a.shape[:-1], a.shape[-1]
    a2, b2 = a.reshape(-1, m), b.reshape(-1, m)
    order = np.lexsort((a2, b2), axis=-1)
    a_s, b_s = np.take_along_axis(a2, order, -1), np.take_along_axis(b2, order, -1)
    n0 = m * (m - 1) // 2
    new_b = np.diff(b_s, axis=-1) != 0
    tied_a = _tied_pairs(np.diff(np.sort(a2, axis=-1), axis=-1) != 0)
    tied_b = _tied_pairs(new_b)
    tied_ab = _tied_pairs(new_b | (np.diff(a_s, axis=-1) != 0))
    discordant = _inversions(stats.rankdata(a_s, method="dense", axis=-1).astype(np.intp))
    num = n0 - tied_a - tied_b + tied_ab - 2 * discordant
    den = np.sqrt((n0 - tied_a).astype(float) * (n0 - tied_b))
    return _finish(num, den, _flat(a2) | _flat(b2)).reshape(shape)


def _tied_pairs(new_value: np.ndarray) -> np.ndarray:
    """Tied pairs per row of a sorted sequence; ``new_value[:, t]``: element t+1 starts a run."""
    rows, m = new_value.shape[0], new_value.shape[1] + 1
    position = np.broadcast_to(np.arange(m), (rows, m))
    starts = np.where(np.concatenate([np.ones((rows, 1), bool), new_value], axis=1), position, 0)
    return (position - np.maximum.accumulate(starts, axis=1)).sum(axis=1)


def _inversions(ranks: np.ndarray) -> np.ndarray:
    """Per row, the pairs ``t' < t`` with ``ranks[t'] > ranks[t]`` (ranks in 1..m).

    One Fenwick tree per row over the values 1..m, stored value-major in a flat array (entry
    ``value * rows + row``; value ``m + 1`` is a sink for updates past the end).
    """
    rows, m = ranks.shape
    depth = m.bit_length()
    tree = np.zeros((m + 2) * rows, np.int32)
    row = np.arange(rows)
    count = np.zeros(rows, np.int64)
    for t in range(m):
        i, at_most = ranks[:, t].copy(), np.zeros(rows, np.int64)
        for _ in range(depth):
            at_most += tree[i * rows + row]
            i -= i & -i
        count += t - at_most
        i = ranks[:, t].copy()
        for _ in range(depth + 1):
            tree[np.minimum(i, m + 1) * rows + row] += 1
            i += i & -i
    return count


def _partial(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Pearson correlation of the residuals of rank(x) and rank(y) regressed on rank(z)."""
    rz = stats.rankdata(z, axis=-1)
    rz = rz - rz.mean(axis=-1, keepdims=True)
    ss_z = (rz * rz).sum(axis=-1, keepdims=True)
    residuals, explained = [], []
    for v in (x, y):
        rv = stats.rankdata(v, axis=-1)
        rv = rv - rv.mean(axis=-1, keepdims=True)
        beta = (rv * rz).sum(axis=-1, keepdims=True) / np.where(ss_z > 0, ss_z, 1.0)
        e = rv - beta * rz
        ss_e, ss_v = (e * e).sum(axis=-1), (rv * rv).sum(axis=-1)
        residuals.append(e)
        explained.append((ss_v > 0) & (ss_e <= _EXPLAINED_RTOL**2 * ss_v))
    ex, ey = residuals
    num = (ex * ey).sum(axis=-1)
    den = np.sqrt((ex * ex).sum(axis=-1) * (ey * ey).sum(axis=-1))
    return np.where(explained[0] | explained[1], 0.0, _finish(num, den, den <= 0))


_FUNCTIONS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "pearson": _pearson,
    "spearman": _spearman,
    "kendall": _kendall,
}


def _correlation_function(kind: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    if kind not in _FUNCTIONS:
        raise ValueError(f"Unknown correlation {kind!r}; use one of {CORRELATIONS}.")
    return _FUNCTIONS[kind]


# -- resampling -------------------------------------------------------------------------------


def _point(statistic: Callable[[np.ndarray], np.ndarray], n: int) -> float:
    return float(statistic(np.arange(n)))


def _batch(work: int) -> int:
    """Resamples per vectorised call so that one call handles at most ~1M elements."""
    return max(1, _BATCH_ELEMENTS // max(work, 1))


def _bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray],
    n: int,
    n_boot: int,
    seed: int,
    confidence_level: float,
    ci_method: str,
    work: int,
) -> tuple[float | None, float | None, str | None]:
    """Bootstrap CI of ``statistic(unit_indices)``; falls back to percentile if BCa fails."""
    if n_boot == 0:
        return None, None, None
    if ci_method not in ("BCa", "percentile"):
        raise ValueError(f"ci_method must be 'BCa' or 'percentile'; got {ci_method!r}.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # BCa's 0/0 on degenerate data
        result = stats.bootstrap(
            (np.arange(n),),
            lambda idx, axis=-1: statistic(idx),
            n_resamples=n_boot,
            batch=_batch(work),
            vectorized=True,
            confidence_level=confidence_level,
            method=ci_method,
            rng=seed,
        )
    low, high = result.confidence_interval
    if not (np.isfinite(low) and np.isfinite(high)):
        # BCa undefined (degenerate distribution) or resamples with a constant side (NaN):
        # percentile interval of the defined resamples.
        defined = result.bootstrap_distribution[np.isfinite(result.bootstrap_distribution)]
        if defined.size == 0:
            return None, None, None
        ci_method = "percentile"
        alpha = (1 - confidence_level) / 2
        low, high = np.quantile(defined, [alpha, 1 - alpha])
    return float(low), float(high), ci_method


def _permutation_p(
    statistic: Callable[[np.ndarray], np.ndarray], n: int, n_perm: int, seed: int, work: int
) -> float | None:
    """Two-sided p-value of ``statistic(permuted_unit_indices)`` against the identity."""
    if n_perm == 0:
        return None
    result = stats.permutation_test(
        (np.arange(n),),
        lambda idx, axis=-1: statistic(idx),
        permutation_type="pairings",
        n_resamples=n_perm,
        vectorized=True,
        batch=_batch(work),
        alternative="two-sided",
        rng=seed,
    )
    return float(result.pvalue)


# -- input checks -----------------------------------------------------------------------------


def _finite(values: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contain NaN or inf; remove or fix those units first.")
    return a


def _check_pair(
    scores: np.ndarray, damage: np.ndarray, names: tuple[str, str] = ("scores", "damage")
) -> tuple[np.ndarray, np.ndarray]:
    """``scores`` as ``(S, U)`` and ``damage`` as ``(U,)``, both finite, ``U >= 3``."""
    x = _finite(scores, names[0])
    y = _finite(damage, names[1])
    if x.ndim == 1:
        x = x[None]
    if y.ndim != 1 or x.ndim != 2 or x.shape[1] != y.shape[0]:
        raise ValueError(
            f"{names[0]} must have shape (U,) or (S, U) and {names[1]} shape (U,) for the same "
            f"U units; got {np.shape(scores)} and {np.shape(damage)}."
        )
    if y.shape[0] < 3:
        raise ValueError(f"Need at least 3 units to correlate; got {y.shape[0]}.")
    return x, y


def _constant_note(x: np.ndarray, y: np.ndarray, side: str = "score") -> str | None:
    if np.any(_flat(x)):
        return f"constant {side}: no correlation"
    if _flat(y):
        return "constant damage: no correlation"
    return None
