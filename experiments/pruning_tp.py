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

With ``--equal-macs 0.7,0.5,0.3`` each importance is instead pruned to those fractions of the
dense MACs (within 1% where one channel allows): Torch-Pruning's ``pruning_ratio`` is found by
bisection, below the ratios at which a group would lose every channel (``MetaPruner`` then
prunes none of that group's channels, so the MACs stop falling with the ratio); ``gndi-iter5``
rescores the model at each of 5 steps and bisects each step to a MACs target that falls
linearly to the final one.

Every importance sees the same ``--score-images`` training images. Accuracy is measured on the
test images with a 95% bootstrap interval (``--bootstrap`` resamples of the test images); MACs
and parameters come from ``tp.utils.count_ops_and_params``. The cost of one G-NDI scoring pass
(every group) is timed against one forward+backward pass over the scoring images and against a
Taylor step (forward+backward, then Torch-Pruning's Taylor importance of every group);
``--cost-probes 8`` also times ``GNDIImportance(n_probes=8)`` and ``--resnet50-cost 2x4`` repeats
the timings in the same run on a random-weight torchvision ResNet-50 (2 batches of 4 random
224x224 images, every group of the model scored).

Usage (ResNet-56, about 5 CPU minutes on one thread)::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/pruning_tp.py \\
        --weights ../shared/data/cifar_resnets/resnet56-4bfd9763.th \\
        --out benchmarks/results/pruning_tp_resnet56.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_gndi.pruning import PRUNABLE_TYPES, GNDIImportance, ScoreImportance, find_prunable
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


def _ignored(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """Every conv/linear but the block-internal ones ``find_prunable`` returns (the names are
    found once per model architecture)."""
    key = type(model).__name__
    if key not in _PRUNABLE:
        _PRUNABLE[key] = {la.name for la in find_prunable(model, example)}
    names = _PRUNABLE[key]
    return [m for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES) and n not in names]


_PRUNABLE: dict[str, set[str]] = {}
_DENSE_SCORES: dict[tuple[int, str], dict[str, torch.Tensor]] = {}


def _prune(
    model: nn.Module, method: str, sparsity: float, loader: DataLoader, example: torch.Tensor
) -> tuple[nn.Module, float]:
    """A pruned copy of ``model`` and the seconds the pruning took."""
    pruned = copy.deepcopy(model).eval()
    ignored = _ignored(pruned, example)
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


def _group_scores(
    model: nn.Module, method: str, loader: DataLoader, example: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Root module name -> the importance of every prunable group of ``model`` as it is now."""
    if method.startswith("gndi"):
        importance: Any = GNDIImportance(loader, target="label")
    elif method == "tp-taylor":
        importance = tp.importance.GroupTaylorImportance()
        _taylor_gradients(model, loader)
    else:
        importance = tp.importance.GroupMagnitudeImportance(p=2)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    names = {id(m): n for n, m in model.named_modules()}
    scores = {}
    for group in graph.get_all_groups(ignored_layers=_ignored(model, example)):
        scores[names[id(group[0].dep.target.module)]] = importance(group).detach().cpu()
    model.zero_grad(set_to_none=True)
    return scores


def _empties_a_group(scores: dict[str, torch.Tensor], ratio: float) -> bool:
    """Whether MetaPruner's global threshold at ``ratio`` falls above every score of a group:
    Torch-Pruning then refuses to empty it and prunes none of its channels, so the MACs stop
    falling with the ratio."""
    ranked = [s for s in scores.values() if len(s) > 1]  # one-channel groups are not ranked
    concat = torch.cat(ranked)
    n_pruned = len(concat) - int(len(concat) * (1 - ratio))
    if n_pruned <= 0:
        return False
    threshold = torch.topk(concat, n_pruned, largest=False).values[-1]
    return any(bool((s <= threshold).all()) for s in ranked)


def _prune_to_macs(
    model: nn.Module, scores: dict[str, torch.Tensor], macs: float, example: torch.Tensor
) -> tuple[nn.Module, float]:
    """The global one-shot pruning of ``model`` by ``scores`` whose MACs are nearest ``macs``,
    and its Torch-Pruning ``pruning_ratio``: bisection on the ratio below the ratios at which
    a group would be emptied (stops within 1%)."""
    low, high = 0.0, 0.95
    best: tuple[float, nn.Module, float] | None = None
    ratio = 1 - macs / float(tp.utils.count_ops_and_params(model, example[:1])[0])
    for _ in range(16):
        if _empties_a_group(scores, ratio):
            high = ratio
            ratio = (low + high) / 2
            continue
        pruned = copy.deepcopy(model).eval()
        importance = ScoreImportance({pruned.get_submodule(n): s for n, s in scores.items()})
        tp.pruner.MetaPruner(
            pruned,
            example,
            importance=importance,
            pruning_ratio=ratio,
            global_pruning=True,
            ignored_layers=_ignored(pruned, example),
        ).step()
        got = float(tp.utils.count_ops_and_params(pruned, example[:1])[0])
        if best is None or abs(got - macs) < best[0]:
            best = (abs(got - macs), pruned, ratio)
        if abs(got / macs - 1) <= 0.01:
            break
        low, high = (ratio, high) if got > macs else (low, ratio)
        ratio = (low + high) / 2
    assert best is not None
    return best[1], best[2]


def _equal_macs(
    model: nn.Module,
    method: str,
    fraction: float,
    loader: DataLoader,
    example: torch.Tensor,
    steps: int,
) -> tuple[nn.Module, list[float], float]:
    """``model`` pruned to ``fraction`` of its MACs in ``steps`` steps (the MACs target falls
    linearly; each step rescores the model as it is, then bisects its ratio), the ratio of each
    step and the seconds it took."""
    dense = tp.utils.count_ops_and_params(model, example[:1])[0]
    pruned, ratios = copy.deepcopy(model).eval(), []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        if step == 1:  # the dense model's scores are the same for every target
            key = (id(model), "gndi" if method.startswith("gndi") else method)
            if key not in _DENSE_SCORES:
                _DENSE_SCORES[key] = _group_scores(copy.deepcopy(model), method, loader, example)
            scores = _DENSE_SCORES[key]
        else:
            scores = _group_scores(pruned, method, loader, example)
        target = dense * (1 - (1 - fraction) * step / steps)
        pruned, ratio = _prune_to_macs(pruned, scores, target, example)
        ratios.append(ratio)
    return pruned, ratios, time.perf_counter() - start


def _costs(
    model: nn.Module,
    loader: DataLoader,
    example: torch.Tensor,
    repeats: int,
    probes: tuple[int, ...] = (),
) -> dict:
    """Seconds of one forward+backward pass, a Taylor step and a G-NDI scoring pass with
    ``target="label"`` (and with each number of ``probes``), medians of ``repeats``."""
    model = copy.deepcopy(model).eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    groups = list(graph.get_all_groups())
    gndi = {"gndi": {"target": "label"}}
    gndi.update({f"gndi_probes{k}": {"n_probes": k} for k in probes})
    times: dict[str, list[float]] = {"forward_backward": [], "taylor": []}
    times.update({name: [] for name in gndi})
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
        for name, options in gndi.items():
            importance = GNDIImportance(loader, **options)
            start = time.perf_counter()
            importance(groups[0])  # scores every group of the model in one pass over the data
            times[name].append(time.perf_counter() - start)
    medians = {k: float(np.median(v)) for k, v in times.items()}
    result: dict[str, Any] = {"seconds": medians}
    for name in gndi:
        result[f"{name}_over_forward_backward"] = medians[name] / medians["forward_backward"]
        result[f"{name}_over_taylor"] = medians[name] / medians["taylor"]
    result.update(groups=len(groups), repeats=repeats)
    return result


def _resnet50_cost(batches: int, batch_size: int, repeats: int, probes: tuple[int, ...]) -> dict:
    """:func:`_costs` on a random-weight torchvision ResNet-50 with random 224x224 images."""
    import torchvision

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batches * batch_size, 3, 224, 224, generator=generator)
    labels = torch.randint(0, 1000, (len(images),), generator=generator)
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size)
    model = torchvision.models.resnet50(weights=None).eval()
    result = _costs(model, loader, images[:1], repeats, probes)
    result.update(model="torchvision resnet50, random weights", images=len(images))
    result["batch_size"] = batch_size
    return result


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
    parser.add_argument("--cost-repeats", type=int, default=3, help="0: no cost measurement")
    parser.add_argument(
        "--equal-macs",
        default="",
        help="fractions of the dense MACs to prune each importance to (e.g. 0.7,0.5,0.3)",
    )
    parser.add_argument(
        "--cost-probes", default="", help="also time GNDIImportance(n_probes=k) for each k"
    )
    parser.add_argument(
        "--resnet50-cost",
        default="",
        help="BATCHESxSIZE: also time the costs on a random ResNet-50 (224x224), e.g. 2x8",
    )
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
    for sparsity in [float(s) for s in args.sparsities.split(",") if s]:
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
    for fraction in [float(f) for f in args.equal_macs.split(",") if f]:
        for method in args.methods.split(","):
            steps = 5 if method == "gndi-iter5" else 1
            pruned, ratios, seconds = _equal_macs(model, method, fraction, loader, example, steps)
            correct = _predictions(pruned, test_loader)
            macs, params = tp.utils.count_ops_and_params(pruned, example[:1])
            run = {
                "method": method,
                "macs_target": fraction,
                "macs_fraction": macs / result["dense"]["macs"],
                "pruning_ratios": ratios,
                "accuracy": float(correct.mean()),
                "interval": _bootstrap(correct, args.bootstrap),
                "macs": int(macs),
                "params": int(params),
                "seconds": seconds,
            }
            result.setdefault("equal_macs", []).append(run)
            print(json.dumps(run), flush=True)
    probes = tuple(int(k) for k in args.cost_probes.split(",") if k)
    if args.cost_repeats:
        result["cost"] = _costs(model, loader, example, args.cost_repeats, probes)
        print(json.dumps(result["cost"]), flush=True)
    if args.resnet50_cost and args.cost_repeats:
        batches, size = (int(v) for v in args.resnet50_cost.split("x"))
        result["cost_resnet50"] = _resnet50_cost(batches, size, args.cost_repeats, probes)
        print(json.dumps(result["cost_resnet50"]), flush=True)
    result["load_average"] = list(os.getloadavg())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
