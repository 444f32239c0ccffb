"""The stopping rule of :func:`captum_gndi.verify_top_k`, as pure functions of numbers.

Nothing here touches a model: :func:`screen_and_verify` takes predicted damages (scores) and
any function that returns true damages, and decides which units to verify and when to stop.
:func:`captum_gndi.verify_top_k` gives it G-NDI scores and the batched ablation of
:mod:`captum_gndi.interventions.ablation`; experiments replay it on recorded brute-force
damages.

Stopping rule. Let ``r_u = d_u / s_u`` be the true/predicted ratio of a verified unit, ``D_k``
the k-th largest verified damage, ``s*`` the largest score of an unverified unit, and ``rho``
the conformal ``q``-quantile of the ratios of every verified and audited unit (the
``ceil((n + 1) q)``-th smallest of their ``n`` ratios). Stop as soon as

    ``D_k > rho * s*``.

Derivation. An unverified unit ``u`` belongs to the true top k only if ``d_u > D_k``, i.e.
``r_u > D_k / s_u >= D_k / s* > rho``. If a true top-k unit's ratio is exchangeable with the
calibration ratios, ``P(r_u > rho) <= 1 - q`` (the conformal quantile's guarantee), so the
expected number of true top-k units left unverified is at most ``k (1 - q)``. Choosing
``q = 1 - expected_misses / k`` (default ``expected_misses = 1``; ``q`` is at least 0.5) makes
that bound ``expected_misses``. The audit must be able to move the ``q``-quantile on its own,
which needs at least ``1 / (1 - q) = k / expected_misses`` tail ratios: that is its default size.
Units are verified in score order, so ``s*`` is the next unit's score; after every pass the next
pass verifies the first half (at most ``units_per_pass``) of the units the rule does not yet
exclude (those with ``rho * s_u >= D_k``): each pass can lower ``rho`` or raise ``D_k``, so
passes shrink as the rule nears its stop and overshoot stays small. Units with a zero score
(``h == b`` everywhere, so ``d = 0``) are excluded unless a zero-scored unit with positive damage
has been seen (then ``rho`` is infinite and everything is verified).

Least damaging units (``largest=False``, e.g. the channels to prune). The mirror image: units
are verified in order of *increasing* score, ``D_k`` is the k-th smallest verified damage,
``rho`` the conformal lower ``q``-quantile of the ratios (the ``ceil((n + 1) q)``-th largest),
and the rule stops as soon as ``rho * s* > D_k`` for the smallest unverified score ``s*``: an
unverified unit is among the k least damaging only if ``r_u < D_k / s_u <= D_k / s* < rho``.

The exchangeability assumption is optimistic in one known way: a unit enters the true top k
*because* its damage is high, so true top-k units lean towards high ratios. On the trained CIFAR
ResNets the ratio's upper tail is also heavier for low-scored units (first-order G-NDI
underestimates small effects most), which the audit feeds into ``rho`` and which makes the rule
conservative there; ``docs/results.md`` reports the measured recall against brute force.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from .result import UnitKey, VerifyResult

__all__ = [
    "audit_size",
    "calibration_quantile",
    "lower_quantile",
    "miss_probability",
    "ratios",
    "screen_and_verify",
    "upper_quantile",
]


def calibration_quantile(
    k: int, expected_misses: float, quantile: float | None, units_per_pass: int
) -> float:
    """Check the rule's options; return the calibration quantile ``q``.

    Args:
        k: How many units to return.
        expected_misses: The bound on the expected number of true top-k units left unverified.
        quantile: ``q`` itself, or ``None`` for ``max(0.5, 1 - expected_misses / k)``.
        units_per_pass: Units per call of the intervention.

    Returns:
        ``q``.

    Raises:
        ValueError: For ``k < 1``, ``expected_misses <= 0``, ``quantile`` outside (0, 1) or
            ``units_per_pass < 1``.
        TypeError: For a non-numeric ``expected_misses``.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}.")
    if isinstance(expected_misses, bool) or not isinstance(expected_misses, (int, float)):
        raise TypeError(f"expected_misses must be a number, got {expected_misses!r}.")
    if not expected_misses > 0:
        raise ValueError(f"expected_misses must be > 0, got {expected_misses!r}.")
    if quantile is not None and not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile!r}.")
    if (
        isinstance(units_per_pass, bool)
        or not isinstance(units_per_pass, int)
        or units_per_pass < 1
    ):
        raise ValueError(f"units_per_pass must be an integer >= 1, got {units_per_pass!r}.")
    return max(0.5, 1 - expected_misses / k) if quantile is None else float(quantile)


def audit_size(audit: int | float | None, q: float, n_units: int, pool: int) -> int:
    """The audit's size: ``ceil(1 / (1 - q))`` by default, a count, or a fraction of the units.

    Never more than ``pool`` (the units outside G-NDI's top k).
    """
    if audit is None:
        size = math.ceil(1 / (1 - q) - 1e-9)  # enough tail ratios to set the q-quantile
    elif isinstance(audit, bool) or not isinstance(audit, (int, float)) or audit < 0:
        raise ValueError(
            f"audit must be None (ceil(1 / (1 - quantile))), a count >= 0 or a fraction in "
            "(0, 1), "
            f"got {audit!r}."
        )
    elif isinstance(audit, float) and audit < 1:
        size = math.ceil(audit * n_units)
    else:
        size = int(audit)
    return min(size, pool)


def ratios(
    units: Iterable[UnitKey], verified: Mapping[UnitKey, float], scores: Mapping[UnitKey, float]
) -> np.ndarray:
    """True/predicted damage ``d / s`` of ``units`` (``inf`` for a damaging unit scored 0)."""
    out = []
    for unit in units:
        s, d = scores[unit], verified[unit]
        if s > 0:
            out.append(d / s)
        elif d > 0:
            out.append(math.inf)  # G-NDI blind to a damaging unit: nothing can be excluded
    return np.asarray(out, dtype=np.float64)


def upper_quantile(ratios: np.ndarray, q: float) -> float:
    """The conformal q-quantile: the ceil((n + 1) q)-th smallest of n ratios (inf if > n)."""
    if not len(ratios):
        return math.inf
    j = math.ceil((len(ratios) + 1) * q - 1e-9)
    return math.inf if j > len(ratios) else float(np.sort(ratios)[j - 1])


def lower_quantile(ratios: np.ndarray, q: float) -> float:
    """The conformal lower q-quantile: the ceil((n + 1) q)-th largest of n ratios (0 if > n)."""
    return max(0.0, -upper_quantile(-ratios, q))


def miss_probability(
    unverified: Sequence[UnitKey],
    scores: Mapping[UnitKey, float],
    ratios: np.ndarray,
    d_k: float,
    largest: bool = True,
) -> float:
    """``1 - prod_u (1 - p_u)``, ``p_u = #{i: r_i s_u > D_k} / (n + 1)`` over n ratios
    (``r_i s_u < D_k`` for the least damaging units, ``largest=False``)."""
    if not len(unverified):
        return 0.0
    s = np.array([scores[u] for u in unverified], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        carried = np.nan_to_num(np.outer(s, ratios), nan=0.0)
        carried = carried > d_k if largest else carried < d_k
    p = carried.sum(1) / (len(ratios) + 1)
    return float(1 - np.prod(1 - p))


def screen_and_verify(
    scores: Mapping[UnitKey, float],
    ablate: Callable[[Sequence[UnitKey]], Mapping[UnitKey, float]],
    k: int,
    expected_misses: float = 1.0,
    quantile: float | None = None,
    audit: int | float | None = None,
    units_per_pass: int = 8,
    seed: int = 0,
    progress: bool = False,
    largest: bool = True,
) -> VerifyResult:
    """The stopping rule of :func:`verify_top_k` on given scores and any exact intervention.

    :func:`~captum_gndi.verify_top_k` calls this with G-NDI scores and its batched ablations
    (:func:`captum_gndi.interventions.ablation.batch_damage`); call it
    directly to verify another screen (a different criterion) or another intervention, or to
    replay the rule on recorded brute-force damages (``ablate=lambda us: {u: d[u] for u in
    us}``).

    Args:
        scores: Unit -> predicted damage (>= 0), in a fixed order (ties keep it).
        ablate: Called with a list of units, returns their true damage.
        k: How many units to return (1 <= k <= len(scores)).
        expected_misses: See :func:`~captum_gndi.verify_top_k`.
        quantile: See :func:`~captum_gndi.verify_top_k`.
        audit: See :func:`~captum_gndi.verify_top_k`.
        units_per_pass: At most this many units per call of ``ablate`` after the first calls
            (the audit, then G-NDI's top k).
        seed: Seed of the audit sample.
        progress: Show a progress bar of the ablations.
        largest: ``True`` for the k most damaging units, ``False`` for the k least damaging
            (the mirrored rule of the module docstring).

    Returns:
        A :class:`VerifyResult` (its ``damage``, ``engine`` and scoring time are left for the
        caller to fill in).

    Examples:
        >>> damage = {("a", 0): 3.0, ("a", 1): 1.0, ("a", 2): 0.5}
        >>> result = screen_and_verify({("a", 0): 2.0, ("a", 1): 1.5, ("a", 2): 0.1},
        ...                            lambda us: {u: damage[u] for u in us}, k=1)
        >>> result.units
        [('a', 0)]
    """
    q = calibration_quantile(k, expected_misses, quantile, units_per_pass)
    units = list(scores)
    n_units = len(units)
    if k > n_units:
        raise ValueError(
            f"k={k} is larger than the number of units ({n_units}); pass k <= {n_units}."
        )
    negative = [u for u in units if not scores[u] >= 0]
    if negative:
        raise ValueError(f"Scores must be >= 0 (predicted damage); got {negative[:3]} ...")
    start = time.perf_counter()
    sign = -1 if largest else 1
    ranking = sorted(range(n_units), key=lambda i: sign * scores[units[i]])  # stable on ties
    ordered = [units[i] for i in ranking]
    rank_of = {unit: r + 1 for r, unit in enumerate(ordered)}
    pool = ordered[k:]
    m = audit_size(audit, q, n_units, len(pool))
    rng = np.random.default_rng(seed)
    audit_units = [pool[i] for i in sorted(rng.choice(len(pool), size=m, replace=False))]
    verified: dict[UnitKey, float] = {}
    bar = tqdm(total=n_units, desc="verify_top_k", disable=not progress, unit="ablation")

    def run(chunk: Sequence[UnitKey]) -> None:
        chunk = [u for u in chunk if u not in verified]
        if chunk:
            found = ablate(chunk)
            verified.update({u: float(found[u]) for u in chunk})
            bar.update(len(chunk))

    run(audit_units)
    run(ordered[:k])
    position = k
    stopped = "exhausted"
    while True:
        while position < n_units and ordered[position] in verified:
            position += 1
        d_k = sorted(verified.values(), reverse=largest)[k - 1]
        rho = (upper_quantile if largest else lower_quantile)(ratios(verified, verified, scores), q)
        if position >= n_units:
            break
        bounds = [
            rho * scores[u] if scores[u] > 0 else (math.inf if math.isinf(rho) else 0.0)
            for u in ordered[position:]
        ]
        bar.set_postfix(D_k=f"{d_k:.3g}", rho=f"{rho:.3g}")
        if (bounds[0] < d_k) if largest else (bounds[0] > d_k):
            stopped = "rule"
            break
        candidates = [
            u
            for u, bound in zip(ordered[position:], bounds)
            if (bound >= d_k if largest else bound <= d_k) and u not in verified
        ]
        # half the remaining candidates (at most units_per_pass): every pass can lower rho or
        # raise D_k and exclude the rest, so passes shrink near the stopping point
        run(candidates[: min(units_per_pass, math.ceil(len(candidates) / 2))])
    bar.close()
    top_units = sorted(verified, key=lambda u: (sign * verified[u], rank_of[u]))[:k]
    unverified = [u for u in ordered if u not in verified]
    miss = miss_probability(unverified, scores, ratios(verified, verified, scores), d_k, largest)
    return VerifyResult(
        units=top_units,
        damages=np.array([verified[u] for u in top_units]),
        predicted=np.array([scores[u] for u in top_units]),
        predicted_ranks=[rank_of[u] for u in top_units],
        n_ablations=len(verified),
        n_units=n_units,
        miss_probability=miss,
        ratio=rho,
        stopped=stopped,
        audit=audit_units,
        verified=dict(verified),
        scores=dict(scores),
        damage="custom",
        engine="custom",
        timings={"verify_s": time.perf_counter() - start},
        settings={
            "k": k,
            "expected_misses": expected_misses,
            "quantile": q,
            "audit": len(audit_units),
            "units_per_pass": units_per_pass,
            "seed": seed,
            "largest": largest,
        },
    )
