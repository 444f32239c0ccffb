"""Screen and verify on SmolLM2-135M (issue #23, item 5): which screen finds the exact top k.

Heads (``--units heads``): every one of the 270 heads (30 layers x 9 query heads, the input of
``o_proj``) is patched from the corrupted into the clean run, one at a time, with plain PyTorch
hooks (``exact_patching`` of ``experiments/smollm2_patching.py``, independent of the package's
intervention code): the brute-force truth. Each candidate screen scores every head:

- ``first_order``: signed first-order G-NDI (minus attribution patching), ``LayerGNDI``;
- ``input_4``, ``input_8``: ``path="input"`` (EAP-IG) at ``n_steps`` 4 and 8;
- ``graddrop_max`` / ``graddrop_atp``: AtP*'s GradDrop (Kramar et al. 2024) against
  cancellation: one clean forward pass, then one backward pass per layer ``l`` with the gradient
  through layer ``l``'s residual contributions (its attention and MLP outputs) zeroed; ``max``
  takes the largest ``|mean estimate|`` over the undropped and the 30 dropped versions (the
  package's ``verify_top_k(screen="graddrop")``, which scores it; ``graddrop`` below is the
  plain-hooks reference, checked against it),
  ``atp`` is AtP*'s own ``sum_l |estimate_l| / (L - 1)`` per prompt pair, then averaged;
- ``combined``: ``max(|first order|, |input_4|)`` per head (on the metric's scale), and
  ``interleave``: the order of the smaller of the two ranks (score ``1 / min rank``).

For each screen and k in (10, 20): the largest screen rank of a true top-k head (the share an
oracle stopping point would need) and a replay of ``verify_top_k``'s stopping rule
(:func:`captum_gndi.verify.screen_and_verify`, default options) on the recorded brute-force
effects: its recall of the true top k and its share of brute force (``n_ablations / 270``).
Costs are CPU seconds and passes, as ratios to exact patching of every head in the same run.

Neurons (``--units neurons``): the 30 x 1,536 MLP neurons (the input of ``mlp.down_proj``) at
the final position; the screens score every neuron, the stopping rule runs on exact patching of
the neurons it asks for, and the truth is the brute force of the union of every screen's top
``--top-n`` and a uniform random sample of ``--sample`` neurons (not every neuron: stated in the
JSON).

Usage::

    OMP_NUM_THREADS=1 python experiments/smollm2_verify.py --task ioi --n-pairs 24 \
        --units heads --out benchmarks/results/smollm2_verify_ioi.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from captum_gndi import find_layers, tasks, zoo
from captum_gndi.verify import screen_and_verify
from captum_gndi.verify.graddrop import graddrop_effects

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smollm2_patching import _bootstrap, _failures, _ratios, estimate, exact_patching  # noqa: E402

KS = (10, 20)


def _load() -> float:
    return os.getloadavg()[0]


@torch.no_grad()
def capture_inputs(f, ids, answers, modules) -> list[torch.Tensor]:
    """The input of each module on one run of ``f``."""
    seen: list[torch.Tensor | None] = [None] * len(modules)

    def hook(i):
        return lambda _m, args: seen.__setitem__(i, args[0].detach().clone())

    handles = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(modules)]
    try:
        f(ids, answers)
    finally:
        for h in handles:
            h.remove()
    return seen  # type: ignore[return-value]


def graddrop(f, task, points, n_heads: int | None, position: int | None = None) -> np.ndarray:
    """First-order estimates ``(L + 1, N, units)`` of ``f(patched) - f(clean)`` per unit: row 0
    with every gradient, row ``1 + l`` with the gradient through block ``l``'s attention and MLP
    outputs zeroed (GradDrop). ``points`` are the modules whose *input* holds the units (heads:
    ``o_proj``, ``n_heads`` slices of the last dimension summed over positions; neurons:
    ``down_proj``, every channel at ``position``).

    The reference, with plain hooks, of the package's ``screen="graddrop"``
    (:func:`captum_gndi.verify.graddrop.graddrop_effects`, which gives minus the mean of these
    rows): the head runs score with the package and record the largest difference; the neuron
    runs (one position of ``down_proj``'s input, which the package's layers cannot select) and
    ``graddrop_atp`` (per pair) use this."""
    model = f.model
    blocks = list(model.model.layers)
    corrupted = capture_inputs(f, task.corrupted, task.answers, points)
    drop = {"layer": None}
    handles = []
    eps = []

    def add_eps(_m, args, i):
        leaf = torch.zeros_like(args[0], requires_grad=True)
        eps.append((i, leaf))
        return (args[0] + leaf, *args[1:])

    def gate(layer):
        def hook(_m, _a, out):
            tensor = out[0] if isinstance(out, tuple) else out
            tensor.register_hook(lambda g: g * 0 if drop["layer"] == layer else g)

        return hook

    clean = capture_inputs(f, task.clean, task.answers, points)
    for i, p in enumerate(points):
        handles.append(p.register_forward_pre_hook(lambda m, a, i=i: add_eps(m, a, i)))
    for layer, block in enumerate(blocks):
        handles.append(block.self_attn.register_forward_hook(gate(layer)))
        handles.append(block.mlp.register_forward_hook(gate(layer)))
    try:
        with torch.enable_grad():
            out = f(task.clean, task.answers).sum()
            leaves = [leaf for _, leaf in sorted(eps, key=lambda x: x[0])]
            rows = []
            for layer in [None, *range(len(blocks))]:
                drop["layer"] = layer
                grads = torch.autograd.grad(out, leaves, retain_graph=True)
                cols = []
                for g, h, b in zip(grads, clean, corrupted):
                    c = g * (b - h)  # first-order f(patched) - f(clean)
                    if n_heads is not None:
                        c = c.reshape(*c.shape[:2], n_heads, -1).sum((1, 3))
                    else:
                        c = c[:, position]
                    cols.append(c)
                rows.append(torch.cat(cols, 1).detach())
    finally:
        for h in handles:
            h.remove()
    return torch.stack(rows).double().numpy()


def ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of every unit by decreasing score (ties by position)."""
    order = np.argsort(-scores, kind="stable")
    r = np.empty(len(scores), dtype=np.int64)
    r[order] = np.arange(1, len(scores) + 1)
    return r


def screen_table(screens: dict[str, np.ndarray], true_abs: dict, candidates: list) -> dict:
    """Oracle share and the stopping rule's replay for every screen and k."""
    truth = np.array([true_abs.get(u, np.nan) for u in candidates])
    known = ~np.isnan(truth)
    out = {}
    for name, s in screens.items():
        r = ranks(s)
        entry = {}
        for k in KS:
            true_top = np.argsort(-np.where(known, truth, -np.inf))[:k]
            scores = {u: float(v) for u, v in zip(candidates, s)}
            calls = {"n": 0}

            def ablate(chunk, calls=calls):
                calls["n"] += len(chunk)
                return {u: true_abs[u] for u in chunk}

            res = screen_and_verify(scores, ablate, k)
            found = set(res.units)
            truth_set = {candidates[i] for i in true_top}
            entry[f"top{k}"] = {
                "max_screen_rank_of_true_top": int(r[true_top].max()),
                "oracle_share": float(r[true_top].max() / len(s)),
                "recall": len(found & truth_set) / k,
                "n_ablations": res.n_ablations,
                "share": res.n_ablations / len(s),
                "stopped": res.stopped,
                "missed": sorted(
                    [
                        {"unit": list(candidates[i]), "true_rank": j + 1, "screen_rank": int(r[i])}
                        for j, i in enumerate(true_top)
                        if candidates[i] not in found
                    ],
                    key=lambda m: m["true_rank"],
                ),
                "screen_ranks_of_true_top": [int(r[i]) for i in true_top],
            }
        out[name] = entry
    return out


def combine(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """The two combinations of two absolute screens."""
    return {
        "combined": np.maximum(a, b),
        "interleave": 1.0 / np.minimum(ranks(a), ranks(b)),
    }


def timed(fn, *args, **kwargs):
    """``fn``'s value and the CPU seconds of this process it took (robust to a shared CPU)."""
    start = time.process_time()
    value = fn(*args, **kwargs)
    return value, time.process_time() - start


def run_heads(f, task, n_heads: int, steps: list[int], result: dict) -> None:
    model = f.model
    n_layers = model.config.num_hidden_layers
    names = [
        (f"model.layers.{i}.self_attn.o_proj", h) for i in range(n_layers) for h in range(n_heads)
    ]
    load_start = _load()
    true, t_exact = timed(exact_patching, f, task, "heads", n_heads)
    print(f"exact patching {t_exact:.1f} s", flush=True)
    est, costs = {}, {}
    est["first_order"], costs["first_order"] = timed(estimate, f, task, "heads", n_heads)
    for m in steps:
        est[f"input_{m}"], costs[f"input_{m}"] = timed(
            estimate, f, task, "heads", n_heads, n_steps=m, path="input"
        )
        print(f"input_{m} {costs[f'input_{m}']:.1f} s", flush=True)
    rows, costs["graddrop"] = timed(
        graddrop_effects, f, task, find_layers(model, "head"), channel_dim=2
    )  # the package's screen="graddrop": (1 + L) rows of mean J (h - b), layer x head
    package = torch.stack(list(rows.values()), 1).flatten(1).numpy()
    print(f"graddrop {costs['graddrop']:.1f} s", flush=True)
    points = [b.self_attn.o_proj for b in model.model.layers]
    gd, costs["graddrop_reference"] = timed(graddrop, f, task, points, n_heads)
    load_end = _load()
    agree = float(np.abs(gd[0].mean(0) - est["first_order"].mean(0)).max())
    screens = {name: np.abs(e.mean(0)) for name, e in est.items()}
    screens["graddrop_max"] = np.abs(package).max(0)
    screens["graddrop_atp"] = (np.abs(gd[1:]).sum(0) / (n_layers - 1)).mean(0)
    inp = f"input_{steps[0]}"
    screens.update(combine(screens["first_order"], screens[inp]))
    screens["combined_graddrop"] = np.maximum(screens["combined"], screens["graddrop_max"])
    true_mean = true.mean(0)
    true_abs = {u: float(abs(v)) for u, v in zip(names, true_mean)}
    n = len(task)
    passes = {"exact": n_layers * n_heads + 1, "first_order": 3}
    passes.update({f"input_{m}": 2 * m for m in steps})
    passes["graddrop"] = 3 + n_layers
    passes["combined"] = passes["first_order"] + passes[inp]
    costs["combined"] = costs["first_order"] + costs[inp]
    result["units"]["heads"] = {
        "n_units": len(names),
        "exact_seconds": t_exact,
        "load_average": [load_start, load_end],
        "seconds": costs,
        "cpu_ratio_to_exact": {k: v / t_exact for k, v in costs.items()},
        "passes": passes,
        "pass_note": "forward or backward passes over the N pairs; exact = one patched forward "
        "per head (+ the clean run)",
        "graddrop_row0_vs_first_order_max_abs_diff": agree,
        "graddrop_package_vs_reference_max_abs_diff": float(np.abs(package + gd.mean(1)).max()),
        "screens": screen_table(screens, true_abs, names),
        "true_mean": true_mean.tolist(),
        "screen_scores": {k: v.tolist() for k, v in screens.items()},
        "names": [f"L{i}H{h}" for i in range(n_layers) for h in range(n_heads)],
        "n_pairs": n,
    }


class NeuronPatcher:
    """Exact patching of single MLP neurons at one position ``p``, with the prefix cached.

    Patching a neuron at position ``p`` changes nothing at earlier positions (causal
    attention), so the clean run's keys and values of positions ``0..p-1`` are computed once and
    every patched run feeds only the tokens from ``p`` on: ``copies`` neurons x ``N`` pairs per
    pass. ``effects`` are ``f(patched) - f(clean)`` per pair; ``check`` compares one neuron with
    a full-sequence patched run (hooks on ``down_proj``'s input, no cache)."""

    def __init__(self, f, task, position: int, copies: int = 64) -> None:
        self.model, self.task, self.copies = f.model, task, copies
        self.f, self.position = f, position
        self.points = [b.mlp.down_proj for b in self.model.model.layers]
        with torch.no_grad():
            self.base = f(task.clean, task.answers).squeeze(-1)
            prefix = self.model(task.clean[:, :position], use_cache=True).past_key_values
        self.legacy = prefix.to_legacy_cache()
        self.corrupted = [
            h[:, position] for h in capture_inputs(f, task.corrupted, task.answers, self.points)
        ]
        self.cache: dict[tuple[int, int], np.ndarray] = {}
        self.seconds = 0.0

    @torch.no_grad()
    def _run(self, layer: int, neurons: list[int]) -> torch.Tensor:
        from transformers import DynamicCache

        c, n = max(len(neurons), 1), len(self.task)
        cache = DynamicCache.from_legacy_cache(
            tuple((k.repeat(c, 1, 1, 1), v.repeat(c, 1, 1, 1)) for k, v in self.legacy)
        )
        src = self.corrupted[layer]
        suffix = self.task.clean[:, self.position :]

        def hook(_m, args):
            h = args[0].clone().view(c, n, suffix.shape[1], -1)
            for j, u in enumerate(neurons):
                h[j, :, 0, u] = src[:, u]
            return (h.view(c * n, suffix.shape[1], -1),)

        handle = self.points[layer].register_forward_pre_hook(hook)
        try:
            logits = self.model(suffix.repeat(c, 1), past_key_values=cache)
        finally:
            handle.remove()
        last = logits.logits[:, -1]
        answers = self.task.answers.repeat(c, 1)
        metric = (last.gather(1, answers[:, :1]) - last.gather(1, answers[:, 1:])).squeeze(1)
        return metric.view(c, n) - self.base

    def effects(self, units: list[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray]:
        """Per-pair effects of every unit ``(layer, neuron)``, computed once each."""
        todo = sorted({u for u in units if u not in self.cache})
        start = time.process_time()
        by_layer: dict[int, list[int]] = {}
        for layer, neuron in todo:
            by_layer.setdefault(layer, []).append(neuron)
        for layer, neurons in by_layer.items():
            for i in range(0, len(neurons), self.copies):
                part = neurons[i : i + self.copies]
                out = self._run(layer, part).double().numpy()
                self.cache.update({(layer, u): out[j] for j, u in enumerate(part)})
        self.seconds += time.process_time() - start
        return {u: self.cache[u] for u in units}

    @torch.no_grad()
    def check(self, layer: int, neuron: int) -> dict:
        """The cached-prefix effect of one neuron against full-sequence patching by hooks."""
        unpatched = self._run(layer, []).abs().max().item()
        src = capture_inputs(self.f, self.task.corrupted, self.task.answers, self.points)
        h_src = src[layer]

        def hook(_m, args):
            h = args[0].clone()
            h[:, self.position, neuron] = h_src[:, self.position, neuron]
            return (h,)

        handle = self.points[layer].register_forward_pre_hook(hook)
        try:
            full = self.f(self.task.clean, self.task.answers).squeeze(-1) - self.base
        finally:
            handle.remove()
        cached = self._run(layer, [neuron])[0]
        return {
            "unpatched_max_abs": unpatched,
            "neuron": [layer, neuron],
            "max_abs_diff": float((full - cached).abs().max()),
            "effect_scale": float(full.abs().max()),
        }


def neuron_position(task, which: str) -> int:
    """The position of the neuron runs: ``final`` (the last token) or ``subject``: the last
    position where the clean and corrupted prompts differ, the same in every pair (factual
    recall: the last subject token; IOI: the second mention of the subject, S2; induction: the
    final position)."""
    t = task.clean.shape[1]
    if which == "final":
        return t - 1
    differ = task.clean != task.corrupted
    last = {int(row.nonzero().max()) for row in differ}
    if which != "subject" or len(last) != 1:
        raise SystemExit(f"--position {which}: pairs differ last at positions {sorted(last)}")
    return last.pop()


def neuron_input_path(f, task, points, n_steps: int, position: int) -> np.ndarray:
    """``path="input"`` estimates of ``f(patched) - f(clean)`` ``(N, layers * 1536)`` at
    ``position`` (LayerGNDI on ``down_proj``'s input, every position x neuron)."""
    from captum_gndi import LayerGNDI

    scores = LayerGNDI(f, points).attribute(
        task.clean,
        baselines=task.corrupted,
        additional_forward_args=(task.answers,),
        signed=True,
        granularity="channel",
        channel_dim=(1, 2),
        attribute_to_layer_input=True,
        n_steps=n_steps,
        path="input",
    )
    n, t = task.clean.shape
    return -torch.cat([s.reshape(n, t, -1)[:, position] for s in scores], 1).double().numpy()


def run_neurons(f, task, args, result: dict) -> None:
    model = f.model
    n_layers = model.config.num_hidden_layers
    width = model.config.intermediate_size
    units = [(i, j) for i in range(n_layers) for j in range(width)]
    index = {u: i for i, u in enumerate(units)}
    points = [b.mlp.down_proj for b in model.model.layers]
    position = neuron_position(task, args.position)
    load_start = _load()
    costs: dict[str, float] = {}
    gd, costs["graddrop"] = timed(graddrop, f, task, points, None, position)
    costs["first_order"] = costs["graddrop"] / (n_layers + 1)  # one of its 31 backward passes
    inp, costs["input_4"] = timed(neuron_input_path, f, task, points, 4, position)
    screens = {
        "first_order": np.abs(gd[0].mean(0)),
        "input_4": np.abs(inp.mean(0)),
        "graddrop_max": np.abs(gd.mean(1)).max(0),
    }
    screens["combined"] = np.maximum(screens["first_order"], screens["input_4"])
    screens["combined_graddrop"] = np.maximum(screens["combined"], screens["graddrop_max"])
    patcher = NeuronPatcher(f, task, position, copies=max(64, 512 // len(task)))
    rng = np.random.default_rng(args.seed)
    sample = [units[i] for i in rng.choice(len(units), size=args.sample, replace=False)]
    tops = {u for s in screens.values() for u in (units[i] for i in np.argsort(-s)[: args.top_n])}
    truth_units = units if args.full else sorted(set(sample) | tops)
    patcher.effects(truth_units)
    per_unit_s = patcher.seconds / len(truth_units)
    check = patcher.check(*max(tops, key=lambda u: screens["first_order"][index[u]]))
    verify = {}
    for name, s in screens.items():
        scores = {u: float(v) for u, v in zip(units, s)}
        entry = {}
        for k in KS:
            res = screen_and_verify(
                scores, lambda us: {u: abs(float(patcher.effects([u])[u].mean())) for u in us}, k
            )
            entry[f"top{k}"] = {
                "units": [list(u) for u in res.units],
                "n_ablations": res.n_ablations,
                "share": res.n_ablations / len(units),
                "stopped": res.stopped,
            }
        verify[name] = entry
    known = {u: float(patcher.cache[u].mean()) for u in patcher.cache}
    stat_units = units if args.full else sample
    ordered = sorted(known, key=lambda u: -abs(known[u]))
    rank = {u: i + 1 for i, u in enumerate(ordered)}
    for name, entry in verify.items():
        r = ranks(screens[name])
        for k in KS:
            e = entry[f"top{k}"]
            truth = set(ordered[:k])
            found = {tuple(u) for u in e["units"]}
            e["recall"] = len(found & truth) / k
            e["missed"] = [
                {"unit": list(u), "true_rank": rank[u], "screen_rank": int(r[index[u]])}
                for u in ordered[:k]
                if u not in found
            ]
            e["max_screen_rank_of_true_top"] = int(max(r[index[u]] for u in truth))
    load_end = _load()
    result["units"]["neurons"] = {
        "n_units": len(units),
        "position": args.position,
        "position_index": position,
        "truth": "exact patching of every neuron"
        if args.full
        else f"exact patching of {len(patcher.cache)} neurons: a uniform random sample of "
        f"{args.sample}, the top {args.top_n} of each screen, and every neuron the stopping "
        "rule asked for; the true top k is the top k of these (not of every neuron)",
        "n_truth": len(patcher.cache),
        "load_average": [load_start, load_end],
        "seconds": costs,
        "patch_seconds_per_neuron": per_unit_s,
        "brute_force_seconds_extrapolated": per_unit_s * len(units),
        "cpu_ratio_to_brute_force_extrapolated": {
            k: v / (per_unit_s * len(units)) for k, v in costs.items()
        },
        "cached_prefix_check": check,
        "verify": verify,
        "true_top20": [
            {
                "unit": list(u),
                "effect": known[u],
                **{f"{name}_rank": int(ranks(s)[index[u]]) for name, s in screens.items()},
            }
            for u in ordered[:20]
        ],  # fmt: skip
        "sample_effects_abs_quantiles": np.quantile(
            [abs(known[u]) for u in sample], [0.5, 0.9, 0.99, 1.0]
        ).tolist(),
        "per_pair": {  # the uniform sample (every neuron with --full), for the statistics
            "units": [list(u) for u in stat_units],
            **{
                name: np.round(values[:, [index[u] for u in stat_units]], 7).tolist()
                for name, values in (("first_order", gd[0]), ("input_4", inp))
            },
            "effect": np.round(np.stack([patcher.cache[u] for u in stat_units], 1), 7).tolist(),
        },
    }


def run_verify(f, task, args, result: dict) -> None:
    """The package's own ``verify_top_k`` on every head with each screen in ``--screens``."""
    from captum_gndi import verify_top_k

    heads = find_layers(f.model, "head")
    runs = {}
    for screen in args.screens.split(","):
        for k in KS:
            start, wall = time.process_time(), time.perf_counter()
            res = verify_top_k(f, task, heads, k=k, channel_dim=2, screen=screen, progress=False)
            runs[f"{screen}_top{k}"] = {
                "units": [[name, int(i)] for name, i in res.units],
                "effects": res.effects.tolist(),
                "n_ablations": res.n_ablations,
                "share": res.n_ablations / res.n_units,
                "stopped": res.stopped,
                "cpu_seconds": time.process_time() - start,
                "wall_seconds": time.perf_counter() - wall,
                "timings": res.timings,
            }
            print(screen, k, res.n_ablations, flush=True)
    result["units"]["verify_top_k"] = {"load_average": _load(), "runs": runs}


def neuron_statistics(neurons: dict, n_boot: int = 1000, seed: int = 0) -> list[str]:
    """Item 4's statistics of the neuron estimates against exact patching, on the neurons of
    ``per_pair`` (the uniform sample, or every neuron with ``--full``): Pearson and Spearman of
    the mean over pairs with 95% bootstrap intervals over prompt pairs, the estimate / truth
    ratio (median, 10-90%, wrong signs) of the neurons whose true effect exceeds 5% of the
    largest, and the five worst-estimated of the true top 20 (the definitions of
    ``experiments/smollm2_patching.py``)."""
    data = neurons["per_pair"]
    true = np.array(data["effect"])
    names = [f"L{layer}N{n}" for layer, n in data["units"]]
    n_pairs = true.shape[0]
    lines = [
        f"Estimates against exact patching on these {true.shape[1]} neurons ("
        + ("95% bootstrap intervals over the pairs" if n_pairs > 1 else "one pair: no interval")
        + "; ratios of the neurons whose |true effect| exceeds 5% of the largest):",
        "",
        "| estimator | Pearson | Spearman | ratio median | ratio 10-90% | wrong sign |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("first_order", "input_4"):
        est = np.array(data[name])
        boot = _bootstrap(est, true, n_boot if n_pairs > 1 else 1, seed)
        ratio = _ratios(est, true)
        cells = [
            f"{boot[m]['value']:.4f}"
            + (f" [{boot[m]['low']:.3f}, {boot[m]['high']:.3f}]" if n_pairs > 1 else "")
            for m in ("pearson", "spearman")
        ]
        lines.append(
            f"| {name} | {cells[0]} | {cells[1]} | {ratio['median']:.2f} "
            f"| {ratio['q10']:.2f} to {ratio['q90']:.2f} "
            f"| {ratio['wrong_sign']} of {ratio['n_units']} |"
        )
    path = np.array(data["input_4"]).mean(0)
    path_rank = ranks(np.abs(path))
    worst = []
    for f in _failures(np.array(data["first_order"]), true, names):
        u = names.index(f["unit"])
        worst.append(
            f"{f['unit']}: {f['true']:+.3f}, {f['estimate']:+.3f}, {path[u]:+.3f} (true rank "
            f"{f['true_rank']}, first-order rank {f['estimate_rank']}, input rank "
            f"{path_rank[u]})"
        )
    lines += [
        "",
        "Worst first-order estimates among the true top 20 of these neurons (unit: true "
        "effect, first order, input_4; ranks by |mean| among them): " + "; ".join(worst) + ".",
        "",
    ]
    return lines


def markdown(paths: list[Path]) -> str:
    """The tables of docs/results.md from result files."""
    lines = []
    truths = {}  # (task, pairs, tokens) -> brute force of every head, for verify_top_k's recall
    for path in paths:
        data = json.loads(path.read_text())
        if "heads" in data["units"]:
            heads = data["units"]["heads"]
            truths[(data["task"], data["n_pairs"], data["tokens"])] = (
                np.array(heads["true_mean"]),
                heads["names"],
            )
    for path in paths:
        data = json.loads(path.read_text())
        heads = data["units"].get("heads")
        if heads:
            lines += [
                f"**{data['task']}**, {data['n_pairs']} pairs, {data['tokens']} tokens: exact "
                f"patching of the {heads['n_units']} heads {heads['exact_seconds']:.0f} CPU s "
                f"(load average {heads['load_average'][0]:.1f} to {heads['load_average'][1]:.1f} "
                f"on {data['cpu_count']} cores); `{data['command']}`",
                "",
                "| screen | CPU s / exact | top 10: rank of last true | rule: share | recall "
                "| top 20: rank of last true | rule: share | recall |",
                "|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            ratio = heads["cpu_ratio_to_exact"]
            for name, entry in heads["screens"].items():
                cost = ratio.get(name, ratio.get(name.split("_")[0]))
                if name.startswith("graddrop"):
                    cost = ratio["graddrop"]
                elif name in ("combined", "interleave"):
                    cost = ratio["combined"]
                elif name == "combined_graddrop":
                    cost = ratio["combined"] + ratio["graddrop"]
                cells = []
                for k in KS:
                    e = entry[f"top{k}"]
                    cells += [
                        f"{e['max_screen_rank_of_true_top']}",
                        f"{e['share']:.1%} ({e['n_ablations']})",
                        f"{e['recall']:.2f}",
                    ]
                lines.append(f"| {name} | {cost:.3f} | " + " | ".join(cells) + " |")
            lines.append("")
            names = heads["names"]
            misses = [
                f"{name} top {k}: "
                + ", ".join(
                    f"{names[int(m['unit'][0].split('.')[2]) * 9 + m['unit'][1]]} (true rank "
                    f"{m['true_rank']}, screen rank {m['screen_rank']})"
                    for m in entry[f"top{k}"]["missed"]
                )
                for name, entry in heads["screens"].items()
                for k in KS
                if entry[f"top{k}"]["missed"]
            ]
            lines += ["Misses of the rule: " + ("; ".join(misses) if misses else "none") + ".", ""]
        neurons = data["units"].get("neurons")
        if neurons:
            lines += [
                f"**{data['task']} neurons, {neurons.get('position', 'final')} position**, "
                f"{data['n_pairs']} pairs: {neurons['truth']} "
                f"({neurons['n_truth']}); `{data['command']}`",
                "",
                "| screen | top 10: rank of last true | rule: share | recall "
                "| top 20: rank of last true | rule: share | recall |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]
            for name, entry in neurons["verify"].items():
                cells = []
                for k in KS:
                    e = entry[f"top{k}"]
                    cells += [
                        f"{e['max_screen_rank_of_true_top']}",
                        f"{e['share']:.2%} ({e['n_ablations']})",
                        f"{e['recall']:.2f}",
                    ]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            misses = [
                f"{name} top {k}: "
                + ", ".join(
                    f"L{m['unit'][0]}N{m['unit'][1]} (true rank {m['true_rank']}, screen rank "
                    f"{m['screen_rank']})"
                    for m in entry[f"top{k}"]["missed"]
                )
                for name, entry in neurons["verify"].items()
                for k in KS
                if entry[f"top{k}"]["missed"]
            ]
            lines += ["", "Misses of the rule: " + ("; ".join(misses) or "none") + ".", ""]
            if "per_pair" in neurons:
                lines += neuron_statistics(neurons)
        runs = data["units"].get("verify_top_k")
        if runs:
            truth = truths.get((data["task"], data["n_pairs"], data["tokens"]))
            lines += [
                f"**verify_top_k on {data['task']}**, {data['n_pairs']} pairs; `{data['command']}`",
                "",
                "| screen | k | ablations | share | stopped | CPU s |"
                + (" recall | missed (true rank) |" if truth is not None else ""),
                "|---|---:|---:|---:|---|---:|" + ("---:|---|" if truth is not None else ""),
            ]
            for label, r in runs["runs"].items():
                screen, k = label.rsplit("_top", 1)
                row = (
                    f"| {screen} | {k} | {r['n_ablations']} | {r['share']:.1%} | {r['stopped']} "
                    f"| {r['cpu_seconds']:.0f} |"
                )
                if truth is not None:
                    row += verify_recall(r, int(k), *truth)
                lines.append(row)
            if truth is not None:
                lines += [
                    "",
                    "Truth: the brute force of the heads run of the same task, pairs and tokens; "
                    "largest |difference| between the verified heads' effects and its effects: "
                    + f"{max(verify_effect_diff(r, truth[0]) for r in runs['runs'].values()):.2g}.",
                ]
            lines.append("")
    neuron_files = [json.loads(path.read_text())["units"].get("neurons") for path in paths]
    neuron_files = [n for n in neuron_files if n]
    if len(neuron_files) > 1:
        lines += neuron_cells(neuron_files)
    return "\n".join(lines)


def head_index(unit: list) -> int:
    """A verified head ``[".../layers.L.self_attn.heads", h]`` as its index ``9 L + h``."""
    return int(unit[0].split(".")[2]) * 9 + int(unit[1])


def verify_recall(run: dict, k: int, true: np.ndarray, names: list[str]) -> str:
    """The recall cells of a verify_top_k run against the brute force ``true``."""
    order = np.argsort(-np.abs(true))
    found = {head_index(u) for u in run["units"]}
    missed = [f"{names[i]} ({j + 1})" for j, i in enumerate(order[:k]) if i not in found]
    return f" {len(set(order[:k].tolist()) & found) / k:.2f} | {', '.join(missed) or '-'} |"


def verify_effect_diff(run: dict, true: np.ndarray) -> float:
    """Largest |package effect - brute force| over the verified heads (the package's effect is
    ``f(clean) - f(patched)``, the brute force's ``f(patched) - f(clean)``)."""
    idx = [head_index(u) for u in run["units"]]
    return float(np.abs(np.array(run["effects"]) + true[idx]).max())


def neuron_cells(runs: list[dict]) -> list[str]:
    """Per screen, over the neuron runs x k: the cells with recall 1.0, the true top-k neurons
    missed, and the ablations' and the screen's CPU time as shares of the brute force."""
    totals: dict[str, list[tuple[float, int, float, float]]] = {}
    for neurons in runs:
        ratio = neurons["cpu_ratio_to_brute_force_extrapolated"]
        cost = {
            "first_order": ratio["first_order"],
            "input_4": ratio["input_4"],
            "graddrop_max": ratio["graddrop"],
            "combined": ratio["first_order"] + ratio["input_4"],
            "combined_graddrop": ratio["input_4"] + ratio["graddrop"],
        }
        for name, entry in neurons["verify"].items():
            for k in KS:
                e = entry[f"top{k}"]
                totals.setdefault(name, []).append((e["recall"], k, e["share"], cost[name]))
    lines = [
        f"Over the {len(runs)} neuron runs x k = {', '.join(map(str, KS))}:",
        "",
        "| screen | cells with recall 1.0 | true top-k neurons missed | ablations: mean share "
        "| screen CPU / brute force: mean |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, cells in totals.items():
        recall, k, share, cost_ = (np.array(c, dtype=float) for c in zip(*cells))
        lines.append(
            f"| {name} | {int((recall == 1).sum())} of {len(cells)} "
            f"| {int(round(((1 - recall) * k).sum()))} | {share.mean():.2%} | {cost_.mean():.2%} |"
        )
    return [*lines, ""]


def replay(paths: list[Path], misses: tuple[float, ...] = (1.0, 0.5, 0.25)) -> str:
    """The stopping rule replayed with stricter ``expected_misses`` on recorded head effects."""
    lines = [
        "| task | screen | k | " + " | ".join(f"expected_misses={e}" for e in misses) + " |",
        "|---|---|---:|" + "---:|" * len(misses),
    ]
    totals: dict[str, list[tuple[float, int, float, float]]] = {}
    for path in paths:
        data = json.loads(path.read_text())
        heads = data["units"]["heads"]
        true = np.abs(np.array(heads["true_mean"]))
        units = [(i,) for i in range(len(true))]
        for screen in ("first_order", "combined", "graddrop_max", "combined_graddrop"):
            scores = dict(zip(units, heads["screen_scores"][screen]))
            for k in KS:
                truth = set(np.argsort(-true)[:k].tolist())
                cells = []
                for e in misses:
                    res = screen_and_verify(
                        scores, lambda us, t=true: {u: float(t[u[0]]) for u in us}, k,
                        expected_misses=e,
                    )  # fmt: skip
                    recall = len({u[0] for u in res.units} & truth) / k
                    cells.append(f"{res.n_ablations / len(units):.1%}, recall {recall:.2f}")
                    if e == 1.0:
                        totals.setdefault(screen, []).append(
                            (recall, k, res.n_ablations / len(units), screen_cost(heads, screen))
                        )
                lines.append(f"| {data['task']} | {screen} | {k} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Over the {len(paths)} files x k = {', '.join(map(str, KS))} at expected_misses=1.0:",
        "",
        "| screen | cells with recall 1.0 | true top-k units missed | ablations: mean share "
        "| screen CPU / exact: mean | ablations + screen: mean | worst cell |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for screen, cells in totals.items():
        recall, k, share, cost = (np.array(c, dtype=float) for c in zip(*cells))
        total = share + cost
        lines.append(
            f"| {screen} | {int((recall == 1).sum())} of {len(cells)} "
            f"| {int(round(((1 - recall) * k).sum()))} | {share.mean():.1%} | {cost.mean():.3f} "
            f"| {total.mean():.3f} | {total.max():.3f} |"
        )
    return "\n".join(lines)


def screen_cost(heads: dict, screen: str) -> float:
    """A screen's CPU time as a share of exact patching of every head (the package's
    ``combined_graddrop`` runs the input path and GradDrop, whose row 0 is first order)."""
    ratio = heads["cpu_ratio_to_exact"]
    if screen == "graddrop_max":
        return ratio["graddrop"]
    if screen == "combined_graddrop":
        return ratio["input_4"] + ratio["graddrop"]
    return ratio[screen]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("ioi", "factual_recall", "induction"), default="ioi")
    parser.add_argument("--n-pairs", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--units", default="heads")
    parser.add_argument("--input-steps", default="4,8")
    parser.add_argument("--screens", default="combined", help="verify_top_k: its screens")
    parser.add_argument("--sample", type=int, default=2000, help="neurons: random sample size")
    parser.add_argument("--full", action="store_true", help="neurons: patch every neuron")
    parser.add_argument("--top-n", type=int, default=100, help="neurons: top N of each screen")
    parser.add_argument(
        "--position", choices=("final", "subject"), default="final",
        help="neurons: the final position, or the last one where the prompts differ",
    )  # fmt: skip
    parser.add_argument("--out", type=Path)
    parser.add_argument("--replay", type=Path, nargs="*", help="replay the rule on head files")
    parser.add_argument("--markdown", type=Path, nargs="*", help="print tables of these files")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(args.markdown))
        return 0
    if args.replay:
        print(replay(args.replay))
        return 0
    torch.manual_seed(args.seed)
    model, tokenizer = zoo.load_smollm2()
    task = getattr(tasks, args.task)(tokenizer, args.n_pairs, seed=args.seed)
    f = tasks.logit_diff(model)
    result = {
        "command": "OMP_NUM_THREADS=1 python experiments/smollm2_verify.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "task": args.task,
        "n_pairs": len(task),
        "tokens": task.clean.shape[1],
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "units": {},
    }
    if args.out.exists():
        old = json.loads(args.out.read_text())
        result["units"] = old.get("units", {})
    steps = [int(s) for s in args.input_steps.split(",") if s]
    for unit_type in args.units.split(","):
        if unit_type == "heads":
            run_heads(f, task, model.config.num_attention_heads, steps, result)
        elif unit_type == "verify_top_k":
            run_verify(f, task, args, result)
        elif unit_type == "neurons":
            run_neurons(f, task, args, result)
        else:
            raise SystemExit(f"unknown unit type {unit_type}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
