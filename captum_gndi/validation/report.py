"""The validation report: do the importance scores predict the damage of real ablations?

:func:`build_report` takes per-unit damage (one vector per damage metric) and per-unit scores
(one vector per method, or a stack of runs such as random seeds) and computes, with
:mod:`captum_gndi.validation.stats`:

- Pearson, Spearman and Kendall correlations of every method with every damage metric, each
  with a bootstrap confidence interval and a permutation p-value;
- the partial Spearman correlation given depth (what a score knows beyond "earlier layers
  matter more");
- for every method that is not a control, the paired bootstrap interval of its Spearman minus
  each control's, with a verdict: "beats", "does not beat" or "loses to";
- top-k overlap and, where per-example values are given, per-example agreement.

:class:`ValidationReport` renders them as markdown (verdicts first), JSON, CSV and figures.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import stats
from .criteria import CONTROL_METHODS
from .stats import Agreement, Estimate

__all__ = ["SMALL_UNIT_COUNT", "ValidationReport", "build_report"]

SMALL_UNIT_COUNT = 15
"""Below this many units the report warns that correlations cannot separate methods."""

PARTIAL = "partial_spearman"
STATISTICS = (*stats.CORRELATIONS, PARTIAL)
_HEADERS = {
    "pearson": "Pearson",
    "spearman": "Spearman",
    "kendall": "Kendall",
    PARTIAL: "partial Spearman given depth",
}
_LABELS = {
    "gndi": "G-NDI",
    "gndi_path": "G-NDI (path-integrated)",
    "snip": "SNIP",
    "grasp": "GraSP",
    "synflow": "SynFlow",
    "hrank": "HRank",
    "taylor": "Taylor",
    "grad_x_activation": "gradient x activation",
    "layer_conductance": "layer conductance",
    "layer_integrated_gradients": "layer integrated gradients",
    "activation_change": "activation change ||h - b||",
    "param_count": "parameter count",
}
_RUN = re.compile(r"(?P<method>.+)_seed\d+")
_MAX_BAR_UNITS = 100


@dataclass
class ValidationReport:
    """Statistics of scores against ablation damage, ready to print or save.

    Build it with :func:`build_report`. Methods are *groups* of score runs: a key
    ``NAME_seedK`` of the scores is run ``K`` of ``NAME``, and a ``(S, U)`` score array holds
    ``S`` runs; the statistics of a group average its runs' correlations.

    Attributes:
        units: Unit names (layers or channels), in forward order.
        depth: ``(U,)`` depth of each unit (forward position of its layer).
        damage: Metric -> ``(U,)`` damage; the first metric is the primary one.
        scores: Score key -> ``(U,)`` or ``(S, U)`` scores, as given.
        groups: Method -> its score keys (``random`` -> ``random_seed0``, ...).
        metadata: Free-form description of the run (model, data, baseline, ...).
        settings: Resampling settings (``n_boot``, ``n_perm``, ``seed``, ...).
        correlations: Method -> metric -> statistic -> :class:`~.stats.Estimate`; the
            statistics are ``pearson``, ``spearman``, ``kendall`` and ``partial_spearman``.
        comparisons: Method -> control -> metric -> ``Spearman(method) - Spearman(control)``.
        top_k: Method -> metric -> label (``"top-5"``, ``"top-10%"``) -> overlap or ``None``.
        top_k_sizes: Label -> ``k``.
        per_example: Method -> metric -> :class:`~.stats.Agreement`.
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
    def methods(self) -> list[str]:
        """Methods that are not controls, in the order given."""
        return [m for m in self.groups if m not in CONTROL_METHODS]

    @property
    def controls(self) -> list[str]:
        """Control methods present, in the order given."""
        return [m for m in self.groups if m in CONTROL_METHODS]

    def verdicts(self) -> list[str]:
        """One plain-words sentence per method on the primary damage metric.

        Returns:
            Sentences such as ``"**G-NDI** (Spearman 0.98 [0.90, 1.00]; ...) beats depth
            (ΔSpearman +0.12 [0.04, 0.20]), but not gradient x activation (...)."``
        """
        metric = self.primary_metric
        sentences = []
        for method in self.methods:
            own = self.correlations[method][metric]
            if own["spearman"].value is None:
                sentences.append(f"**{self._label(method)}**: {own['spearman'].note}; no verdict.")
                continue
            found: dict[str | None, list[str]] = {}
            for control in self.controls:
                diff = self.comparisons[method][control][metric]
                text = f"{self._label(control)} (ΔSpearman {_signed(diff)})"
                if diff.value is None:
                    text = f"{self._label(control)} ({diff.note})"
                found.setdefault(stats.verdict(diff), []).append(text)
            clauses = []
            if found.get("beats"):
                clauses.append("beats " + _join(found["beats"], "and"))
            if found.get("does not beat"):
                lead = "but not " if clauses else "does not beat "
                clauses.append(lead + _join(found["does not beat"], "or"))
            if found.get("loses to"):
                clauses.append(
                    ("and loses to " if clauses else "loses to ") + _join(found["loses to"], "and")
                )
            if found.get(None):
                clauses.append("is not judged against " + _join(found[None], "or"))
            summary = (
                f"Spearman {_interval(own['spearman'], 2)}; "
                f"{_interval(own[PARTIAL], 2)} beyond depth"
            )
            body = ", ".join(clauses) if clauses else "has no control to be compared with"
            sentences.append(f"**{self._label(method)}** ({summary}) {body}.")
        return sentences

    def to_markdown(self) -> str:
        """The report as markdown: settings, warnings, verdicts, then the tables.

        Returns:
            Markdown text (also what ``str(report)`` gives).
        """
        s = self.settings
        lines = ["# Validation report: do the scores predict the damage of ablations?", ""]
        lines += ["| setting | value |", "|---|---|"]
        for key, value in self.metadata.items():
            lines.append(f"| {key} | {_md_value(value)} |")
        metrics = ", ".join(f"`{m}`" for m in self.damage)
        lines += [
            f"| units | {len(self.units)} |",
            f"| damage metrics | {metrics} (primary: `{self.primary_metric}`) |",
            "| intervals | "
            + (
                f"{s['confidence_level']:.0%} {s['ci_method']} bootstrap over units (percentile "
                f"where BCa is undefined), {s['n_boot']} paired resamples, seed {s['seed']} |"
                if s["n_boot"]
                else "none (n_boot = 0): no verdicts |"
            ),
            "| p-values | "
            + (
                f"two-sided permutation test, {s['n_perm']} permutations |"
                if s["n_perm"]
                else "none (n_perm = 0) |"
            ),
            "",
        ]
        lines += [f"> **Warning:** {w}" + "\n" for w in self.warnings]
        lines += [f"## Verdicts on `{self.primary_metric}`", ""]
        lines += [f"- {v}" for v in self.verdicts()] or ["- No method other than controls."]
        lines += ["", self._legend(), ""]
        for metric in self.damage:
            lines += self._correlation_table(metric)
        lines += self._comparison_table()
        lines += self._per_example_table()
        lines += self._top_k_table()
        return "\n".join(lines).rstrip() + "\n"

    def __str__(self) -> str:
        return self.to_markdown()

    def to_dict(self) -> dict[str, Any]:
        """Everything in the report as JSON-ready Python objects (no NaN; ``None`` instead).

        Returns:
            A dict that ``json.loads(json.dumps(d)) == d``.
        """
        return _jsonable(
            {
                "metadata": self.metadata,
                "settings": self.settings,
                "primary_metric": self.primary_metric,
                "warnings": self.warnings,
                "verdicts": self.verdicts(),
                "methods": self.methods,
                "controls": self.controls,
                "groups": self.groups,
                "units": self.units,
                "depth": self.depth,
                "damage": self.damage,
                "scores": self.scores,
                "correlations": _nested(self.correlations),
                "comparisons": {
                    method: {
                        control: {
                            metric: {**diff.to_dict(), "verdict": stats.verdict(diff)}
                            for metric, diff in per_metric.items()
                        }
                        for control, per_metric in per_control.items()
                    }
                    for method, per_control in self.comparisons.items()
                },
                "top_k": self.top_k,
                "top_k_sizes": self.top_k_sizes,
                "per_example": _nested(self.per_example),
            }
        )

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write the report, its data and its figures to a folder (created if needed).

        Args:
            out_dir: Output folder.

        Returns:
            Dict kind -> path: ``markdown`` (report.md), ``json`` (report.json),
            ``correlations`` (correlations.csv: one row per method, metric and statistic),
            ``units`` (units.csv: per-unit depth, damage and scores), ``scatter``
            (scatter_<primary metric>.png) and ``bars`` (bars.png; not written above 100 units).

        Examples:
            >>> paths = report.save("report/")  # doctest: +SKIP
            >>> paths["markdown"].read_text().splitlines()[0]  # doctest: +SKIP
            '# Validation report: do the scores predict the damage of ablations?'
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "markdown": out / "report.md",
            "json": out / "report.json",
            "correlations": out / "correlations.csv",
            "units": out / "units.csv",
            "scatter": out / f"scatter_{self.primary_metric}.png",
        }
        _save(self._scatter_figure(), paths["scatter"])
        figures = [f"![predicted vs true damage]({paths['scatter'].name})"]
        if len(self.units) <= _MAX_BAR_UNITS:
            paths["bars"] = out / "bars.png"
            _save(self._bars_figure(), paths["bars"])
            figures.append(f"![normalised damage and scores per unit]({paths['bars'].name})")
        else:
            figures.append(f"(No per-unit bars: more than {_MAX_BAR_UNITS} units.)")
        paths["markdown"].write_text(
            self.to_markdown() + "\n## Figures\n\n" + "\n\n".join(figures) + "\n"
        )
        paths["json"].write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        _write_csv(paths["correlations"], self._correlation_rows())
        _write_csv(paths["units"], self._unit_rows())
        return paths

    # -- markdown pieces ----------------------------------------------------------------------

    def _label(self, method: str) -> str:
        label = _LABELS.get(method, method)
        runs = self._runs(method)
        return f"{label} averaged over {len(runs)} runs" if len(runs) > 1 else label

    def _runs(self, method: str) -> np.ndarray:
        return np.concatenate([np.atleast_2d(self.scores[key]) for key in self.groups[method]])

    def _legend(self) -> str:
        controls = ", ".join(f"`{c}`" for c in self.controls) or "none"
        notes = [
            f"Controls: {controls}. ΔSpearman is the method's Spearman minus the control's, "
            f"with a paired bootstrap {self.settings['confidence_level']:.0%} interval (the same "
            'resampled units for both); "beats": interval above 0, "loses to": below 0, '
            '"does not beat": it includes 0. "Beyond depth" is the partial Spearman '
            "correlation given depth."
        ]
        averaged = [f"`{m}` ({len(self._runs(m))})" for m in self.groups if len(self._runs(m)) > 1]
        if averaged:
            notes.append(
                "Averaged over runs (correlations averaged within each resample): "
                + ", ".join(averaged)
                + "."
            )
        return " ".join(notes)

    def _rows(self) -> list[str]:
        return self.methods + self.controls

    def _correlation_table(self, metric: str) -> list[str]:
        head = [_HEADERS[s] for s in STATISTICS]
        lines = [f"## Correlations with `{metric}`", ""]
        lines += ["| method | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
        for method in self._rows():
            cells = [_cell(self.correlations[method][metric][s]) for s in STATISTICS]
            lines.append(f"| {self._row_name(method)} | " + " | ".join(cells) + " |")
        return [*lines, ""]

    def _row_name(self, method: str) -> str:
        return f"`{method}` (control)" if method in CONTROL_METHODS else f"`{method}`"

    def _comparison_table(self) -> list[str]:
        if not (self.methods and self.controls):
            return []
        metrics = list(self.damage)
        lines = ["## ΔSpearman against each control", ""]
        lines += ["| method | control | " + " | ".join(f"`{m}`" for m in metrics) + " |"]
        lines.append("|---|---" + "|---" * len(metrics) + "|")
        for method in self.methods:
            for control in self.controls:
                cells = []
                for metric in metrics:
                    diff = self.comparisons[method][control][metric]
                    word = stats.verdict(diff)
                    cells.append(diff.note or f"{_signed(diff, 3)} {word or ''}".strip())
                lines.append(f"| `{method}` | `{control}` | " + " | ".join(cells) + " |")
        return [*lines, ""]

    def _per_example_table(self) -> list[str]:
        if not self.per_example:
            return []
        lines = [
            "## Per-example agreement",
            "",
            "Spearman correlation across units between per-example scores and per-example "
            "damage, one per example: median and interquartile range. Examples whose score "
            "or damage is constant across units are skipped.",
            "",
            "| method | metric | median | IQR | examples | skipped (constant) |",
            "|---|---|---|---|---|---|",
        ]
        for method in (m for m in self._rows() if m in self.per_example):
            for metric, a in self.per_example[method].items():
                iqr = "–" if a.q25 is None else f"[{a.q25:.3f}, {a.q75:.3f}]"
                lines.append(
                    f"| {self._row_name(method)} | `{metric}` | {_number(a.median)} | {iqr} "
                    f"| {a.n_used} "
                    f"| {a.n_skipped} |"
                )
        return [*lines, ""]

    def _top_k_table(self) -> list[str]:
        labels = list(self.top_k_sizes)
        head = [f"{label} (k={self.top_k_sizes[label]})" for label in labels]
        lines = [
            "## Top-k overlap",
            "",
            "|top-k by score ∩ top-k by damage| / k (ties broken by unit order).",
            "",
            "| method | metric | " + " | ".join(head) + " |",
            "|---|---" + "|---" * len(head) + "|",
        ]
        for method in self._rows():
            for metric in self.damage:
                cells = [_number(self.top_k[method][metric][label], 2) for label in labels]
                lines.append(
                    f"| {self._row_name(method)} | `{metric}` | " + " | ".join(cells) + " |"
                )
        return [*lines, ""]

    # -- CSV rows -----------------------------------------------------------------------------

    def _correlation_rows(self) -> list[dict[str, Any]]:
        rows = []
        for method, per_metric in self.correlations.items():
            for metric, per_stat in per_metric.items():
                for statistic, est in per_stat.items():
                    rows.append(_csv_row(method, metric, statistic, "", est, None))
        for method, per_control in self.comparisons.items():
            for control, per_metric in per_control.items():
                for metric, diff in per_metric.items():
                    rows.append(
                        _csv_row(
                            method, metric, "delta_spearman", control, diff, stats.verdict(diff)
                        )
                    )
        return rows

    def _unit_rows(self) -> list[dict[str, Any]]:
        columns: dict[str, np.ndarray] = {"depth": self.depth}
        columns.update({f"damage:{m}": v for m, v in self.damage.items()})
        for key, values in self.scores.items():
            runs = np.atleast_2d(values)
            if len(runs) == 1:
                columns[f"score:{key}"] = runs[0]
            else:
                columns.update({f"score:{key}[{s}]": run for s, run in enumerate(runs)})
        return [
            {"unit": unit, **{name: float(v[i]) for name, v in columns.items()}}
            for i, unit in enumerate(self.units)
        ]

    # -- figures ------------------------------------------------------------------------------

    def _scatter_figure(self) -> Figure:
        metric, names = self.primary_metric, self._rows()
        cols = min(4, len(names))
        rows = math.ceil(len(names) / cols)
        fig = Figure(figsize=(3.6 * cols, 3.2 * rows), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, method in zip(axes, names):
            runs = self._runs(method)
            ax.scatter(runs[0], self.damage[metric], s=14, alpha=0.8)
            rho = self.correlations[method][metric]["spearman"]
            tau = self.correlations[method][metric]["kendall"]
            ranks = (
                rho.note
                if rho.value is None
                else f"Spearman {rho.value:.2f}, Kendall {tau.value:.2f}"
            )
            title = method
            if len(runs) > 1:
                title, ranks = f"{method}: run 1 of {len(runs)} shown", f"mean {ranks}"
            ax.set_title(f"{title}\n{ranks}", fontsize=9)
            ax.set_xlabel("score (predicted damage)", fontsize=8)
            ax.set_ylabel(f"true damage: {metric}", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in axes[len(names) :]:
            ax.set_visible(False)
        return fig

    def _bars_figure(self) -> Figure:
        series = {f"damage: {self.primary_metric}": self.damage[self.primary_metric]}
        for method in self._rows():
            runs = self._runs(method)
            name = f"{method} (mean of {len(runs)} runs)" if len(runs) > 1 else method
            series[name] = runs.mean(axis=0)
        fig = Figure(
            figsize=(max(6.0, 0.25 * len(self.units) + 2), 1.1 * len(series) + 1.2),
            layout="constrained",
        )
        axes = fig.subplots(len(series), 1, sharex=True, squeeze=False).ravel()
        positions = np.arange(len(self.units))
        for ax, (name, values) in zip(axes, series.items()):
            scale = np.max(np.abs(values))
            ax.bar(
                positions,
                values / scale if scale > 0 else values,
                color="C0" if ax is axes[0] else "C1",
            )
            ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
            ax.set_yticks([])
            ax.axhline(0, color="black", lw=0.5)
        axes[-1].set_xticks(positions, self.units, rotation=90, fontsize=7)
        fig.suptitle("Damage and scores per unit, each divided by its largest |value|", fontsize=10)
        return fig


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

    Methods named ``depth``, ``param_count``, ``activation_change``, ``random`` and
    ``grad_x_activation`` are controls; every other method is compared with each of them.

    Args:
        units: Names of the ``U`` units (layers or channels), in forward order.
        depth: ``(U,)`` forward position of each unit's layer (the partial correlations
            control for it).
        damage: Metric -> ``(U,)`` damage of ablating each unit; the first is the primary
            metric of the verdicts and figures.
        scores: Method -> ``(U,)`` scores (higher: more important), or ``(S, U)`` for ``S``
            runs; keys ``NAME_seedK`` are runs of ``NAME``. Runs are averaged.
        damage_per_example: Metric -> ``(N, U)`` per-example damage.
        scores_per_example: Method (or run key) -> ``(N, U)`` per-example scores.
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
        method: {
            metric: {
                **{
                    kind: stats.correlation(x, y, kind, n_perm=n_perm, **options)
                    for kind in stats.CORRELATIONS
                },
                PARTIAL: stats.partial_spearman(x, y, depth, **options),
            }
            for metric, y in damage.items()
        }
        for method, x in runs.items()
    }
    controls = [m for m in groups if m in CONTROL_METHODS]
    comparisons = {
        method: {
            control: {
                metric: stats.spearman_difference(runs[method], runs[control], y, **options)
                for metric, y in damage.items()
            }
            for control in controls
        }
        for method in groups
        if method not in CONTROL_METHODS
    }
    sizes = {"top-5": min(5, n), "top-10%": max(1, round(0.1 * n))}
    top_k = {
        method: {
            metric: {label: stats.top_k_overlap(x, y, k) for label, k in sizes.items()}
            for metric, y in damage.items()
        }
        for method, x in runs.items()
    }
    warnings = _warnings(n, depth, damage, controls)
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
        warnings=warnings,
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
        groups.setdefault(match["method"] if match else key, []).append(key)
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
    for method, keys in groups.items():
        present = [np.asarray(scores[k], dtype=float) for k in keys if k in scores]
        if not present:
            continue
        for a in present:
            if a.shape[-1] != n:
                raise ValueError(
                    f"per-example scores of '{method}' must have {n} units; got {a.shape}."
                )
        stacked = np.concatenate([a.reshape(-1, *a.shape[-2:]) for a in present])
        result[method] = {
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


def _md_value(value: Any) -> str:
    """A metadata value for a markdown table cell: lists joined, dicts as ``key: value``."""
    return _plain(value).replace("|", "\\|").replace("\n", " ")


def _plain(value: Any) -> str:
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_plain(v)}" for k, v in value.items()) or "–"
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value) or "–"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def _number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _interval(est: Estimate, digits: int = 3) -> str:
    if est.value is None:
        return est.note or "–"
    if est.ci_low is None:
        return _number(est.value, digits)
    return f"{est.value:.{digits}f} [{est.ci_low:.{digits}f}, {est.ci_high:.{digits}f}]"


def _signed(est: Estimate, digits: int = 2) -> str:
    if est.value is None:
        return est.note or "–"
    text = f"{est.value:+.{digits}f}"
    if est.ci_low is not None:
        text += f" [{est.ci_low:.{digits}f}, {est.ci_high:.{digits}f}]"
    return text


def _cell(est: Estimate) -> str:
    text = _interval(est)
    return text if est.p_value is None else f"{text} p={est.p_value:.2g}"


def _join(items: list[str], word: str) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" {word} {items[-1]}"


def _nested(tree: Any) -> Any:
    if isinstance(tree, (Estimate, Agreement)):
        return tree.to_dict()
    return {key: _nested(value) for key, value in tree.items()}


def _jsonable(value: Any) -> Any:
    """Plain JSON types: dicts with str keys, lists, str, int, finite float, bool, None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _csv_row(
    method: str, metric: str, statistic: str, control: str, est: Estimate, word: str | None
) -> dict[str, Any]:
    return {
        "method": method,
        "metric": metric,
        "statistic": statistic,
        "control": control,
        "estimate": est.value,
        "ci_low": est.ci_low,
        "ci_high": est.ci_high,
        "p_value": est.p_value,
        "ci_method": est.ci_method,
        "verdict": word,
        "note": est.note,
    }


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
