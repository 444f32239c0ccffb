"""Unsigned full-vocabulary G-NDI and per-unit path integration against exact patching on
SmolLM2-135M (issue #23, item 2).

``--part vocab`` (for IOI, factual recall or induction): every attention head (30 x 9) and every
MLP output (30) is patched from the corrupted run into the clean run, one unit at a time, with
plain PyTorch hooks (independent of the package), and the truth is ``KL(pi || pi_patched)`` of
the next-token distribution (all 49,152 logits) at the final position, per prompt pair. The
estimators are unsigned G-NDI of the final position's logits (``f(ids) = logits[:, -1]``) with
the corrupted prompt's activation as baseline:

- ``l2_exact`` / ``fisher_exact``: the exact norms, ``||dz||_2`` and ``sqrt(dz^T (diag(pi) -
  pi pi^T) dz)``, from the whole output tangent ``dz`` of each unit by the forward engine (one
  tangent per unit, ``compute_effects(job, "forward", "channel")``; both norms read out of the
  same tangents with the package's own ``Readout.scores``, as ``LayerGNDI.attribute`` does);
- ``<norm>_m16`` / ``<norm>_m64``: ``LayerGNDI.attribute(clean, baselines=corrupted,
  norm=<norm>, n_probes=m, mode="reverse")`` (random probes), and ``<norm>_m16_r8`` /
  ``<norm>_m64_r8`` with ``probe_exact=8``;
- ``signed_first_order``: ``|minus signed G-NDI of the logit difference|`` (attribution
  patching of the task metric), for reference.

The heads are ``find_layers(model, "head")`` points (the input of ``o_proj``); the MLP outputs
are ``Heads(mlp.down_proj, 1)`` points, the input of the bias-free linear ``down_proj``:
patching it patches the MLP output exactly and its first-order effect is the same ``J (m -
m')``, so heads and MLPs share every pass of one job. The truth patches the MLP module's output.

Fisher G-NDI squared is the second-order (first non-zero) term of ``2 KL``, so each estimator is
also compared with ``sqrt(2 KL)``, including the ratio estimate / ``sqrt(2 KL)``.

``--part softmax``: the same patching, and per pair and unit the L2 and Fisher norms of the
*true* change of the logits ``dz = z_patched - z`` against ``sqrt(2 KL)``: how well the Fisher
norm predicts KL on this softmax without any linearisation, and (in ``--summarize``, with the
``vocab`` JSON of the same task) how far the first-order tangent is from the true ``dz``.

``--part path`` (IOI): ``path="unit"`` (every unit integrated along its own path) at ``n_steps``
2 and 4 for the 30 MLP outputs (``granularity="layer"`` on ``block.mlp``) and the heads of
``--path-head-layers``, signed, on the logit difference, against exact patching of the same
units in the same run, with the CPU time of each (``time.process_time``).

One file of about 600 lines: the three parts share the hook patcher, the statistics and the
summary tables.

Statistics: Pearson and Spearman over units of the mean over prompt pairs, with 95% percentile
bootstrap intervals over pairs; ratios over units whose truth is above 5% of the largest.

Usage::

    OMP_NUM_THREADS=1 python experiments/smollm2_unsigned.py --task ioi --n-pairs 16 \
        --out benchmarks/results/smollm2_unsigned_ioi.json
    OMP_NUM_THREADS=1 python experiments/smollm2_unsigned.py --part softmax --task ioi \
        --n-pairs 16 --out benchmarks/results/smollm2_unsigned_softmax_ioi.json
    OMP_NUM_THREADS=1 python experiments/smollm2_unsigned.py --part path --task ioi \
        --n-pairs 8 --path-head-layers 0 15 --out benchmarks/results/smollm2_unsigned_path_ioi.json
    python experiments/smollm2_unsigned.py --summarize benchmarks/results/smollm2_unsigned_*.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from torch import Tensor, nn

from captum_gndi import LayerGNDI, find_layers, tasks, zoo
from captum_gndi.engine import compute_effects
from captum_gndi.interventions import Heads, intervene
from captum_gndi.job import ScoringJob
from captum_gndi.readouts import make_readout
from captum_gndi.runs import make_runner

NORMS = {"l2": 2, "fisher": "fisher"}


class LastLogits(nn.Module):
    """``ids -> logits[:, -1]``, ``(N, V)``: the next-token logits at the final position (only
    that position goes through the LM head)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, ids: Tensor) -> Tensor:
        return self.lm(input_ids=ids, logits_to_keep=1).logits[:, -1]


# --- ground truth: plain hooks ------------------------------------------------------------------


@torch.no_grad()
def _run_with(lm: nn.Module, ids: Tensor, hooks: list[tuple[nn.Module, bool, Callable]]) -> Tensor:
    """Final-position logits ``(N, V)`` with the given (module, pre, hook) hooks in place."""
    handles = [
        m.register_forward_pre_hook(h) if pre else m.register_forward_hook(h) for m, pre, h in hooks
    ]
    try:
        return lm(input_ids=ids, logits_to_keep=1).logits[:, -1].double()
    finally:
        for handle in handles:
            handle.remove()


def _first(output):
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def patched_logits(lm, task, head_layers: list[int], mlp_layers: list[int], n_heads: int):
    """Final-position logits of the clean run with one unit patched from the corrupted run.

    Returns ``(clean (N, V), {unit name: patched (N, V)})``; units ``L{i}H{h}`` (the head's
    slice of ``o_proj``'s input) and ``L{i}.mlp`` (the MLP module's output).
    """
    blocks = list(lm.model.layers)
    clean, corrupted = task.clean, task.corrupted
    n = clean.shape[0]
    acts: dict[tuple[str, int], Tensor] = {}

    def keeper(key):
        def pre(_m, args):
            acts[key] = args[0].detach().clone()

        def post(_m, _a, out):
            acts[key] = _first(out).detach().clone()

        return pre if key[0] == "heads" else post

    hooks = [(blocks[i].self_attn.o_proj, True, keeper(("heads", i))) for i in head_layers]
    hooks += [(blocks[i].mlp, False, keeper(("mlp", i))) for i in mlp_layers]
    _run_with(lm, corrupted, hooks)
    base = _run_with(lm, clean, [])
    out: dict[str, Tensor] = {}
    for i in head_layers:
        src = acts[("heads", i)].repeat(n_heads, 1, 1)
        d = src.shape[-1] // n_heads

        def edit(_m, args, src=src, d=d):
            h = args[0].clone()
            for c in range(n_heads):
                rows, cols = slice(c * n, (c + 1) * n), slice(c * d, (c + 1) * d)
                h[rows, :, cols] = src[rows, :, cols]
            return (h, *args[1:])

        logits = _run_with(lm, clean.repeat(n_heads, 1), [(blocks[i].self_attn.o_proj, True, edit)])
        for c in range(n_heads):
            out[f"L{i}H{c}"] = logits[c * n : (c + 1) * n]
    for i in mlp_layers:
        src = acts[("mlp", i)]

        def replace(_m, _a, output, src=src):
            return (src, *output[1:]) if isinstance(output, tuple) else src

        out[f"L{i}.mlp"] = _run_with(lm, clean, [(blocks[i].mlp, False, replace)])
    return base, out


def kl(clean: Tensor, patched: Tensor) -> Tensor:
    """``KL(softmax(clean) || softmax(patched))`` per row (float64)."""
    log_p, log_q = clean.log_softmax(-1), patched.log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def logit_diff(logits: Tensor, answers: Tensor) -> Tensor:
    picked = logits.gather(1, answers.long())
    return picked[:, 0] - picked[:, 1]


# --- statistics ---------------------------------------------------------------------------------


def bootstrap(est: np.ndarray, true: np.ndarray, n_boot: int, seed: int) -> dict:
    """Pearson and Spearman over units of the pair means, with 95% bootstrap intervals over
    pairs (``est``, ``true``: ``(pairs, units)``)."""
    rng = np.random.default_rng(seed)
    n = est.shape[0]
    idx = [rng.integers(0, n, n) for _ in range(n_boot)]
    out = {}
    for name, fn in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr)):
        point = float(fn(est.mean(0), true.mean(0))[0])
        samples = [fn(est[i].mean(0), true[i].mean(0))[0] for i in idx]
        low, high = np.nanpercentile(samples, [2.5, 97.5])
        out[name] = {"value": point, "low": float(low), "high": float(high)}
    return out


def ratios(est: np.ndarray, true: np.ndarray) -> dict:
    """estimate / truth over units (pair means) whose truth is above 5% of the largest, and
    over single (pair, unit) cases likewise."""
    out = {}
    for label, e, t in (("units", est.mean(0), true.mean(0)), ("cases", est.ravel(), true.ravel())):
        keep = np.abs(t) > 0.05 * np.abs(t).max()
        r = e[keep] / t[keep]
        out[label] = {
            "n": int(keep.sum()),
            "median": float(np.median(r)),
            "q10": float(np.quantile(r, 0.1)),
            "q90": float(np.quantile(r, 0.9)),
            "wrong_sign": int((r < 0).sum()),
        }
    return out


def top_within(est: np.ndarray, true: np.ndarray, k: int = 10) -> int:
    """The estimate's rank (by |mean|) of the last of the true top ``k``."""
    rank = np.argsort(np.argsort(-np.abs(est.mean(0))))
    return int(rank[np.argsort(-np.abs(true.mean(0)))[:k]].max()) + 1


def failures(est: np.ndarray, truth: np.ndarray, names: list[str], top: int = 5) -> list[dict]:
    """Among the true top 20 (by ``truth`` = sqrt(2 KL) pair means), the units whose estimate
    is furthest from the truth by log ratio, with ranks."""
    e, t = est.mean(0), truth.mean(0)
    order = np.argsort(-t)
    rank_e = np.argsort(np.argsort(-e))
    worst = sorted(order[:20], key=lambda u: -abs(np.log(max(e[u], 1e-12) / t[u])))[:top]
    return [
        {
            "unit": names[u],
            "sqrt_2kl": float(t[u]),
            "estimate": float(e[u]),
            "true_rank": int(np.where(order == u)[0][0]) + 1,
            "estimate_rank": int(rank_e[u]) + 1,
        }
        for u in worst
    ]


def compare(est: np.ndarray, kl_true: np.ndarray, names, n_boot: int, seed: int) -> dict:
    root = np.sqrt(2 * np.clip(kl_true, 0, None))
    return {
        "vs_kl": bootstrap(est, kl_true, n_boot, seed),
        "vs_sqrt_2kl": bootstrap(est, root, n_boot, seed),
        "ratio_to_sqrt_2kl": ratios(est, root),
        "top10_true_within_estimate_rank": top_within(est, kl_true),
        "failures": failures(est, root, names),
    }


# --- part vocab ---------------------------------------------------------------------------------


def vocab_points(lm: nn.Module) -> tuple[list, list[str]]:
    """Heads of every layer and the MLP outputs as ``Heads(down_proj, 1)``, in execution order."""
    heads = list(find_layers(lm, "head").values())
    points, names = [], []
    n_heads = lm.config.num_attention_heads
    for i, block in enumerate(lm.model.layers):
        points += [heads[i], Heads(block.mlp.down_proj, 1)]
        names += [f"L{i}H{h}" for h in range(n_heads)] + [f"L{i}.mlp"]
    return points, names


def per_unit(scores: list[Tensor]) -> np.ndarray:
    """``(N, units)`` from one ``(N, H)`` tensor per point."""
    return torch.cat([s.detach().reshape(s.shape[0], -1) for s in scores], 1).double().numpy()


def corrupted_acts(f: nn.Module, points: list, corrupted: Tensor) -> list[Tensor]:
    store: dict[int, Tensor] = {}

    def keep(position: int, a: Tensor) -> None:
        store[position] = a.detach().clone()

    with torch.no_grad(), intervene(points, keep):
        f(corrupted)
    return [store[i] for i in range(len(points))]


def exact_norms(f: nn.Module, points: list, task) -> dict[str, np.ndarray]:
    """Exact L2 and Fisher G-NDI from the forward engine's whole output tangents."""
    job = ScoringJob(
        run=make_runner(f, (task.clean,), None, None),
        layers=points,
        labels=[f"p{i}" for i in range(len(points))],
        baselines=corrupted_acts(f, points, task.corrupted),
        channel_dim=2,
    )
    effects, used = compute_effects(job, "forward", "channel")
    assert used == "forward"
    with torch.no_grad():
        reference = job.run()
    out = {}
    for label, norm in NORMS.items():
        readout = make_readout(norm)
        readout.output_shape = getattr(job.run, "output_shape", None)
        out[label] = per_unit([readout.scores(e, reference) for e in effects])
    return out


def run_vocab(args, lm, task, result) -> None:
    n_heads = lm.config.num_attention_heads
    n_layers = lm.config.num_hidden_layers
    points, names = vocab_points(lm)
    f = LastLogits(lm).eval()
    timings = {}

    t0 = time.process_time()
    base, patched = patched_logits(lm, task, list(range(n_layers)), list(range(n_layers)), n_heads)
    timings["exact_patching"] = time.process_time() - t0
    kl_true = np.stack([kl(base, patched[u]).numpy() for u in names], 1)
    ld_base = logit_diff(base, task.answers)
    ld_true = np.stack([(logit_diff(patched[u], task.answers) - ld_base).numpy() for u in names], 1)
    probs = base.softmax(-1)
    result["clean_top1_prob"] = probs.max(-1).values.tolist()
    result["clean_entropy"] = (-(probs * probs.clamp_min(1e-300).log()).sum(-1)).tolist()
    result["units"] = names
    result["kl_mean"] = kl_true.mean(0).tolist()
    result["logit_diff_effect_mean"] = ld_true.mean(0).tolist()
    print("exact patching", timings["exact_patching"], flush=True)

    estimates: dict[str, np.ndarray] = {}
    t0 = time.process_time()
    for label, value in exact_norms(f, points, task).items():
        estimates[f"{label}_exact"] = value
    timings["exact_forward_both_norms"] = time.process_time() - t0
    print("exact forward", timings["exact_forward_both_norms"], flush=True)

    gndi = LayerGNDI(f, points)
    for m in args.probes:
        for r in [None, *args.probe_exact]:
            for label, norm in NORMS.items():
                name = f"{label}_m{m}" + ("" if r is None else f"_r{r}")
                t0 = time.process_time()
                scores = gndi.attribute(
                    task.clean,
                    baselines=task.corrupted,
                    norm=norm,
                    n_probes=m,
                    probe_exact=r,
                    probe_seed=args.seed,
                    mode="reverse",
                    granularity="channel",
                    channel_dim=2,
                )
                timings[name] = time.process_time() - t0
                estimates[name] = per_unit(scores)
                print(name, timings[name], flush=True)

    t0 = time.process_time()
    ld = tasks.logit_diff(lm)
    signed = LayerGNDI(ld, points).attribute(
        task.clean,
        baselines=task.corrupted,
        additional_forward_args=(task.answers,),
        signed=True,
        granularity="channel",
        channel_dim=2,
    )
    timings["signed_first_order"] = time.process_time() - t0
    signed_np = -per_unit(signed)
    estimates["signed_first_order"] = np.abs(signed_np)
    result["signed_first_order_vs_logit_diff_patching"] = bootstrap(
        signed_np, ld_true, args.n_boot, args.seed
    )

    result["cpu_seconds"] = timings
    result["estimators"] = {}
    for name, est in estimates.items():
        entry = compare(est, kl_true, names, args.n_boot, args.seed)
        key = "exact_forward_both_norms" if name.endswith("_exact") else name
        entry["cpu_seconds"] = timings[key]
        entry["time_ratio_to_exact_patching"] = timings[key] / timings["exact_patching"]
        entry["mean"] = est.mean(0).tolist()
        if "_m" in name:  # probes: against the exact norm
            exact = estimates[f"{name.split('_')[0]}_exact"]
            entry["spearman_vs_exact"] = float(stats.spearmanr(est.mean(0), exact.mean(0))[0])
            entry["pearson_vs_exact"] = float(stats.pearsonr(est.mean(0), exact.mean(0))[0])
        result["estimators"][name] = entry
        print(name, json.dumps(entry["vs_kl"]["spearman"]), flush=True)


# --- part softmax ------------------------------------------------------------------------------


def fisher(clean: Tensor, dz: Tensor) -> Tensor:
    """``sqrt(dz^T (diag(pi) - pi pi^T) dz)`` per row, ``pi = softmax(clean)``."""
    pi = clean.softmax(-1)
    mean = (pi * dz).sum(-1, keepdim=True)
    return (pi * (dz - mean) ** 2).sum(-1).sqrt()


def run_softmax(args, lm, task, result) -> None:
    """Where the Fisher norm stops predicting KL: the norms of the *true* logit change of each
    patched unit against ``sqrt(2 KL)`` (the softmax's curvature alone, no linearisation)."""
    n_heads = lm.config.num_attention_heads
    n_layers = lm.config.num_hidden_layers
    _, names = vocab_points(lm)
    layers = list(range(n_layers))
    base, patched = patched_logits(lm, task, layers, layers, n_heads)
    kl_true = np.stack([kl(base, patched[u]).numpy() for u in names], 1)
    fisher_true = np.stack([fisher(base, patched[u] - base).numpy() for u in names], 1)
    l2_true = np.stack([(patched[u] - base).norm(dim=-1).numpy() for u in names], 1)
    root = np.sqrt(2 * np.clip(kl_true, 0, None))
    result["units"] = names
    result["fisher_true_mean"] = fisher_true.mean(0).tolist()
    result["l2_true_mean"] = l2_true.mean(0).tolist()
    result["sqrt_2kl_mean"] = root.mean(0).tolist()
    result["fisher_true_vs_sqrt_2kl"] = bootstrap(fisher_true, root, args.n_boot, args.seed)
    result["fisher_true_ratio_to_sqrt_2kl"] = ratios(fisher_true, root)
    bins = {}
    for low, high in ((0, 0.3), (0.3, 1), (1, np.inf)):
        keep = (root >= low) & (root < high) & (root > 0)
        r = fisher_true[keep] / root[keep]
        bins[f"{low}-{high}"] = {
            "n": int(keep.sum()),
            "median": float(np.median(r)) if keep.any() else None,
            "q10": float(np.quantile(r, 0.1)) if keep.any() else None,
            "q90": float(np.quantile(r, 0.9)) if keep.any() else None,
        }
    result["fisher_true_ratio_by_sqrt_2kl"] = bins


# --- part path ----------------------------------------------------------------------------------


def run_path(args, lm, task, result) -> None:
    n_heads = lm.config.num_attention_heads
    n_layers = lm.config.num_hidden_layers
    ld = tasks.logit_diff(lm)
    blocks = list(lm.model.layers)
    heads = list(find_layers(lm, "head").values())
    groups = {}
    if not args.path_no_mlp:
        groups["mlp"] = (
            [b.mlp for b in blocks],
            {"granularity": "layer"},
            [],
            list(range(n_layers)),
        )
    if args.path_head_layers:
        layers = args.path_head_layers
        groups["heads"] = (
            [heads[i] for i in layers],
            {"granularity": "channel", "channel_dim": 2},
            layers,
            [],
        )
    result["unit_types"] = {}
    for unit_type, (points, extra, head_layers, mlp_layers) in groups.items():
        t0 = time.process_time()
        base, patched = patched_logits(lm, task, head_layers, mlp_layers, n_heads)
        t_exact = time.process_time() - t0
        names = list(patched)
        ld_base = logit_diff(base, task.answers)
        true = np.stack(
            [(logit_diff(patched[u], task.answers) - ld_base).numpy() for u in names], 1
        )
        entry = {"units": names, "exact_cpu_seconds": t_exact, "true_mean": true.mean(0).tolist()}
        entry["exact_forward_passes"] = len(names)
        entry["estimators"] = {}
        for steps in [1, *args.path_steps]:
            label = "first_order" if steps == 1 else f"unit_{steps}"
            t0 = time.process_time()
            scores = LayerGNDI(ld, points).attribute(
                task.clean,
                baselines=task.corrupted,
                additional_forward_args=(task.answers,),
                signed=True,
                n_steps=steps,
                path="unit",
                **extra,
            )
            seconds = time.process_time() - t0
            est = -per_unit(scores if isinstance(scores, list) else [scores])
            entry["estimators"][label] = {
                "n_steps": steps,
                "cpu_seconds": seconds,
                "time_ratio_to_exact_patching": seconds / t_exact,
                "cells": len(names) * steps,
                **bootstrap(est, true, args.n_boot, args.seed),
                "ratio": ratios(est, true)["units"],
                "top10_true_within_estimate_rank": top_within(est, true),
                "mean": est.mean(0).tolist(),
            }
            print(unit_type, label, seconds, t_exact, flush=True)
        result["unit_types"][unit_type] = entry


# --- summary ------------------------------------------------------------------------------------


def _ci(c: dict) -> str:
    return f"{c['value']:.2f} [{c['low']:.2f}, {c['high']:.2f}]"


def summarize(paths: list[Path]) -> str:
    """The markdown tables of docs/results.md from the JSON files of several runs."""
    vocab = [
        "| task (pairs) | estimator | vs KL: Pearson | vs KL: Spearman | vs sqrt(2 KL): Pearson "
        "| estimate / sqrt(2 KL), units: median (10-90%) | cases: median (10-90%) | "
        "true top 10 within estimate's top | Spearman vs exact | CPU time / exact patching |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    path_rows = [
        "| units | estimator | Pearson [95% CI] | Spearman [95% CI] | estimate / truth: median "
        "(10-90%) | wrong sign | true top 10 within | passes (cells) vs exact | CPU s | "
        "CPU time / exact patching |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    softmax_rows = [
        "| task | Fisher(true dz) vs sqrt(2 KL): Pearson [95% CI] | Spearman [95% CI] | "
        "Fisher(true dz) / sqrt(2 KL), cases: median (10-90%) | by sqrt(2 KL) < 0.3 / 0.3-1 / "
        ">= 1: median (cases) | fisher_exact vs Fisher(true dz): Pearson, Spearman, median "
        "ratio | l2_exact vs L2(true dz): Pearson, Spearman, median ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    runs = [json.loads(path.read_text()) for path in paths]
    order = ("ioi", "factual_recall", "induction")
    runs.sort(key=lambda run: order.index(run["task"]))  # the tasks in this order, whatever glob
    vocab_runs = {run["task"]: run for run in runs if run["part"] == "vocab"}
    for run in runs:
        if run["part"] == "softmax":
            c, rc = run["fisher_true_vs_sqrt_2kl"], run["fisher_true_ratio_to_sqrt_2kl"]["cases"]
            bins = " / ".join(
                "-" if b["median"] is None else f"{b['median']:.2f} ({b['n']})"
                for b in run["fisher_true_ratio_by_sqrt_2kl"].values()
            )
            lin = []
            for norm in ("fisher", "l2"):
                v = vocab_runs.get(run["task"])
                if v is None:
                    lin.append("-")
                    continue
                e = np.array(v["estimators"][f"{norm}_exact"]["mean"])
                t = np.array(run[f"{norm}_true_mean"])
                keep = t > 0.05 * t.max()
                lin.append(
                    f"{stats.pearsonr(e, t)[0]:.2f}, {stats.spearmanr(e, t)[0]:.2f}, "
                    f"{np.median(e[keep] / t[keep]):.2f} (n={int(keep.sum())})"
                )
            softmax_rows.append(
                f"| {run['task']} ({run['n_pairs']}) | {_ci(c['pearson'])} | {_ci(c['spearman'])} "
                f"| {rc['median']:.2f} ({rc['q10']:.2f} to {rc['q90']:.2f}) | {bins} | "
                f"{lin[0]} | {lin[1]} |"
            )
        elif run["part"] == "vocab":
            for name, e in run["estimators"].items():
                ru, rc = e["ratio_to_sqrt_2kl"]["units"], e["ratio_to_sqrt_2kl"]["cases"]
                spe = e.get("spearman_vs_exact")
                vocab.append(
                    f"| {run['task']} ({run['n_pairs']}) | {name} | {_ci(e['vs_kl']['pearson'])} "
                    f"| {_ci(e['vs_kl']['spearman'])} | {_ci(e['vs_sqrt_2kl']['pearson'])} | "
                    f"{ru['median']:.2f} ({ru['q10']:.2f} to {ru['q90']:.2f}) | "
                    f"{rc['median']:.2f} ({rc['q10']:.2f} to {rc['q90']:.2f}) | "
                    f"{e['top10_true_within_estimate_rank']} | "
                    f"{'-' if spe is None else f'{spe:.3f}'} | "
                    f"{e['time_ratio_to_exact_patching']:.2f} |"
                )
        else:
            for unit_type, entry in run["unit_types"].items():
                n = len(entry["units"])
                for name, e in entry["estimators"].items():
                    r = e["ratio"]
                    path_rows.append(
                        f"| {run['task']} {unit_type} ({n}) | {name} | {_ci(e['pearson'])} | "
                        f"{_ci(e['spearman'])} | {r['median']:.2f} ({r['q10']:.2f} to "
                        f"{r['q90']:.2f}) | {r['wrong_sign']} | "
                        f"{e['top10_true_within_estimate_rank']} | {e['cells']} vs {n} | "
                        f"{e['cpu_seconds']:.0f} | {e['time_ratio_to_exact_patching']:.2f} |"
                    )
    tables = [vocab, softmax_rows, path_rows]
    return "\n\n".join("\n".join(t) for t in tables if len(t) > 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summarize", type=Path, nargs="+", help="print the tables of these JSONs")
    parser.add_argument("--part", choices=("vocab", "softmax", "path"), default="vocab")
    parser.add_argument("--task", choices=("ioi", "factual_recall", "induction"), default="ioi")
    parser.add_argument("--n-pairs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probes", type=int, nargs="*", default=[16, 64])
    parser.add_argument("--probe-exact", type=int, nargs="*", default=[8])
    parser.add_argument("--path-steps", type=int, nargs="*", default=[2, 4])
    parser.add_argument("--path-head-layers", type=int, nargs="*", default=[])
    parser.add_argument("--path-no-mlp", action="store_true", help="--part path: heads only")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize))
        return 0
    if args.out is None:
        parser.error("--out is required (or --summarize)")

    torch.manual_seed(args.seed)
    lm, tokenizer = zoo.load_smollm2()
    lm.eval()
    task = getattr(tasks, args.task)(tokenizer, args.n_pairs, seed=args.seed)
    argv_text = " ".join(argv if argv is not None else sys.argv[1:])
    result = {
        "command": f"OMP_NUM_THREADS=1 python experiments/smollm2_unsigned.py {argv_text}",
        "part": args.part,
        "task": args.task,
        "n_pairs": len(task),
        "tokens": task.clean.shape[1],
        "torch_threads": torch.get_num_threads(),
        "load_average_start": os.getloadavg(),
    }
    parts = {"vocab": run_vocab, "softmax": run_softmax, "path": run_path}
    parts[args.part](args, lm, task, result)
    result["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
