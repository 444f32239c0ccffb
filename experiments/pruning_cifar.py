"""Accuracy of CIFAR-10 ResNets after channel pruning by G-NDI and the usual criteria.

Scores every block-internal channel (``conv1`` of each residual block, measured after its
BatchNorm) on the first ``--score-images`` images of the shared training batch, prunes the least
important channels at each sparsity with ``torch.nn.utils.prune`` masks and measures top-1
accuracy on held-out test images, without retraining. Three rankings are run, fixed in advance:
``layer`` (the same fraction of every layer), ``global`` (one ranking of the raw scores) and
``global-l2`` (one ranking after dividing each layer's scores by their L2 norm). ``random`` is
averaged over three seeds. ``gndi_path`` (``--n-steps`` Gauss-Legendre points, one pass per layer
and point) is scored on the first ``--path-images`` training images only, to bound its cost.
With ``--torch-pruning`` the models are also physically pruned by Torch-Pruning with G-NDI, its
own magnitude and its own Taylor importance (same fraction per layer), and ``--finetune-epochs``
adds a short SGD fine-tune on the training images.

Usage (ResNet-56: about an hour on 2 busy CPU cores)::

    nice -n 10 .venv/bin/python experiments/pruning_cifar.py --model cifar-resnet56 \
        --weights ../shared/data/cifar_resnets/resnet56-4bfd9763.th --out runs/pruning/resnet56

Writes ``results.json`` and ``results.md`` (the tables) into ``--out`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from captum_gndi.pruning import (
    channel_importance,
    evaluate_accuracy,
    find_prunable,
    sparsity_curve,
)
from captum_gndi.zoo import get_model, load_cifar10, shared_data_dir

# label -> (criterion, G-NDI baseline)
CRITERIA = {
    "gndi": ("gndi", "zero"),
    "gndi_mean": ("gndi", "mean"),
    "gndi_path": ("gndi_path", "zero"),
    "magnitude": ("magnitude", "zero"),
    "taylor": ("taylor", "zero"),
    "snip": ("snip", "zero"),
    "hrank": ("hrank", "zero"),
}
RANDOM_SEEDS = (0, 1, 2)
RANKINGS = {"layer": ("layer", "none"), "global": ("global", "none"), "global-l2": ("global", "l2")}


def _fractions(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def _table(dense: float, rows: dict[str, list[float]], sparsities: list[float]) -> str:
    best = {s: max(r[i] for r in rows.values()) for i, s in enumerate(sparsities)}
    lines = [
        "| criterion | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |",
        "|---|" + "---:|" * len(sparsities),
        "| (unpruned) | " + " | ".join(f"{dense:.2%}" for _ in sparsities) + " |",
    ]
    for name, accs in rows.items():
        cells = [f"**{a:.2%}**" if a == best[s] else f"{a:.2%}" for a, s in zip(accs, sparsities)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    shared = shared_data_dir()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="zoo name, e.g. cifar-resnet56")
    parser.add_argument("--weights", required=True, help="checkpoint path")
    parser.add_argument(
        "--data-dir", default=str(shared / "cifar10") if shared else None, help="CIFAR-10 folder"
    )
    parser.add_argument("--score-images", type=int, default=500)
    parser.add_argument(
        "--test-set",
        choices=("exact", "jpeg"),
        default="exact",
        help="exact: the 1,017 test images with original pixels; jpeg: the JPEG-derived batch",
    )
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--sparsities", type=_fractions, default=[0.3, 0.5, 0.7])
    parser.add_argument("--criteria", default=",".join([*CRITERIA, "random"]))
    parser.add_argument("--n-steps", type=int, default=4, help="points of gndi_path")
    parser.add_argument(
        "--path-images", type=int, default=100, help="training images gndi_path is scored on"
    )
    parser.add_argument("--rankings", default=",".join(RANKINGS), help="subset of the rankings")
    parser.add_argument("--torch-pruning", action="store_true")
    parser.add_argument("--finetune-epochs", type=int, default=0)
    parser.add_argument("--finetune-images", type=int, default=20000)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model = get_model(args.model, args.weights).eval()
    train = load_cifar10(args.data_dir, "train")
    score_data = TensorDataset(*(t[: args.score_images] for t in train.tensors))
    test = load_cifar10(args.data_dir, "test", exact=args.test_set == "exact")
    test_data = TensorDataset(*(t[: args.test_images] for t in test.tensors))
    score_loader = DataLoader(score_data, batch_size=100)
    path_loader = DataLoader(TensorDataset(*(t[: args.path_images] for t in train.tensors)), 50)
    test_loader = DataLoader(test_data, batch_size=500)
    example = score_data.tensors[0][:16]
    layers = find_prunable(model, example)
    names = [c for c in args.criteria.split(",") if c]
    print(
        f"{args.model}: {sum(la.n_channels for la in layers)} channels in {len(layers)} layers; "
        f"scores on {len(score_data)} training images, accuracy on {len(test_data)} "
        f"{args.test_set} test images"
    )

    scores, seconds = {}, {}
    for name in names:
        labels = [f"random_s{s}" for s in RANDOM_SEEDS] if name == "random" else [name]
        for label in labels:
            start = time.perf_counter()
            if name == "random":
                seed = int(label.rsplit("s", 1)[1])
                scores[label] = channel_importance(model, score_loader, layers, "random", seed=seed)
            else:
                criterion, baseline = CRITERIA[name]
                scores[label] = channel_importance(
                    model,
                    path_loader if name == "gndi_path" else score_loader,
                    layers,
                    criterion,
                    baseline=baseline,
                    n_steps=args.n_steps,
                )
            seconds[label] = time.perf_counter() - start
            print(f"scored {label} in {seconds[label]:.0f} s", flush=True)

    results: dict = {
        "settings": {k: v for k, v in vars(args).items()},
        "n_test": len(test_data),
        "n_score": len(score_data),
        "layers": [la.name for la in layers],
        "scoring_seconds": seconds,
        "rankings": {},
    }
    markdown = []
    for ranking in [r for r in args.rankings.split(",") if r]:
        scope, normalize = RANKINGS[ranking]
        curve = sparsity_curve(
            model,
            layers,
            scores,
            test_loader,
            args.sparsities,
            example_inputs=example,
            scope=scope,
            normalize=normalize,
            progress=False,
        )
        rows = {}
        for label in scores:
            rows[label] = [curve.point(label, s).accuracy for s in args.sparsities]
        seeds = [rows.pop(f"random_s{s}") for s in RANDOM_SEEDS if f"random_s{s}" in rows]
        if seeds:
            rows["random (mean of 3 seeds)"] = list(np.mean(seeds, axis=0))
        flops = {
            label: [curve.point(label, s).flop_reduction for s in args.sparsities]
            for label in scores
        }
        results["dense_accuracy"] = curve.dense_accuracy
        results["rankings"][ranking] = {"accuracy": rows, "curve": curve.to_dict()}
        span = [
            f"{min(f[i] for f in flops.values()):.0%}-{max(f[i] for f in flops.values()):.0%}"
            for i in range(len(args.sparsities))
        ]
        markdown.append(
            f"### {args.model}, ranking: {ranking}\n\n"
            f"{_table(curve.dense_accuracy, rows, args.sparsities)}\n\n"
            f"FLOPs removed at {', '.join(f'{s:.0%}' for s in args.sparsities)} sparsity "
            f"(range over criteria): {', '.join(span)}."
        )
        print(markdown[-1], "\n", flush=True)

    if args.torch_pruning:
        from captum_gndi.pruning import prune_physically

        rows = {}
        for importance in ("gndi", "tp-magnitude", "tp-taylor"):
            accs = []
            for s in args.sparsities:
                small = prune_physically(
                    model,
                    example,
                    layers,
                    scores["gndi"] if importance == "gndi" else importance,
                    s,
                    global_pruning=False,
                    data=score_loader,
                    max_batches=5,
                )
                accs.append(evaluate_accuracy(small, test_loader))
            rows[f"Torch-Pruning + {importance}"] = accs
        results["torch_pruning"] = rows
        dense = evaluate_accuracy(model, test_loader)
        markdown.append(
            f"### {args.model}, Torch-Pruning (physical, same fraction per layer)\n\n"
            + _table(dense, rows, args.sparsities)
        )
        print(markdown[-1], "\n", flush=True)

    if args.finetune_epochs:
        tune = TensorDataset(*(t[: args.finetune_images] for t in train.tensors))
        tune_loader = DataLoader(tune, batch_size=128, shuffle=True)
        tuned = sparsity_curve(
            model,
            layers,
            {k: v for k, v in scores.items() if k in ("gndi", "magnitude", "taylor")},
            test_loader,
            [0.5],
            example_inputs=example,
            scope="layer",
            finetune_data=tune_loader,
            finetune_epochs=args.finetune_epochs,
            progress=False,
        )
        results["finetune"] = tuned.to_dict()
        lines = [
            "| criterion | no retraining | after fine-tune |",
            "|---|---:|---:|",
            f"| (unpruned) | {tuned.dense_accuracy:.2%} | |",
        ]
        for p in tuned.points:
            lines.append(f"| {p.criterion} | {p.accuracy:.2%} | {p.finetuned_accuracy:.2%} |")
        markdown.append(
            f"### {args.model}, 50% per layer, {args.finetune_epochs} epoch(s) SGD fine-tune on "
            f"{len(tune)} training images\n\n" + "\n".join(lines)
        )
        print(markdown[-1], "\n", flush=True)

    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text("\n\n".join(markdown) + "\n")
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")


if __name__ == "__main__":
    main()
