"""G-NDI against exact activation patching on SmolLM2-135M (issue #23).

For one task (IOI, factual recall or induction), every attention head (30 x 9), every MLP output
(30) and the residual stream after every block at every position (30 x T) is patched from the
corrupted run into the clean run, one unit at a time, and the change of the task metric (the
logit difference) is recorded per prompt pair. The ground truth is computed here with plain
PyTorch hooks, independently of the package's own intervention code. The estimates are
``LayerGNDI(..., signed=True)`` (first order: minus attribution patching) and, where the package
has it, ``path="input"`` (EAP-IG) at several ``n_steps``.

Correlations are over units of the mean effect over prompt pairs, with 95% percentile bootstrap
intervals over prompt pairs (pairs resampled, unit means recomputed). The ratio table is
estimate / true effect per unit, over units whose true effect is above 5% of the largest.

Usage::

    OMP_NUM_THREADS=1 python experiments/smollm2_patching.py --task ioi --n-pairs 16 \
        --out benchmarks/results/smollm2_patching_ioi.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from captum_gndi import LayerGNDI, find_layers, tasks, zoo

UNIT_TYPES = ("heads", "mlp", "resid")


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    return list(model.model.layers)


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, value):
    return (value, *output[1:]) if isinstance(output, tuple) else value


@torch.no_grad()
def _capture(f, ids, answers, modules, pre: bool) -> list[torch.Tensor]:
    """The activation of each module (its input when ``pre``) on one run of ``f``."""
    seen: list[torch.Tensor | None] = [None] * len(modules)
    handles = []
    for i, m in enumerate(modules):
        if pre:

            def hook(_m, args, i=i):
                seen[i] = args[0].detach().clone()

            handles.append(m.register_forward_pre_hook(hook))
        else:

            def hook(_m, _a, out, i=i):
                seen[i] = _first(out).detach().clone()

            handles.append(m.register_forward_hook(hook))
    try:
        f(ids, answers)
    finally:
        for h in handles:
            h.remove()
    return seen  # type: ignore[return-value]


@torch.no_grad()
def _patched_metric(
    f, ids, answers, module, pre: bool, edit: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    if pre:

        def hook(_m, args):
            return (edit(args[0]), *args[1:])

        handle = module.register_forward_pre_hook(hook)
    else:

        def hook(_m, _a, out):
            return _replace_first(out, edit(_first(out)))

        handle = module.register_forward_hook(hook)
    try:
        return f(ids, answers).squeeze(-1)
    finally:
        handle.remove()


@torch.no_grad()
def exact_patching(f, task, unit_type: str, n_heads: int) -> np.ndarray:
    """True effects ``(N, units)``: metric(clean with one unit patched) - metric(clean)."""
    clean, corrupted, answers = task.clean, task.corrupted, task.answers
    n, t = clean.shape
    base = f(clean, answers).squeeze(-1)
    blocks = _blocks(f.model if hasattr(f, "model") else f)
    if unit_type == "heads":
        modules, pre = [b.self_attn.o_proj for b in blocks], True
    elif unit_type == "mlp":
        modules, pre = [b.mlp for b in blocks], False
    else:
        modules, pre = blocks, False
    corrupt_acts = _capture(f, corrupted, answers, modules, pre)
    columns = []
    for module, h_corr in zip(modules, corrupt_acts):
        d = h_corr.shape[-1] // n_heads
        if unit_type == "heads":
            copies = n_heads
        elif unit_type == "mlp":
            copies = 1
        else:
            copies = t
        ids = clean.repeat(copies, 1)
        ans = answers.repeat(copies, 1)
        src = h_corr.repeat(copies, *([1] * (h_corr.dim() - 1)))

        def edit(h, src=src, copies=copies, d=d):
            h = h.clone()
            for c in range(copies):
                rows = slice(c * n, (c + 1) * n)
                if unit_type == "heads":
                    cols = slice(c * d, (c + 1) * d)
                    h[rows, :, cols] = src[rows, :, cols]
                elif unit_type == "mlp":
                    h[rows] = src[rows]
                else:
                    h[rows, c] = src[rows, c]
            return h

        out = _patched_metric(f, ids, ans, module, pre, edit)
        columns.append((out.view(copies, n) - base).T)
    return torch.cat(columns, dim=1).double().numpy()


def estimate(f, task, unit_type: str, n_heads: int, **kwargs) -> np.ndarray:
    """Minus signed G-NDI per example and unit ``(N, units)``: the estimate of the patching
    effect ``metric(patched) - metric(clean)`` (signed G-NDI is ``J (h - b)``, the change of
    the metric from the patched to the clean run, i.e. minus attribution patching)."""
    model = f.model
    if unit_type == "heads":
        points = list(find_layers(model, "head").values())
        extra = {"granularity": "channel", "channel_dim": 2}
    elif unit_type == "mlp":
        points = [b.mlp for b in _blocks(model)]
        extra = {"granularity": "layer"}
    else:
        points = _blocks(model)
        extra = {"granularity": "channel", "channel_dim": 1}
    scores = LayerGNDI(f, points).attribute(
        task.clean,
        baselines=task.corrupted,
        additional_forward_args=(task.answers,),
        signed=True,
        **extra,
        **kwargs,
    )
    scores = scores if isinstance(scores, list) else [scores]
    return -torch.cat([s.reshape(s.shape[0], -1) for s in scores], dim=1).double().numpy()


def _bootstrap(est: np.ndarray, true: np.ndarray, n_boot: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n = est.shape[0]
    out = {}
    for name, fn in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr)):
        point = float(fn(est.mean(0), true.mean(0))[0])
        samples = []
        for _ in range(n_boot):
            idx = rng.integers(0, n, n)
            samples.append(fn(est[idx].mean(0), true[idx].mean(0))[0])
        low, high = np.nanpercentile(samples, [2.5, 97.5])
        out[name] = {"value": point, "low": float(low), "high": float(high)}
    return out


def _ratios(est: np.ndarray, true: np.ndarray) -> dict:
    e, t = est.mean(0), true.mean(0)
    keep = np.abs(t) > 0.05 * np.abs(t).max()
    r = e[keep] / t[keep]
    return {
        "n_units": int(keep.sum()),
        "median": float(np.median(r)),
        "q10": float(np.quantile(r, 0.1)),
        "q90": float(np.quantile(r, 0.9)),
        "wrong_sign": int((r < 0).sum()),
    }


def _failures(est: np.ndarray, true: np.ndarray, names: list[str], top: int = 5) -> list[dict]:
    """The units with the largest |estimate - truth| among the true top 20."""
    e, t = est.mean(0), true.mean(0)
    top20 = np.argsort(-np.abs(t))[:20]
    worst = sorted(top20, key=lambda u: -abs(e[u] - t[u]))[:top]
    rank_e = np.argsort(np.argsort(-np.abs(e)))
    return [
        {
            "unit": names[u],
            "true": float(t[u]),
            "estimate": float(e[u]),
            "true_rank": int(np.where(np.argsort(-np.abs(t)) == u)[0][0]) + 1,
            "estimate_rank": int(rank_e[u]) + 1,
        }
        for u in worst
    ]


def _names(unit_type: str, n_layers: int, n_heads: int, t: int) -> list[str]:
    if unit_type == "heads":
        return [f"L{i}H{h}" for i in range(n_layers) for h in range(n_heads)]
    if unit_type == "mlp":
        return [f"L{i}.mlp" for i in range(n_layers)]
    return [f"L{i}.resid@{p}" for i in range(n_layers) for p in range(t)]


def summarize(paths: list[Path]) -> str:
    """The markdown table of docs/results.md from the JSON files of several runs."""
    rows = [
        "| task | units | estimator | Pearson [95% CI] | Spearman [95% CI] | "
        "estimate / truth: median (10-90%) | wrong sign | true top 10 within estimate's top | "
        "time / exact patching |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        run = json.loads(path.read_text())
        for unit_type, entry in run["units"].items():
            for label, e in entry["estimators"].items():
                p, s, r = e["pearson"], e["spearman"], e["ratio"]
                rows.append(
                    f"| {run['task']} | {unit_type} ({entry['n_units']}) | {label} | "
                    f"{p['value']:.2f} [{p['low']:.2f}, {p['high']:.2f}] | "
                    f"{s['value']:.2f} [{s['low']:.2f}, {s['high']:.2f}] | "
                    f"{r['median']:.2f} ({r['q10']:.2f} to {r['q90']:.2f}), n={r['n_units']} | "
                    f"{r['wrong_sign']} | {e['top10_true_within_estimate_rank']} | "
                    f"{e['time_ratio_to_exact']:.3f} |"
                )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summarize", type=Path, nargs="+", help="print the table of these JSONs")
    parser.add_argument("--task", choices=("ioi", "factual_recall", "induction"), default="ioi")
    parser.add_argument("--n-pairs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--units", default=",".join(UNIT_TYPES))
    parser.add_argument("--input-steps", default="", help="comma list of n_steps for path='input'")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize))
        return 0
    if args.out is None:
        parser.error("--out is required (or --summarize)")

    torch.manual_seed(args.seed)
    model, tokenizer = zoo.load_smollm2()
    task = getattr(tasks, args.task)(tokenizer, args.n_pairs, seed=args.seed)
    f = tasks.logit_diff(model)
    n_layers = model.config.num_hidden_layers
    n_heads = model.config.num_attention_heads
    t = task.clean.shape[1]
    with torch.no_grad():
        clean_ld = f(task.clean, task.answers).squeeze(-1)
        corrupt_ld = f(task.corrupted, task.answers).squeeze(-1)
    result = {
        "command": "OMP_NUM_THREADS=1 python experiments/smollm2_patching.py "
        + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "task": args.task,
        "n_pairs": len(task),
        "tokens": t,
        "torch_threads": torch.get_num_threads(),
        "clean_logit_diff": float(clean_ld.mean()),
        "corrupted_logit_diff": float(corrupt_ld.mean()),
        "clean_accuracy": float((clean_ld > 0).double().mean()),
        "units": {},
    }
    steps = [int(s) for s in args.input_steps.split(",") if s]
    for unit_type in args.units.split(","):
        names = _names(unit_type, n_layers, n_heads, t)
        start = time.perf_counter()
        true = exact_patching(f, task, unit_type, n_heads)
        t_exact = time.perf_counter() - start
        entry = {"n_units": len(names), "exact_seconds": t_exact, "estimators": {}}
        estimators = {"first_order": {}}
        estimators.update({f"input_{m}": {"n_steps": m, "path": "input"} for m in steps})
        for label, kwargs in estimators.items():
            start = time.perf_counter()
            est = estimate(f, task, unit_type, n_heads, **kwargs)
            seconds = time.perf_counter() - start
            entry["estimators"][label] = {
                "seconds": seconds,
                "time_ratio_to_exact": seconds / t_exact,
                **_bootstrap(est, true, args.n_boot, args.seed),
                "ratio": _ratios(est, true),
                "failures": _failures(est, true, names),
                "top10_true_within_estimate_rank": int(
                    max(
                        np.argsort(np.argsort(-np.abs(est.mean(0))))[
                            np.argsort(-np.abs(true.mean(0)))[:10]
                        ]
                    )
                    + 1
                ),
            }
            print(unit_type, label, json.dumps(entry["estimators"][label]["pearson"]), flush=True)
        entry["true_mean"] = true.mean(0).tolist()
        entry["top10_true"] = [names[u] for u in np.argsort(-np.abs(true.mean(0)))[:10]]
        result["units"][unit_type] = entry
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "units"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
