"""Exporting a :class:`~captum_gndi.validation.ValidationReport`: JSON, CSV, figures and the
report folder.

:func:`report_dict` gives everything in the report as JSON-ready objects, :func:`correlation_rows`
and :func:`unit_rows` the two CSV tables, :func:`scatter_figure` and :func:`bars_figure` the
figures, and :func:`save_report` writes them all, with the markdown of
:mod:`captum_gndi.validation.render`, to one folder. The report's ``to_dict()`` and ``save()``
call these functions.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import stats
from .render import render_markdown, render_verdicts
from .stats import Agreement, Estimate

if TYPE_CHECKING:
    from .report import ValidationReport

__all__ = [
    "MAX_BAR_UNITS",
    "bars_figure",
    "correlation_rows",
    "report_dict",
    "save_report",
    "scatter_figure",
    "unit_rows",
]

MAX_BAR_UNITS = 100
"""Above this many units :func:`save_report` draws no per-unit bars."""


# -- JSON and CSV -------------------------------------------------------------------------------


def report_dict(report: ValidationReport) -> dict[str, Any]:
    """Everything in the report as JSON-ready Python objects (no NaN; ``None`` instead).

    The keys are those of the saved ``report.json`` (``"methods"`` lists the criteria that are
    not controls, as in earlier reports).

    Args:
        report: The report.

    Returns:
        A dict that ``json.loads(json.dumps(d)) == d``.

    Examples:
        >>> report_dict(report)["controls"]  # doctest: +SKIP
        ['depth', 'random']
    """
    return _jsonable(
        {
            "metadata": report.metadata,
            "settings": report.settings,
            "primary_metric": report.primary_metric,
            "warnings": report.warnings,
            "verdicts": render_verdicts(report),
            "methods": report.criteria,
            "controls": report.controls,
            "groups": report.groups,
            "units": report.units,
            "depth": report.depth,
            "damage": report.damage,
            "scores": report.scores,
            "correlations": _nested(report.correlations),
            "comparisons": {
                criterion: {
                    control: {
                        metric: {**diff.to_dict(), "verdict": stats.verdict(diff)}
                        for metric, diff in per_metric.items()
                    }
                    for control, per_metric in per_control.items()
                }
                for criterion, per_control in report.comparisons.items()
            },
            "top_k": report.top_k,
            "top_k_sizes": report.top_k_sizes,
            "per_example": _nested(report.per_example),
        }
    )


def correlation_rows(report: ValidationReport) -> list[dict[str, Any]]:
    """Rows of ``correlations.csv``: one per criterion, metric and statistic (and control).

    Args:
        report: The report.

    Returns:
        Dicts with the columns ``method, metric, statistic, control, estimate, ci_low, ci_high,
        p_value, ci_method, verdict, note``.

    Examples:
        >>> correlation_rows(report)[0]["statistic"]  # doctest: +SKIP
        'pearson'
    """
    rows = []
    for criterion, per_metric in report.correlations.items():
        for metric, per_stat in per_metric.items():
            for statistic, est in per_stat.items():
                rows.append(_csv_row(criterion, metric, statistic, "", est, None))
    for criterion, per_control in report.comparisons.items():
        for control, per_metric in per_control.items():
            for metric, diff in per_metric.items():
                rows.append(
                    _csv_row(
                        criterion, metric, "delta_spearman", control, diff, stats.verdict(diff)
                    )
                )
    return rows


def unit_rows(report: ValidationReport) -> list[dict[str, Any]]:
    """Rows of ``units.csv``: per unit its depth, every damage and every score run.

    Args:
        report: The report.

    Returns:
        One dict per unit: ``unit``, ``depth``, ``damage:METRIC``, ``score:KEY`` (or
        ``score:KEY[s]`` for run ``s`` of a stack of runs).

    Examples:
        >>> unit_rows(report)[0]["unit"]  # doctest: +SKIP
        'block0'
    """
    columns: dict[str, np.ndarray] = {"depth": report.depth}
    columns.update({f"damage:{m}": v for m, v in report.damage.items()})
    for key, values in report.scores.items():
        runs = np.atleast_2d(values)
        if len(runs) == 1:
            columns[f"score:{key}"] = runs[0]
        else:
            columns.update({f"score:{key}[{s}]": run for s, run in enumerate(runs)})
    return [
        {"unit": unit, **{name: float(v[i]) for name, v in columns.items()}}
        for i, unit in enumerate(report.units)
    ]


# -- figures ------------------------------------------------------------------------------------


def scatter_figure(report: ValidationReport) -> Figure:
    """Score against true damage (primary metric), one panel per criterion.

    Args:
        report: The report.

    Returns:
        A matplotlib figure (not attached to pyplot).

    Examples:
        >>> scatter_figure(report).savefig("scatter.png")  # doctest: +SKIP
    """
    metric, names = report.primary_metric, report.criteria + report.controls
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(3.6 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, criterion in zip(axes, names):
        runs = report.runs(criterion)
        ax.scatter(runs[0], report.damage[metric], s=14, alpha=0.8)
        rho = report.correlations[criterion][metric]["spearman"]
        tau = report.correlations[criterion][metric]["kendall"]
        ranks = (
            rho.note if rho.value is None else f"Spearman {rho.value:.2f}, Kendall {tau.value:.2f}"
        )
        title = criterion
        if len(runs) > 1:
            title, ranks = f"{criterion}: run 1 of {len(runs)} shown", f"mean {ranks}"
        ax.set_title(f"{title}\n{ranks}", fontsize=9)
        ax.set_xlabel("score (predicted damage)", fontsize=8)
        ax.set_ylabel(f"true damage: {metric}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    return fig


def bars_figure(report: ValidationReport) -> Figure:
    """Damage and every criterion's scores per unit, each divided by its largest ``|value|``.

    Args:
        report: The report.

    Returns:
        A matplotlib figure (not attached to pyplot).

    Examples:
        >>> bars_figure(report).savefig("bars.png")  # doctest: +SKIP
    """
    series = {f"damage: {report.primary_metric}": report.damage[report.primary_metric]}
    for criterion in report.criteria + report.controls:
        runs = report.runs(criterion)
        name = f"{criterion} (mean of {len(runs)} runs)" if len(runs) > 1 else criterion
        series[name] = runs.mean(axis=0)
    fig = Figure(
        figsize=(max(6.0, 0.25 * len(report.units) + 2), 1.1 * len(series) + 1.2),
        layout="constrained",
    )
    axes = fig.subplots(len(series), 1, sharex=True, squeeze=False).ravel()
    positions = np.arange(len(report.units))
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
    axes[-1].set_xticks(positions, report.units, rotation=90, fontsize=7)
    fig.suptitle("Damage and scores per unit, each divided by its largest |value|", fontsize=10)
    return fig


# -- files --------------------------------------------------------------------------------------


def save_report(report: ValidationReport, out_dir: str | Path) -> dict[str, Path]:
    """Write the report, its data and its figures to a folder (created if needed).

    Args:
        report: The report.
        out_dir: Output folder.

    Returns:
        Dict kind -> path: ``markdown`` (report.md), ``json`` (report.json),
        ``correlations`` (correlations.csv: one row per criterion, metric and statistic),
        ``units`` (units.csv: per-unit depth, damage and scores), ``scatter``
        (scatter_<primary metric>.png) and ``bars`` (bars.png; not written above 100 units).

    Examples:
        >>> paths = save_report(report, "report/")  # doctest: +SKIP
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
        "scatter": out / f"scatter_{report.primary_metric}.png",
    }
    _save_figure(scatter_figure(report), paths["scatter"])
    figures = [f"![predicted vs true damage]({paths['scatter'].name})"]
    if len(report.units) <= MAX_BAR_UNITS:
        paths["bars"] = out / "bars.png"
        _save_figure(bars_figure(report), paths["bars"])
        figures.append(f"![normalised damage and scores per unit]({paths['bars'].name})")
    else:
        figures.append(f"(No per-unit bars: more than {MAX_BAR_UNITS} units.)")
    paths["markdown"].write_text(
        render_markdown(report) + "\n## Figures\n\n" + "\n\n".join(figures) + "\n"
    )
    paths["json"].write_text(json.dumps(report_dict(report), indent=1, allow_nan=False) + "\n")
    _write_csv(paths["correlations"], correlation_rows(report))
    _write_csv(paths["units"], unit_rows(report))
    return paths


# -- helpers ----------------------------------------------------------------------------------


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
    criterion: str, metric: str, statistic: str, control: str, est: Estimate, word: str | None
) -> dict[str, Any]:
    return {
        "method": criterion,
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


def _save_figure(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
