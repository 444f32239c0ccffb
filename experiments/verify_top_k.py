"""Screen and verify against brute force: recall@k, share of ablations and wall time.

For each trained CIFAR ResNet, in one run on the same CPU threads:

1. brute force with the harness (:func:`captum_gndi.validation.ablate`: one full forward pass per
   channel and batch), every branch channel (the outputs of each block's ``bn2``), the ground
   truth;
2. brute force with :func:`captum_gndi.verify_top_k`'s own engine (``k = n_units``: every
   channel ablated, prefix reused, units stacked), to separate "fewer ablations" from "cheaper
   ablations" and to check that both engines give the same damage;
3. :func:`captum_gndi.verify_top_k` for each k and seed: recall@k against (1), the share of
   ablations it ran, and its wall time (G-NDI scoring included) over each brute force's;
4. a replay of the same stopping rule (:func:`captum_gndi.verify.screen_and_verify`) on the
   recorded G-NDI scores and brute-force damages for ``--replay-seeds`` audit seeds: the spread
   of recall and cost over the random audit, without new ablations.

Example (the numbers of docs/results.md)::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/verify_top_k.py --models 20 56 \\
        --k 10 20 --seeds 0 --out benchmarks/results/verify_top_k.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from torch.utils.data import DataLoader

from captum_gndi import find_layers, verify_top_k, zoo
from captum_gndi.validation import ablate
from captum_gndi.verify import screen_and_verify

CHECKPOINTS = {20: "resnet20-12fca82f.th", 56: "resnet56-4bfd9763.th"}


class Clock:
    """Wall time and this process's CPU time of a block (CPU time is robust to a shared CPU)."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu
        self.load = os.getloadavg()[0]


def recall(found: list[str], truth: list[str]) -> float:
    """Share of the true top k that ``found`` contains."""
    return len(set(found) & set(truth)) / len(truth)


def run_model(depth: int, args: argparse.Namespace) -> dict[str, Any]:
    """Brute force, then verify_top_k for every k and seed, on one ResNet."""
    weights = Path(args.weights_dir) / CHECKPOINTS[depth]
    model = zoo.cifar_resnet(depth, weights)
    data = zoo.load_cifar10(args.data_dir, split="test", limit=args.limit)
    loader = DataLoader(data, batch_size=args.batch_size)
    layers = find_layers(model, "branch")
    metrics = tuple(args.damage)
    print(f"resnet{depth}: {len(layers)} branch layers, {len(data)} images", flush=True)

    with Clock() as harness:
        truth = ablate(model, loader, layers, damage=metrics, granularity="channel", progress=False)
    harness_s, harness_cpu = harness.wall, harness.cpu
    names = truth.names
    print(
        f"  harness brute force: {len(names)} channels in {harness_s:.1f} s wall, "
        f"{harness_cpu:.1f} s CPU (load {harness.load:.1f})",
        flush=True,
    )

    out: dict[str, Any] = {
        "model": f"cifar-resnet{depth}",
        "n_units": len(names),
        "n_examples": truth.n_examples,
        "harness_brute_force_s": harness_s,
        "harness_brute_force_cpu_s": harness_cpu,
        "harness_load": harness.load,
        "metrics": {},
    }
    for metric in metrics:
        damage = dict(zip(names, truth.damage[metric].tolist()))
        with Clock() as clock:
            full = verify_top_k(model, loader, layers, k=len(names), damage=metric, progress=False)
        engine_s, engine_cpu = clock.wall, clock.cpu
        engine_damage = {f"{u[0]}[{u[1]}]": d for u, d in full.verified.items()}
        scores = {f"{u[0]}[{u[1]}]": s for u, s in full.scores.items()}
        gap = max(abs(engine_damage[n] - damage[n]) for n in names)
        rho = spearmanr([scores[n] for n in names], [damage[n] for n in names]).correlation
        print(
            f"  {metric}: engine brute force {engine_s:.1f} s wall, {engine_cpu:.1f} s CPU "
            f"({full.engine}, load {clock.load:.1f}), max |engine - "
            f"harness| = {gap:.2e}, Spearman(G-NDI, damage) = {rho:.3f}",
            flush=True,
        )
        ranked = sorted(names, key=lambda n: -damage[n])
        by_score = sorted(names, key=lambda n: -scores[n])
        entry: dict[str, Any] = {
            "engine": full.engine,
            "engine_brute_force_s": engine_s,
            "engine_brute_force_cpu_s": engine_cpu,
            "engine_load": clock.load,
            "max_abs_engine_minus_harness": gap,
            "spearman_gndi_damage": rho,
            "runs": [],
            "replay": [],
        }
        for k in args.k:
            top = ranked[:k]
            floor = max(by_score.index(n) + 1 for n in top)  # fewest ablations in score order
            for seed in args.seeds:
                with Clock() as clock:
                    result = verify_top_k(
                        model, loader, layers, k=k, damage=metric, seed=seed, progress=False
                    )
                wall, cpu = clock.wall, clock.cpu
                row = {
                    "k": k,
                    "seed": seed,
                    "recall": recall(result.names, top),
                    "order_matches": result.names == top,
                    "n_ablations": result.n_ablations,
                    "n_audit": len(result.audit),
                    "fraction": result.fraction,
                    "oracle_fraction": floor / len(names),
                    "miss_probability": result.miss_probability,
                    "ratio": result.ratio,
                    "stopped": result.stopped,
                    "wall_s": wall,
                    "scoring_s": result.timings["scoring_s"],
                    "time_vs_harness": wall / harness_s,
                    "time_vs_engine_brute_force": wall / engine_s,
                    "cpu_s": cpu,
                    "cpu_vs_harness": cpu / harness_cpu,
                    "cpu_vs_engine_brute_force": cpu / engine_cpu,
                    "load": clock.load,
                    "top_k": result.names,
                }
                entry["runs"].append(row)
                print(
                    f"  k={k} seed={seed}: recall {row['recall']:.2f}, {result.n_ablations}/"
                    f"{len(names)} ablations ({100 * result.fraction:.1f}%; fewest possible in "
                    f"score order {100 * floor / len(names):.1f}%), miss prob "
                    f"{result.miss_probability:.3f}, {wall:.1f} s = "
                    f"{wall / harness_s:.3f} x harness, {wall / engine_s:.3f} x engine brute; "
                    f"CPU {cpu:.1f} s = {cpu / harness_cpu:.3f} x harness, "
                    f"{cpu / engine_cpu:.3f} x engine brute",
                    flush=True,
                )
            replay = [
                screen_and_verify(
                    full.scores, lambda us, v=full.verified: {u: v[u] for u in us}, k, seed=seed
                )
                for seed in range(args.replay_seeds)
            ]
            recalls = np.array([recall(r.names, top) for r in replay])
            fractions = np.array([r.fraction for r in replay])
            misses = np.array([r.miss_probability for r in replay])
            entry["replay"].append(
                {
                    "k": k,
                    "seeds": args.replay_seeds,
                    "recall_mean": float(recalls.mean()),
                    "recall_min": float(recalls.min()),
                    "share_recall_1": float((recalls == 1).mean()),
                    "fraction_mean": float(fractions.mean()),
                    "fraction_max": float(fractions.max()),
                    "miss_probability_mean": float(misses.mean()),
                    "oracle_fraction": floor / len(names),
                }
            )
            print(
                f"  k={k} replay over {args.replay_seeds} audit seeds: recall mean "
                f"{recalls.mean():.3f} (min {recalls.min():.2f}, share 1.0: "
                f"{(recalls == 1).mean():.2f}), ablations mean {100 * fractions.mean():.1f}% "
                f"(max {100 * fractions.max():.1f}%)",
                flush=True,
            )
        out["metrics"][metric] = entry
    return out


def render(results: dict[str, Any]) -> str:
    """Markdown tables of a results JSON (the tables of docs/results.md and benchmarks.md)."""
    lines = [
        "| model | damage | k | recall@k | ablations (share) | fewest possible in G-NDI order "
        "| replay over audit seeds: recall mean (share = 1.0), ablations mean / max "
        "| est. miss prob. | wall vs harness brute force | CPU vs harness "
        "| CPU vs engine brute force |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for model in results["models"]:
        for metric, entry in model["metrics"].items():
            replay = {r["k"]: r for r in entry["replay"]}
            for row in entry["runs"]:
                r = replay[row["k"]]
                lines.append(
                    f"| {model['model']} ({model['n_units']} channels) | `{metric}` | {row['k']} "
                    f"| {row['recall']:.2f} | {row['n_ablations']} ({100 * row['fraction']:.1f}%) "
                    f"| {100 * row['oracle_fraction']:.1f}% | {r['recall_mean']:.3f} "
                    f"({r['share_recall_1']:.2f}), {100 * r['fraction_mean']:.1f}% / "
                    f"{100 * r['fraction_max']:.1f}% | {row['miss_probability']:.2f} "
                    f"| {row['time_vs_harness']:.3f} | {row['cpu_vs_harness']:.3f} "
                    f"| {row['cpu_vs_engine_brute_force']:.3f} |"
                )
    lines += [
        "",
        "| model | harness brute force: wall / CPU s (load) | engine brute force: wall / CPU s "
        "(load) | engine vs harness (CPU) | max abs. damage difference | Spearman(G-NDI, damage) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for model in results["models"]:
        for metric, entry in model["metrics"].items():
            lines.append(
                f"| {model['model']} `{metric}` | {model['harness_brute_force_s']:.0f} / "
                f"{model['harness_brute_force_cpu_s']:.0f} ({model['harness_load']:.1f}) | "
                f"{entry['engine_brute_force_s']:.0f} / {entry['engine_brute_force_cpu_s']:.0f} "
                f"({entry['engine_load']:.1f}) | "
                f"{model['harness_brute_force_cpu_s'] / entry['engine_brute_force_cpu_s']:.2f}x "
                f"faster | {entry['max_abs_engine_minus_harness']:.1e} "
                f"| {entry['spearman_gndi_damage']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, run every model, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, nargs="+", default=[20, 56], choices=[20, 56])
    parser.add_argument("--k", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--replay-seeds", type=int, default=100)
    parser.add_argument("--damage", nargs="+", default=["output_delta"])
    parser.add_argument("--limit", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--data-dir", default="../shared/data/cifar10")
    parser.add_argument("--weights-dir", default="../shared/data/cifar_resnets")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/verify_top_k.json")
    parser.add_argument("--render", help="only print the Markdown tables of this results JSON")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(Path(args.render).read_text())))
        return
    torch.set_num_threads(args.threads)
    results = {
        "command": "experiments/verify_top_k.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "torch": torch.__version__,
        "threads": args.threads,
        "models": [run_model(depth, args) for depth in args.models],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"written to {args.out}")
    print(render(results))


if __name__ == "__main__":
    main()
