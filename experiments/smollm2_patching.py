"""G-NDI against exact activation patching on SmolLM2-135M (issue #23).

For one task (IOI, factual recall or induction), every attention head (30 x 9), every MLP output
(30), every head at every position (``pos_heads``: 30 x T x 9, the package's position x head)
and the residual stream after every block at every position (``resid``: 30 x T) is patched from
the corrupted run into the clean run, one unit at a time, and the change of the task metric (the
logit difference) is recorded per prompt pair. The ground truth is computed here with plain
PyTorch hooks, independently of the package's own intervention code: heads and MLP outputs by
full-sequence patched runs (the units batched as copies of the prompts), positions x heads and
the residual stream by :class:`SuffixPatcher`, which runs only the blocks and positions a patch
can change (checked against full-sequence patching on three units per run). The estimates are
``LayerGNDI(..., signed=True)`` (first order: minus attribution patching) and, where the package
has it, ``path="input"`` (EAP-IG) at several ``n_steps``. For positions x heads the stopping rule
of ``verify_top_k`` is replayed on the recorded effects (``screen_table`` of
experiments/smollm2_verify.py).

Correlations are over units of the mean effect over prompt pairs, with 95% percentile bootstrap
intervals over prompt pairs (pairs resampled, unit means recomputed). The ratio table is
estimate / true effect per unit, over units whose true effect is above 5% of the largest.

Usage::

    OMP_NUM_THREADS=1 python experiments/smollm2_patching.py --task ioi --n-pairs 16 \
        --units heads,mlp --out benchmarks/results/smollm2_patching_ioi.json
    OMP_NUM_THREADS=1 python experiments/smollm2_patching.py --task ioi --n-pairs 16 \
        --units resid,pos_heads --input-steps 4,8 \
        --out benchmarks/results/smollm2_patching_ioi_pos_heads.json
    python experiments/smollm2_patching.py --replay-rule \
        benchmarks/results/smollm2_patching_{ioi,factual_recall,induction}_pos_heads.json

``--replay-rule`` replays the stopping rule on the recorded effects under stricter options
(smaller ``expected_misses``, larger ``audit``) over several audit seeds: no model is loaded.
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

from captum_gndi import LayerGNDI, find_layers, tasks, zoo
from captum_gndi.verify import screen_and_verify

UNIT_TYPES = ("heads", "mlp", "resid", "pos_heads")

sys.path.insert(0, str(Path(__file__).resolve().parent))


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


class SuffixPatcher:
    """Exact patching of one position at a time, running only what the patch can change.

    Patching layer ``L`` at position ``p`` changes nothing before ``p`` (causal attention) and
    nothing below ``L``, so each patched run starts at block ``L`` from the clean run's input
    of that block at positions ``p..T-1``, with the clean keys and values of positions
    ``0..p-1`` as a cache (the blocks below ``L`` are left out of the model's layer list for the
    run, then put back). Units: ``"pos_heads"`` (one head's slice of ``o_proj``'s input at one
    position, the package's position x head) and ``"resid"`` (the block's output at one
    position). Plain PyTorch hooks and the model's own forward, nothing of the package's
    intervention code; :meth:`check` compares units against full-sequence patching by hooks.
    """

    def __init__(self, f, task, unit_type: str, n_heads: int) -> None:
        self.f, self.model, self.task = f, f.model, task
        self.unit_type, self.n_heads = unit_type, n_heads
        self.blocks = _blocks(self.model)
        n, answers = len(task), task.answers
        with torch.no_grad():
            self.base = f(task.clean, answers).squeeze(-1)
            cache = self.model(task.clean, use_cache=True).past_key_values
        self.keys_values = [(layer.keys, layer.values) for layer in cache.layers]
        self.block_inputs = _capture(f, task.clean, answers, self.blocks, pre=True)
        if unit_type == "pos_heads":
            self.points, self.pre = [b.self_attn.o_proj for b in self.blocks], True
        elif unit_type == "resid":
            self.points, self.pre = self.blocks, False
        else:
            raise ValueError(f"SuffixPatcher patches pos_heads or resid, not {unit_type!r}")
        self.corrupted = _capture(f, task.corrupted, answers, self.points, self.pre)
        self.n = n

    def _cache(self, p: int, copies: int):
        from transformers import DynamicCache

        cache = DynamicCache()
        for i, (k, v) in enumerate(self.keys_values):
            cache.update(
                k[:, :, :p].repeat(copies, 1, 1, 1), v[:, :, :p].repeat(copies, 1, 1, 1), i
            )
        return cache

    @torch.no_grad()
    def run(self, layer: int, p: int, heads: list[int | None]) -> torch.Tensor:
        """Effects ``(len(heads), N)`` of patching ``layer`` at position ``p``; a head of
        ``None`` patches nothing (the unpatched run, for checks)."""
        c, n = len(heads), self.n
        src = self.corrupted[layer][:, p]
        d = src.shape[-1] // self.n_heads

        def edit(h):
            h = h.clone().view(c, n, *h.shape[1:])
            for j, head in enumerate(heads):
                if head is None:
                    continue
                cols = (
                    slice(head * d, (head + 1) * d)
                    if self.unit_type == "pos_heads"
                    else slice(None)
                )
                h[j, :, 0, cols] = src[:, cols]
            return h.view(c * n, *h.shape[2:])

        if self.pre:

            def hook(_m, args):
                return (edit(args[0]), *args[1:])

            handle = self.points[layer].register_forward_pre_hook(hook)
        else:

            def hook(_m, _a, out):
                return _replace_first(out, edit(_first(out)))

            handle = self.points[layer].register_forward_hook(hook)
        hidden = self.block_inputs[layer][:, p:].repeat(c, 1, 1)
        cache = self._cache(p, c) if p > 0 else None
        layers = self.model.model.layers
        self.model.model.layers = torch.nn.ModuleList(self.blocks[layer:])
        try:
            out = self.model(inputs_embeds=hidden, past_key_values=cache, use_cache=p > 0)
        finally:
            self.model.model.layers = layers
            handle.remove()
        last = out.logits[:, -1]
        answers = self.task.answers.repeat(c, 1)
        metric = (last.gather(1, answers[:, :1]) - last.gather(1, answers[:, 1:])).squeeze(1)
        return metric.view(c, n) - self.base

    def effects(self) -> np.ndarray:
        """True effects ``(N, units)``, units ordered ``[layer, pos, head]`` or ``[layer,
        pos]``."""
        t = self.task.clean.shape[1]
        heads = list(range(self.n_heads)) if self.unit_type == "pos_heads" else [0]
        columns = []
        for layer in range(len(self.blocks)):
            for p in range(t):
                columns.append(self.run(layer, p, heads).T)
        return torch.cat(columns, dim=1).double().numpy()

    @torch.no_grad()
    def check(self, units: list[tuple[int, int, int]]) -> dict:
        """Suffix runs of ``(layer, pos, head)`` units against full-sequence patching by hooks
        on the whole model, and the unpatched suffix run against the clean metric."""
        diffs, scale, unpatched = [], 0.0, 0.0
        for layer, p, head in units:
            d = self.corrupted[layer].shape[-1] // self.n_heads
            cols = slice(head * d, (head + 1) * d) if self.unit_type == "pos_heads" else slice(None)
            src = self.corrupted[layer]

            def edit(h, p=p, cols=cols, src=src):
                h = h.clone()
                h[:, p, cols] = src[:, p, cols]
                return h

            full = (
                _patched_metric(
                    self.f, self.task.clean, self.task.answers, self.points[layer], self.pre, edit
                )
                - self.base
            )
            suffix = self.run(layer, p, [head])[0]
            diffs.append(float((full - suffix).abs().max()))
            scale = max(scale, float(full.abs().max()))
            unpatched = max(unpatched, float(self.run(layer, p, [None]).abs().max()))
        return {
            "units": [list(u) for u in units],
            "max_abs_diff_to_full_sequence": max(diffs),
            "effect_scale": scale,
            "unpatched_max_abs": unpatched,
        }


def estimate(f, task, unit_type: str, n_heads: int, **kwargs) -> np.ndarray:
    """Minus signed G-NDI per example and unit ``(N, units)``: the estimate of the patching
    effect ``metric(patched) - metric(clean)`` (signed G-NDI is ``J (h - b)``, the change of
    the metric from the patched to the clean run, i.e. minus attribution patching)."""
    model = f.model
    if unit_type == "heads":
        points = list(find_layers(model, "head").values())
        extra = {"granularity": "channel", "channel_dim": 2}
    elif unit_type == "pos_heads":
        points = list(find_layers(model, "head").values())
        extra = {"granularity": "channel", "channel_dim": (1, 2)}
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


def screens(
    means: dict[str, np.ndarray],
    true_mean: np.ndarray,
    n_layers: int,
    t: int,
    n_heads: int,
    steps: int,
) -> dict:
    """The stopping rule of ``verify_top_k`` replayed on the brute-force effects of every
    position x head, for the first-order, ``input_<steps>`` and combined screens (the screen
    study's ``screen_table`` and ``combine`` of experiments/smollm2_verify.py)."""
    from smollm2_verify import combine, screen_table

    units = [(i, p, h) for i in range(n_layers) for p in range(t) for h in range(n_heads)]
    scores = {"first_order": np.abs(means["first_order"])}
    scores[f"input_{steps}"] = np.abs(means[f"input_{steps}"])
    scores["combined"] = combine(scores["first_order"], scores[f"input_{steps}"])["combined"]
    true_abs = {u: float(abs(v)) for u, v in zip(units, true_mean)}
    return screen_table(scores, true_abs, units)


def _names(unit_type: str, n_layers: int, n_heads: int, t: int) -> list[str]:
    if unit_type == "heads":
        return [f"L{i}H{h}" for i in range(n_layers) for h in range(n_heads)]
    if unit_type == "pos_heads":
        return [f"L{i}H{h}@{p}" for i in range(n_layers) for p in range(t) for h in range(n_heads)]
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
    screened = [
        "",
        "| task | units | screen | top 10: rank of last true | rule: share | recall | "
        "top 20: rank of last true | rule: share | recall | rule's misses (true rank, "
        "screen rank) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for path in paths:
        run = json.loads(path.read_text())
        for unit_type, entry in run["units"].items():
            for label, by_k in entry.get("screens", {}).items():
                cells = [
                    f"{c['max_screen_rank_of_true_top']} | {100 * c['share']:.1f}% "
                    f"({c['n_ablations']}) | {c['recall']:.2f}"
                    for c in by_k.values()
                ]
                missed = "; ".join(
                    f"{k}: L{m['unit'][0]}H{m['unit'][2]}@{m['unit'][1]} ({m['true_rank']}, "
                    f"{m['screen_rank']})"
                    for k, c in by_k.items()
                    for m in c["missed"]
                )
                screened.append(
                    f"| {run['task']} | {unit_type} ({entry['n_units']}) | {label} | "
                    f"{' | '.join(cells)} | {missed or 'none'} |"
                )
    if len(screened) > 4:
        rows += screened
    return "\n".join(rows)


RULE_SETTINGS = (
    ("default", {}),
    ("expected_misses=0.5", {"expected_misses": 0.5}),
    ("expected_misses=0.25", {"expected_misses": 0.25}),
    ("expected_misses=0.1", {"expected_misses": 0.1}),
    ("audit=4k", {"audit": "4k"}),
    ("audit=0.01", {"audit": 0.01}),
    ("audit=0.05", {"audit": 0.05}),
)


def replay_rule(paths: list[Path], seeds: int = 10) -> str:
    """The markdown table of the stopping rule's replay under stricter options.

    For each run's positions x heads, the rule (``screen_and_verify`` with ``ablate`` a lookup
    of the recorded brute-force effects) is replayed for the screens of :func:`screens`, k = 10
    and 20, each option of ``RULE_SETTINGS`` (``audit="4k"`` is ``4 * k`` units) and audit
    seeds ``0 .. seeds - 1``. A cell is the mean share of brute force (ablations / units) and
    the mean recall of the true top k over seeds, with the smallest recall in brackets.
    """
    from smollm2_verify import combine

    head = "| task | setting | " + " | ".join(
        f"{name} top {k}" for name in ("first_order", "input_4", "combined") for k in (10, 20)
    )
    rows = [head + " |", "|---|---|" + "---:|" * 6]
    for path in paths:
        run = json.loads(path.read_text())
        entry = run["units"]["pos_heads"]
        inp = next(n for n in entry["screens"] if n.startswith("input_"))
        means = {k: np.abs(np.asarray(v)) for k, v in entry["estimate_mean"].items()}
        screen = {"first_order": means["first_order"], inp: means[inp]}
        screen["combined"] = combine(screen["first_order"], screen[inp])["combined"]
        true_abs = np.abs(np.asarray(entry["true_mean"]))
        effects = dict(enumerate(true_abs.tolist()))
        for label, options in RULE_SETTINGS:
            cells = []
            for scores in screen.values():
                by_unit = dict(enumerate(scores.tolist()))
                for k in (10, 20):
                    truth = set(np.argsort(-true_abs, kind="stable")[:k].tolist())
                    kwargs = dict(options)
                    if kwargs.get("audit") == "4k":
                        kwargs["audit"] = 4 * k
                    share, recall = [], []
                    for seed in range(seeds):
                        res = screen_and_verify(
                            by_unit,
                            lambda us, effects=effects: {u: effects[u] for u in us},
                            k,
                            seed=seed,
                            **kwargs,
                        )
                        share.append(res.n_ablations / len(true_abs))
                        recall.append(len(truth & set(res.units)) / k)
                    cells.append(
                        f"{100 * np.mean(share):.1f}% / {np.mean(recall):.2f} ({min(recall):.2f})"
                    )
            rows.append(f"| {run['task']} ({len(true_abs)}) | {label} | {' | '.join(cells)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summarize", type=Path, nargs="+", help="print the table of these JSONs")
    parser.add_argument(
        "--replay-rule",
        type=Path,
        nargs="+",
        help="print the stopping rule's replay under stricter options on these pos_heads JSONs",
    )
    parser.add_argument("--seeds", type=int, default=10, help="audit seeds for --replay-rule")
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
    if args.replay_rule:
        print(replay_rule(args.replay_rule, args.seeds))
        return 0
    if args.out is None:
        parser.error("--out is required (or --summarize or --replay-rule)")

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
        + " ".join(argv if argv is not None else sys.argv[1:]),
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
        load = [os.getloadavg()[0]]
        wall, cpu = time.perf_counter(), time.process_time()
        check = None
        if unit_type in ("pos_heads", "resid"):
            patcher = SuffixPatcher(f, task, unit_type, n_heads)
            true = patcher.effects()
        else:
            true = exact_patching(f, task, unit_type, n_heads)
        t_exact, cpu_exact = time.perf_counter() - wall, time.process_time() - cpu
        if unit_type in ("pos_heads", "resid"):
            check = patcher.check(
                [(0, 0, 0), (n_layers // 2, t // 2, 1), (n_layers - 1, t - 1, n_heads - 1)]
            )
        entry = {
            "n_units": len(names),
            "exact_seconds": t_exact,
            "exact_cpu_seconds": cpu_exact,
            "estimators": {},
        }
        if check is not None:
            entry["suffix_check"] = check
        estimators = {"first_order": {}}
        estimators.update({f"input_{m}": {"n_steps": m, "path": "input"} for m in steps})
        means = {}
        for label, kwargs in estimators.items():
            wall, cpu = time.perf_counter(), time.process_time()
            est = estimate(f, task, unit_type, n_heads, **kwargs)
            seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
            means[label] = est.mean(0)
            entry["estimators"][label] = {
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "time_ratio_to_exact": cpu_seconds / cpu_exact,
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
        load.append(os.getloadavg()[0])
        entry["load_average"] = load
        entry["time_note"] = "time_ratio_to_exact: CPU seconds of this process (one thread)"
        if unit_type == "pos_heads":
            entry["estimate_mean"] = {k: v.tolist() for k, v in means.items()}
            if steps:
                entry["screens"] = screens(means, true.mean(0), n_layers, t, n_heads, steps[0])
        entry["true_mean"] = true.mean(0).tolist()
        entry["top10_true"] = [names[u] for u in np.argsort(-np.abs(true.mean(0)))[:10]]
        result["units"][unit_type] = entry
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "units"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
