"""The validation report: do the importance scores predict the damage of real ablations?

:func:`build_report` takes per-unit damage (one vector per damage metric) and per-unit scores
(one vector per criterion, or a stack of runs such as random seeds) and computes, with
:mod:`captum_gndi.validation.stats`:

- Pearson, Spearman and Kendall correlations of every criterion with every damage metric, each
  with a bootstrap confidence interval and a permutation p-value;
- the partial Spearman correlation given depth (what a score knows beyond "earlier layers
  matter more");
- for every criterion that is not a control, the paired bootstrap interval of its Spearman minus
  each control's, with a verdict: "beats", "does not beat" or "loses to";
- top-k overlap and, where per-example values are given, per-example agreement.

:class:`ValidationReport` holds the results; rendering them as words, markdown (verdicts first),
JSON, CSV and figures lives in :mod:`captum_gndi.validation.render` (words and markdown) and
:mod:`captum_gndi.validation.export` (JSON, CSV, figures, the report folder), which the report's
methods (:meth:`~ValidationReport.to_markdown`, :meth:`~ValidationReport.save`, ...) call.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..criteria import CONTROL_CRITERIA
from . import export, render, stats
from .stats import PARTIAL, STATISTICS, Agreement, Estimate

__all__ = ["PARTIAL", "SMALL_UNIT_COUNT", "STATISTICS", "ValidationReport", "build_report"]

SMALL_UNIT_COUNT = 15
"""Below this many units the report warns that correlations cannot separate criteria."""

_RUN = re.compile(r"(?P<criterion>.+)_seed\d+")


@dataclass
class ValidationReport:
    """Statistics of scores against ablation damage, ready to print or save.

    Build it with :func:`build_report`. Criteria are *groups* of score runs: a key
    ``NAME_seedK`` of the scores is run ``K`` of ``NAME``, and a ``(S, U)`` score array holds
    ``S`` runs; the statistics of a group average its runs' correlations.

    Attributes:
        units: Unit names (layers or channels), in forward order.
        depth: ``(U,)`` depth of each unit (forward position of its layer).
        damage: Metric -> ``(U,)`` damage; the first metric is the primary one.
        scores: Score key -> ``(U,)`` or ``(S, U)`` scores, as given.
        groups: Criterion -> its score keys (``random`` -> ``random_seed0``, ...).
        metadata: Free-form description of the run (model, data, baseline, ...).
        settings: Resampling settings (``n_boot``, ``n_perm``, ``seed``, ...).
        correlations: Criterion -> metric -> statistic -> :class:`~.stats.Estimate`; the
            statistics are ``pearson``, ``spearman``, ``kendall`` and ``partial_spearman``.
        comparisons: Criterion -> control -> metric -> ``Spearman(criterion) -
            Spearman(control)``.
        top_k: Criterion -> metric -> label (``"top-5"``, ``"top-10%"``) -> overlap or ``None``.
        top_k_sizes: Label -> ``k``.
        per_example: Criterion -> metric -> :class:`~.stats.Agreement`.
        warnings: Warnings shown at the top of the report.
    """

    units: list[str]
    depth: np.ndarray
    damage: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    groups: dict[str, list[str]]
    metadata: dict[str, Any]
    settings: dict[str, Any]
    correlations: dict[str, dict[str, dict[str, Estimate]]]
    comparisons: dict[str, dict[str, dict[str, Estimate]]]
    top_k: dict[str, dict[str, dict[str, float | None]]]
    top_k_sizes: dict[str, int]
    per_example: dict[str, dict[str, Agreement]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def primary_metric(self) -> str:
        """The damage metric the verdicts and figures use (the first given)."""
        return next(iter(self.damage))

    @property
    def criteria(self) -> list[str]:
        """Criteria that are not controls, in the order given."""
        return [c for c in self.groups if c not in CONTROL_CRITERIA]

    @property
    def methods(self) -> list[str]:
        """Deprecated name of :attr:`criteria` (kept for one release)."""
        warnings.warn(
            "ValidationReport.methods is deprecated; use ValidationReport.criteria.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.criteria

    @property
    def controls(self) -> list[str]:
        """Control criteria present, in the order given."""
        return [c for c in self.groups if c in CONTROL_CRITERIA]

    def runs(self, criterion: str) -> np.ndarray:
        """All score runs of one criterion as ``(S, U)`` (``S = 1`` for a single score).

        Args:
            criterion: A key of :attr:`groups`.

        Returns:
            The runs stacked in the order of ``groups[criterion]``.

        Examples:
            >>> report.runs("random").shape  # doctest: +SKIP
            (10, 16)
        """
        return np.concatenate([np.atleast_2d(self.scores[key]) for key in self.groups[criterion]])

    def verdicts(self) -> list[str]:
        """One plain-words sentence per criterion on the primary damage metric.

        Returns:
            Sentences such as ``"**G-NDI** (Spearman 0.98 [0.90, 1.00]; ...) beats depth
            (ΔSpearman +0.12 [0.04, 0.20]), but not gradient x activation (...)."``
            (see :func:`~captum_gndi.validation.render.render_verdicts`).
        """
        return render.render_verdicts(self)

    def to_markdown(self) -> str:
        """The report as markdown: settings, warnings, verdicts, then the tables.

        Returns:
            Markdown text (also what ``str(report)`` gives).
        """
        return render.render_markdown(self)

    def __str__(self) -> str:
        return self.to_markdown()

    def to_dict(self) -> dict[str, Any]:
        """Everything in the report as JSON-ready Python objects (no NaN; ``None`` instead).

        Returns:
            A dict that ``json.loads(json.dumps(d)) == d``.
        """
        return export.report_dict(self)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write the report, its data and its figures to a folder (created if needed).

        Args:
            out_dir: Output folder.

        Returns:
            Dict kind -> path: ``markdown`` (report.md), ``json`` (report.json),
            ``correlations`` (correlations.csv: one row per criterion, metric and statistic),
            ``units`` (units.csv: per-unit depth, damage and scores), ``scatter``
            (scatter_<primary metric>.png) and ``bars`` (bars.png; not written above 100 units).

        Examples:
            >>> paths = report.save("report/")  # doctest: +SKIP
            >>> paths["markdown"].read_text().splitlines()[0]  # doctest: +SKIP
            '# Validation report: do the scores predict the damage of ablations?'
        """
        return export.save_report(self, out_dir)


def build_report(
    units: list[str],
    depth: np.ndarray,
    damage: Mapping[str, np.ndarray],
    scores: Mapping[str, np.ndarray],
    damage_per_example: Mapping[str, np.ndarray] | None = None,
    scores_per_example: Mapping[str, np.ndarray] | None = None,
    metadata: Mapping[str, Any] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    *,
    n_perm: int = 2000,
    confidence_level: float = 0.95,
) -> ValidationReport:
    """Compare importance scores with ablation damage across units.

    Criteria named ``depth``, ``param_count``, ``activation_change``, ``random`` and
    ``grad_x_activation`` are controls; every other criterion is compared with each of them.

    Args:
        units: Names of the ``U`` units (layers or channels), in forward order.
        depth: ``(U,)`` forward position of each unit's layer (the partial correlations
            control for it).
        damage: Metric -> ``(U,)`` damage of ablating each unit; the first is the primary
            metric of the verdicts and figures.
        scores: Criterion -> ``(U,)`` scores (higher: more important), or ``(S, U)`` for ``S``
            runs; keys ``NAME_seedK`` are runs of ``NAME``. Runs are averaged.
        damage_per_example: Metric -> ``(N, U)`` per-example damage.
        scores_per_example: Criterion (or run key) -> ``(N, U)`` per-example scores.
        metadata: Description of the run shown at the top (model, data, baseline, ...).
        n_boot: Bootstrap resamples of the units per interval (0: no intervals, no verdicts).
        seed: Seed of all resampling.
        n_perm: Permutations per p-value (0: no p-values).
        confidence_level: Coverage of the intervals.

    Returns:
        The :class:`ValidationReport`.

    Examples:
        >>> damage = {"accuracy_drop": np.array([0.5, 0.3, 0.2, 0.1, 0.0])}
        >>> scores = {"gndi": np.array([9.0, 7, 5, 4, 1]), "depth": np.arange(5.0)[::-1]}
        >>> report = build_report(list("abcde"), np.arange(5.0), damage, scores, n_boot=200)
        >>> report.correlations["gndi"]["accuracy_drop"]["spearman"].value
        1.0
    """
    n = len(units)
    depth = _vector(depth, n, "depth")
    if not damage:
        raise ValueError("damage is empty; pass at least one metric -> (U,) damage vector.")
    if not scores:
        raise ValueError("scores is empty; pass at least one method -> (U,) scores.")
    damage = {m: _vector(v, n, f"damage['{m}']") for m, v in damage.items()}
    scores = {k: _runs_array(v, n, f"scores['{k}']") for k, v in scores.items()}
    groups = _groups(scores)
    runs = {
        m: np.concatenate([np.atleast_2d(scores[k]) for k in keys]) for m, keys in groups.items()
    }
    per_example = _per_example(groups, damage_per_example or {}, scores_per_example or {}, n)
    options = dict(n_boot=n_boot, seed=seed, confidence_level=confidence_level)

    correlations = {
        criterion: {
            metric: {
                **{
                    kind: stats.correlation(x, y, kind, n_perm=n_perm, **options)
                    for kind in stats.CORRELATIONS
                },
                PARTIAL: stats.partial_spearman(x, y, depth, **options),
            }
            for metric, y in damage.items()
        }
        for criterion, x in runs.items()
    }
    controls = [m for m in groups if m in CONTROL_CRITERIA]
    comparisons = {
        criterion: {
            control: {
                metric: stats.spearman_difference(runs[criterion], runs[control], y, **options)
                for metric, y in damage.items()
            }
            for control in controls
        }
        for criterion in groups
        if criterion not in CONTROL_CRITERIA
    }
    sizes = {"top-5": min(5, n), "top-10%": max(1, round(0.1 * n))}
    top_k = {
        criterion: {
            metric: {label: stats.top_k_overlap(x, y, k) for label, k in sizes.items()}
            for metric, y in damage.items()
        }
        for criterion, x in runs.items()
    }
    found = _warnings(n, depth, damage, controls)
    return ValidationReport(
        units=list(units),
        depth=depth,
        damage=damage,
        scores=scores,
        groups=groups,
        metadata=dict(metadata or {}),
        settings={
            "n_boot": n_boot,
            "n_perm": n_perm,
            "seed": seed,
            "confidence_level": confidence_level,
            "ci_method": "BCa",
            "constant_rtol": stats.CONSTANT_RTOL,
        },
        correlations=correlations,
        comparisons=comparisons,
        top_k=top_k,
        top_k_sizes=sizes,
        per_example=per_example,
        warnings=found,
    )


# -- helpers ----------------------------------------------------------------------------------


def _vector(values: np.ndarray, n: int, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if v.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one value per unit; got {v.shape}.")
    return v


def _runs_array(values: np.ndarray, n: int, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if v.ndim not in (1, 2) or v.shape[-1] != n:
        raise ValueError(f"{name} must have shape ({n},) or (runs, {n}); got {v.shape}.")
    return v


def _groups(scores: Mapping[str, np.ndarray]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for key in scores:
        match = _RUN.fullmatch(key)
        groups.setdefault(match["criterion"] if match else key, []).append(key)
    return groups


def _per_example(
    groups: dict[str, list[str]],
    damage: Mapping[str, np.ndarray],
    scores: Mapping[str, np.ndarray],
    n: int,
) -> dict[str, dict[str, Agreement]]:
    known = {key for keys in groups.values() for key in keys}
    unknown = sorted(set(scores) - known)
    if unknown:
        raise ValueError(
            f"scores_per_example has methods {unknown} that are not in scores; give every "
            "method's per-unit scores too."
        )
    result = {}
    for criterion, keys in groups.items():
        present = [np.asarray(scores[k], dtype=float) for k in keys if k in scores]
        if not present:
            continue
        for a in present:
            if a.shape[-1] != n:
                raise ValueError(
                    f"per-example scores of '{criterion}' must have {n} units; got {a.shape}."
                )
        stacked = np.concatenate([a.reshape(-1, *a.shape[-2:]) for a in present])
        result[criterion] = {
            metric: stats.per_example_agreement(stacked, np.asarray(y, dtype=float))
            for metric, y in damage.items()
        }
    return result


def _warnings(
    n: int, depth: np.ndarray, damage: Mapping[str, np.ndarray], controls: list[str]
) -> list[str]:
    found = []
    if n < SMALL_UNIT_COUNT:
        found.append(
            f"with {n} units the correlations cannot separate methods; validate at channel level."
        )
    if not controls:
        found.append(
            "no controls (depth, param_count, activation_change, random, grad_x_activation): "
            "nothing shows whether the scores beat a trivial ranking."
        )
    for metric, values in damage.items():
        if stats.is_constant(values):
            found.append(f"damage `{metric}` is constant across units: no correlation with it.")
        elif abs(stats.correlation(depth, values, n_boot=0, n_perm=0).value or 0.0) == 1.0:
            found.append(
                f"depth ranks the units exactly like `{metric}`: no score can know more than "
                "depth there, and every partial correlation given depth is 0."
            )
    return found
