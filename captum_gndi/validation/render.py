"""Rendering a :class:`~captum_gndi.validation.ValidationReport` as text: the plain-words
verdicts and the markdown report.

:mod:`captum_gndi.validation.report` computes the statistics; this module only words them: one
verdict sentence per criterion, then the markdown report (settings, warnings, verdicts, the
correlation, comparison, per-example and top-k tables). JSON, CSV, figures and files are
:mod:`captum_gndi.validation.export`'s. The report's ``verdicts()`` and ``to_markdown()`` call
these functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..criteria import CONTROL_CRITERIA
from . import stats
from .stats import PARTIAL, STATISTICS, Estimate

if TYPE_CHECKING:
    from .report import ValidationReport

__all__ = ["render_markdown", "render_verdicts"]

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


# -- words --------------------------------------------------------------------------------------


def render_verdicts(report: ValidationReport) -> list[str]:
    """One plain-words sentence per criterion on the primary damage metric.

    Args:
        report: The report.

    Returns:
        Sentences such as ``"**G-NDI** (Spearman 0.98 [0.90, 1.00]; ...) beats depth
        (ΔSpearman +0.12 [0.04, 0.20]), but not gradient x activation (...)."``

    Examples:
        >>> render_verdicts(report)[0]  # doctest: +SKIP
        '**G-NDI** (Spearman 0.98 [0.90, 1.00]; 0.95 [0.80, 0.99] beyond depth) beats depth ...'
    """
    metric = report.primary_metric
    sentences = []
    for criterion in report.criteria:
        own = report.correlations[criterion][metric]
        if own["spearman"].value is None:
            sentences.append(
                f"**{_label(report, criterion)}**: {own['spearman'].note}; no verdict."
            )
            continue
        found: dict[str | None, list[str]] = {}
        for control in report.controls:
            diff = report.comparisons[criterion][control][metric]
            text = f"{_label(report, control)} (ΔSpearman {_signed(diff)})"
            if diff.value is None:
                text = f"{_label(report, control)} ({diff.note})"
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
            f"Spearman {_interval(own['spearman'], 2)}; {_interval(own[PARTIAL], 2)} beyond depth"
        )
        body = ", ".join(clauses) if clauses else "has no control to be compared with"
        sentences.append(f"**{_label(report, criterion)}** ({summary}) {body}.")
    return sentences


def _label(report: ValidationReport, criterion: str) -> str:
    label = _LABELS.get(criterion, criterion)
    runs = report.runs(criterion)
    return f"{label} averaged over {len(runs)} runs" if len(runs) > 1 else label


# -- markdown -----------------------------------------------------------------------------------


def render_markdown(report: ValidationReport) -> str:
    """The report as markdown: settings, warnings, verdicts, then the tables.

    Args:
        report: The report.

    Returns:
        Markdown text (also what ``str(report)`` gives).

    Examples:
        >>> render_markdown(report).splitlines()[0]  # doctest: +SKIP
        '# Validation report: do the scores predict the damage of ablations?'
    """
    s = report.settings
    lines = ["# Validation report: do the scores predict the damage of ablations?", ""]
    lines += ["| setting | value |", "|---|---|"]
    for key, value in report.metadata.items():
        lines.append(f"| {key} | {_md_value(value)} |")
    metrics = ", ".join(f"`{m}`" for m in report.damage)
    lines += [
        f"| units | {len(report.units)} |",
        f"| damage metrics | {metrics} (primary: `{report.primary_metric}`) |",
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
    lines += [f"> **Warning:** {w}" + "\n" for w in report.warnings]
    lines += [f"## Verdicts on `{report.primary_metric}`", ""]
    lines += [f"- {v}" for v in render_verdicts(report)] or ["- No method other than controls."]
    lines += ["", _legend(report), ""]
    for metric in report.damage:
        lines += _correlation_table(report, metric)
    lines += _comparison_table(report)
    lines += _per_example_table(report)
    lines += _top_k_table(report)
    return "\n".join(lines).rstrip() + "\n"


def _legend(report: ValidationReport) -> str:
    controls = ", ".join(f"`{c}`" for c in report.controls) or "none"
    notes = [
        f"Controls: {controls}. ΔSpearman is the method's Spearman minus the control's, "
        f"with a paired bootstrap {report.settings['confidence_level']:.0%} interval (the same "
        'resampled units for both); "beats": interval above 0, "loses to": below 0, '
        '"does not beat": it includes 0. "Beyond depth" is the partial Spearman '
        "correlation given depth."
    ]
    averaged = [f"`{c}` ({len(report.runs(c))})" for c in report.groups if len(report.runs(c)) > 1]
    if averaged:
        notes.append(
            "Averaged over runs (correlations averaged within each resample): "
            + ", ".join(averaged)
            + "."
        )
    return " ".join(notes)


def _rows(report: ValidationReport) -> list[str]:
    return report.criteria + report.controls


def _row_name(criterion: str) -> str:
    return f"`{criterion}` (control)" if criterion in CONTROL_CRITERIA else f"`{criterion}`"


def _correlation_table(report: ValidationReport, metric: str) -> list[str]:
    head = [_HEADERS[s] for s in STATISTICS]
    lines = [f"## Correlations with `{metric}`", ""]
    lines += ["| method | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for criterion in _rows(report):
        cells = [_cell(report.correlations[criterion][metric][s]) for s in STATISTICS]
        lines.append(f"| {_row_name(criterion)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _comparison_table(report: ValidationReport) -> list[str]:
    if not (report.criteria and report.controls):
        return []
    metrics = list(report.damage)
    lines = ["## ΔSpearman against each control", ""]
    lines += ["| method | control | " + " | ".join(f"`{m}`" for m in metrics) + " |"]
    lines.append("|---|---" + "|---" * len(metrics) + "|")
    for criterion in report.criteria:
        for control in report.controls:
            cells = []
            for metric in metrics:
                diff = report.comparisons[criterion][control][metric]
                word = stats.verdict(diff)
                cells.append(diff.note or f"{_signed(diff, 3)} {word or ''}".strip())
            lines.append(f"| `{criterion}` | `{control}` | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _per_example_table(report: ValidationReport) -> list[str]:
    if not report.per_example:
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
    for criterion in (c for c in _rows(report) if c in report.per_example):
        for metric, a in report.per_example[criterion].items():
            iqr = "–" if a.q25 is None else f"[{a.q25:.3f}, {a.q75:.3f}]"
            lines.append(
                f"| {_row_name(criterion)} | `{metric}` | {_number(a.median)} | {iqr} "
                f"| {a.n_used} "
                f"| {a.n_skipped} |"
            )
    return [*lines, ""]


def _top_k_table(report: ValidationReport) -> list[str]:
    labels = list(report.top_k_sizes)
    head = [f"{label} (k={report.top_k_sizes[label]})" for label in labels]
    lines = [
        "## Top-k overlap",
        "",
        "|top-k by score ∩ top-k by damage| / k (ties broken by unit order).",
        "",
        "| method | metric | " + " | ".join(head) + " |",
        "|---|---" + "|---" * len(head) + "|",
    ]
    for criterion in _rows(report):
        for metric in report.damage:
            cells = [_number(report.top_k[criterion][metric][label], 2) for label in labels]
            lines.append(f"| {_row_name(criterion)} | `{metric}` | " + " | ".join(cells) + " |")
    return [*lines, ""]


# -- formatting helpers -------------------------------------------------------------------------


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
