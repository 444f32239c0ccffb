"""Summarise validation reports (``report.json`` folders) as the markdown tables of
``docs/results.md``.

Usage::

    .venv/bin/python experiments/summarize_reports.py runs/reports/resnet20-layer-zero \
        --metric accuracy_drop --metric output_delta
    .venv/bin/python experiments/summarize_reports.py runs/reports/resnet18-channel-zero \
        --paper --metric output_delta

For each report and damage metric it prints one row per criterion: Pearson, Spearman with its
95% bootstrap interval, Kendall, the partial Spearman given depth, and the controls the
criterion beats (the paired-bootstrap interval of the Spearman difference lies above 0) or
loses to (below 0). ``--paper`` prints the paper's headline numbers beside ours.
``--verdicts gndi`` prints instead one table of G-NDI against every control (paired-bootstrap
ΔSpearman with its 95% interval) for all the reports given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

PAPER = {  # G-NDI paper, CIFAR-10 / ResNet-18: Pearson, Spearman [95% CI], Kendall
    "gndi": ("0.958", "0.981 [0.970, 0.988]", "0.900"),
    "snip": ("0.797", "0.905", "0.728"),
    "hrank": ("0.624", "0.663", "0.478"),
    "magnitude": ("-0.543", "-0.506", "-0.352"),
    "grasp": ("-0.069", "0.055", "-0.040"),
    "synflow": ("compared, no number", "", ""),
}
LABELS = {
    "gndi": "G-NDI",
    "gndi_path": "G-NDI (path)",
    "snip": "SNIP",
    "grasp": "GraSP",
    "synflow": "SynFlow",
    "magnitude": "Magnitude",
    "hrank": "HRank",
    "taylor": "Taylor",
    "grad_x_activation": "grad x (act - b) *",
    "layer_conductance": "LayerConductance",
    "layer_integrated_gradients": "LayerIntegratedGradients",
    "activation_change": "‖h - b‖ *",
    "depth": "depth *",
    "param_count": "param count *",
    "random": "random *",
}


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _estimate(est: dict[str, Any], with_ci: bool = False) -> str:
    if est["value"] is None:
        return f"— ({est['note']})" if est.get("note") else "—"
    text = _num(est["value"])
    if with_ci and est.get("ci_low") is not None:
        text += f" [{_num(est['ci_low'], 2)}, {_num(est['ci_high'], 2)}]"
    return text


def _versus(report: dict[str, Any], method: str, metric: str) -> str:
    per_control = report["comparisons"].get(method)
    if per_control is None:
        return "(control)"

    def named(verdict: str) -> list[str]:
        return [
            LABELS[c].rstrip(" *")
            for c, m in per_control.items()
            if m[metric]["verdict"] == verdict
        ]

    beats, loses = named("beats"), named("loses to")
    parts = []
    if beats:
        parts.append("beats " + ", ".join(beats))
    if loses:
        parts.append("loses to " + ", ".join(loses))
    return "; ".join(parts) or "ties all controls"


def header(report: dict[str, Any]) -> str:
    """One line describing the run."""
    meta = report["metadata"]
    clean = meta.get("clean") or {}
    accuracy = f", clean accuracy {clean['accuracy']:.1%}" if "accuracy" in clean else ""
    return (
        f"{meta.get('model')} on {meta.get('data')}: {meta['n_units']} {meta['granularity']} "
        f"units, {meta['baseline']} baseline, {meta['n_examples']} examples{accuracy}"
    )


def table(report: dict[str, Any], metric: str, paper: bool = False) -> list[str]:
    """Markdown rows of every criterion against one damage metric."""
    cols = ["criterion", "Pearson", "Spearman [95% CI]", "Kendall", "partial Spearman given depth"]
    cols += ["vs controls"] + (["paper (P / S / K)"] if paper else [])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for method in report["groups"]:
        corr = report["correlations"][method][metric]
        row = [
            LABELS.get(method, method),
            _estimate(corr["pearson"]),
            _estimate(corr["spearman"], with_ci=True),
            _estimate(corr["kendall"]),
            _estimate(corr["partial_spearman"], with_ci=True),
            _versus(report, method, metric),
        ]
        if paper:
            row.append(" / ".join(v for v in PAPER.get(method, ("",)) if v) or "")
        lines.append("| " + " | ".join(row) + " |")
    return lines


CONTROLS = ("grad_x_activation", "activation_change", "depth", "param_count", "random")


def verdict_table(reports: dict[str, dict[str, Any]], method: str, metrics: list[str]) -> list[str]:
    """One row per report and damage metric: ``method`` against each control, as
    "beats / ties / loses to" with the paired-bootstrap ΔSpearman and its 95% interval."""
    cols = ["report", "damage", f"{LABELS.get(method, method)} Spearman"]
    cols += [LABELS[c].rstrip(" *") for c in CONTROLS]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    words = {"beats": "**beats**", "does not beat": "ties", "loses to": "loses"}
    for name, report in reports.items():
        for metric in metrics:
            if metric not in report["correlations"].get(method, {}):
                continue
            row = [name, f"`{metric}`"]
            row.append(_estimate(report["correlations"][method][metric]["spearman"], True))
            for control in CONTROLS:
                cmp = report["comparisons"].get(method, {}).get(control, {}).get(metric)
                if cmp is None or cmp["value"] is None:
                    row.append("n/a")
                    continue
                row.append(
                    f"{words[cmp['verdict']]} {cmp['value']:+.2f} "
                    f"[{cmp['ci_low']:+.2f}, {cmp['ci_high']:+.2f}]"
                )
            lines.append("| " + " | ".join(row) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", help="report folders (holding report.json)")
    parser.add_argument("--metric", action="append", help="damage metric(s) (default: primary)")
    parser.add_argument("--paper", action="store_true", help="add the paper's numbers")
    parser.add_argument(
        "--verdicts",
        metavar="METHOD",
        help="instead of the tables, one table of METHOD against every control, for all reports",
    )
    args = parser.parse_args()
    if args.verdicts:
        reports = {
            Path(f).name: json.loads((Path(f) / "report.json").read_text()) for f in args.reports
        }
        metrics = args.metric or ["output_delta", "accuracy_drop", "loss_increase", "kl"]
        print("\n".join(verdict_table(reports, args.verdicts, metrics)))
        return
    for folder in args.reports:
        report = json.loads((Path(folder) / "report.json").read_text())
        seconds = report["metadata"].get("seconds", {})
        for metric in args.metric or [report["primary_metric"]]:
            print(f"**{header(report)}** — damage `{metric}`\n")
            print("\n".join(table(report, metric, args.paper)))
            print()
        if report["warnings"]:
            print("Warnings: " + " ".join(report["warnings"]) + "\n")
        if seconds:
            print("Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + "\n")


if __name__ == "__main__":
    main()
