"""Torch-Pruning's own workflow on a trained CIFAR ResNet with G-NDI as its importance.

Prunes the block-internal channels (``conv1`` of every residual block, the layers
:func:`captum_gndi.pruning.find_prunable` returns; every other conv/linear is in Torch-Pruning's
``ignored_layers``) of a trained CIFAR-10 ResNet with ``tp.pruner.MetaPruner`` and global
ranking, without fine-tuning, at each channel sparsity, with four importances:

- ``gndi``: :class:`captum_gndi.pruning.GNDIImportance` (``target="label"``, zero baseline),
  one-shot (``iterative_steps=1``);
- ``gndi-iter5``: the same with ``iterative_steps=5`` (G-NDI recomputed on the pruned model at
  every step);
- ``tp-taylor``: Torch-Pruning's ``GroupTaylorImportance`` (gradients of the cross-entropy on the
  same scoring images), one-shot;
- ``tp-magnitude``: Torch-Pruning's ``GroupMagnitudeImportance`` (group L2 norm), one-shot.

Every importance sees the same ``--score-images`` training images. Accuracy is measured on the
test images with a 95% bootstrap interval (``--bootstrap`` resamples of the test images); MACs
and parameters come from ``tp.utils.count_ops_and_params``. The cost of one G-NDI scoring pass
(every group) is timed against one forward+backward pass over the scoring images and against a
Taylor step (forward+backward, then Torch-Pruning's Taylor importance of every group).

Usage (ResNet-56, about 5 CPU minutes on one thread)::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/pruning_tp.py \\
        --weights ../shared/data/cifar_resnets/resnet56-4bfd9763.th \\
        --out benchmarks/results/pruning_tp_resnet56.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_gndi.pruning import PRUNABLE_TYPES, GNDIImportance, find_prunable
from captum_gndi.zoo import get_model, load_cifar10, shared_data_dir

METHODS = ("gndi", "gndi-iter5", "tp-taylor", "tp-magnitude")


def _predictions(model: nn.Module, loader: DataLoader) -> np.ndarray:
    correct = []
    with torch.no_grad():
        for x, y in loader:
            correct.append((model(x).argmax(1) == y).numpy())
    return np.concatenate(correct)


def _bootstrap(correct: np.ndarray, n: int, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, len(correct), (n, len(correct)))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def _taylor_gradients(model: nn.Module, loader: DataLoader) -> None:
    model.zero_grad(set_to_none=True)
    for x, y in loader:
        F.cross_entropy(model(x), y).backward()


def _prune(
    model: nn.Module, method: str, sparsity: float, loader: DataLoader, example: torch.Tensor
) -> tuple[nn.Module, float]:
    """A pruned copy of ``model`` and the seconds the pruning took."""
    pruned = copy.deepcopy(model).eval()
    names = {la.name for la in find_prunable(pruned, example)}
    ignored = [
        m for n, m in pruned.named_modules() if isinstance(m, PRUNABLE_TYPES) and n not in names
    ]
    steps = 5 if method == "gndi-iter5" else 1
    if method.startswith("gndi"):
        importance: Any = GNDIImportance(loader, target="label")
    elif method == "tp-taylor":
        importance = tp.importance.GroupTaylorImportance()
    else:
        importance = tp.importance.GroupMagnitudeImportance(p=2)
    pruner = tp.pruner.MetaPruner(
        pruned,
        example,
        importance=importance,
        iterative_steps=steps,
        pruning_ratio=sparsity,
        global_pruning=True,
        ignored_layers=ignored,
    )
    start = time.perf_counter()
    for _ in range(steps):
        if method == "tp-taylor":
            _taylor_gradients(pruned, loader)
        pruner.step()
    seconds = time.perf_counter() - start
    pruned.zero_grad(set_to_none=True)
    return pruned.eval(), seconds


def _costs(model: nn.Module, loader: DataLoader, example: torch.Tensor, repeats: int) -> dict:
    """Seconds of one forward+backward pass, a Taylor step and a G-NDI scoring pass (median)."""
    model = copy.deepcopy(model).eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    groups = list(graph.get_all_groups())
    times: dict[str, list[float]] = {"forward_backward": [], "taylor": [], "gndi": []}
    taylor = tp.importance.GroupTaylorImportance()
    for _ in range(repeats):
        start = time.perf_counter()
        _taylor_gradients(model, loader)
        times["forward_backward"].append(time.perf_counter() - start)
        start = time.perf_counter()
        _taylor_gradients(model, loader)
        for group in groups:
            taylor(group)
        times["taylor"].append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
        importance = GNDIImportance(loader, target="label")
        start = time.perf_counter()
        importance(groups[0])  # scores every group of the model in one pass over the data
        times["gndi"].append(time.perf_counter() - start)
    medians = {k: float(np.median(v)) for k, v in times.items()}
    return {
        "seconds": medians,
        "gndi_over_forward_backward": medians["gndi"] / medians["forward_backward"],
        "gndi_over_taylor": medians["gndi"] / medians["taylor"],
        "groups": len(groups),
        "repeats": repeats,
    }


def main() -> None:
    shared = shared_data_dir()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cifar-resnet56")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--data-dir", default=str(shared / "cifar10") if shared else None)
    parser.add_argument("--score-images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--test-set",
        choices=("exact", "jpeg"),
        default="exact",
        help="exact: the 1,017 test images with original pixels; jpeg: the JPEG-derived batch",
    )
    parser.add_argument("--test-images", type=int, default=10000)
    parser.add_argument("--sparsities", default="0.3,0.5,0.7")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--cost-repeats", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = get_model(args.model, args.weights).eval()
    train = load_cifar10(args.data_dir, "train")
    score = TensorDataset(*(t[: args.score_images] for t in train.tensors))
    loader = DataLoader(score, batch_size=args.batch_size)
    test = load_cifar10(args.data_dir, "test", exact=args.test_set == "exact")
    test_loader = DataLoader(TensorDataset(*(t[: args.test_images] for t in test.tensors)), 500)
    example = score.tensors[0][:2]
    macs, params = tp.utils.count_ops_and_params(model, example[:1])
    dense = _predictions(model, test_loader)
    result: dict[str, Any] = {
        "command": "OMP_NUM_THREADS=1 python experiments/pruning_tp.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "model": args.model,
        "torch_pruning": tp.__version__,
        "score_images": len(score),
        "test_images": len(dense),
        "test_set": args.test_set,
        "dense": {
            "accuracy": float(dense.mean()),
            "interval": _bootstrap(dense, args.bootstrap),
            "macs": int(macs),
            "params": int(params),
        },
        "runs": [],
    }
    print(
        f"dense: {dense.mean():.2%} on {len(dense)} {args.test_set} test images, {macs:,.0f} MACs"
    )
    for sparsity in [float(s) for s in args.sparsities.split(",")]:
        for method in args.methods.split(","):
            pruned, seconds = _prune(model, method, sparsity, loader, example)
            correct = _predictions(pruned, test_loader)
            macs, params = tp.utils.count_ops_and_params(pruned, example[:1])
            run = {
                "method": method,
                "sparsity": sparsity,
                "accuracy": float(correct.mean()),
                "interval": _bootstrap(correct, args.bootstrap),
                "macs": int(macs),
                "params": int(params),
                "seconds": seconds,
            }
            result["runs"].append(run)
            print(json.dumps(run))
    result["cost"] = _costs(model, loader, example, args.cost_repeats)
    print(json.dumps(result["cost"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
