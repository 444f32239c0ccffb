"""Why iterative G-NDI pruning is below one-shot on ResNet-56 without fine-tuning (issue #25).

Prunes the 27 block-internal convolutions of the trained CIFAR ResNet-56 with Torch-Pruning's
``MetaPruner`` (global ranking, no fine-tuning, the set-up of ``experiments/pruning_tp.py``) to
``--sparsity`` in ``--steps`` steps, and measures the accuracy after every step of:

- ``oneshot``: one-shot pruning to that step's sparsity with G-NDI of the dense model;
- ``frozen``: the iterative pruner fed the dense model's G-NDI, carried to the surviving
  channels by their original index (control for Torch-Pruning's iterative schedule: it must
  match ``oneshot``);
- ``rescored``: the iterative pruner with :class:`captum_gndi.pruning.GNDIImportance`, G-NDI
  recomputed on the pruned model at every step (what ``pruning_tp.py`` calls ``gndi-iter5``);
- ``taylor-oneshot`` / ``taylor-iter``: Torch-Pruning's ``GroupTaylorImportance``, one-shot and
  re-scored at every step (does Torch-Pruning's own data-driven criterion lose the same way?).

Usage (about 10 CPU minutes on one busy thread)::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/pruning_tp_iterative.py \\
        --weights ../shared/data/cifar_resnets/resnet56-4bfd9763.th \\
        --out benchmarks/results/pruning_tp_iterative_resnet56.json
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from captum_gndi.pruning import PRUNABLE_TYPES, GNDIImportance, find_prunable
from captum_gndi.zoo import get_model, load_cifar10, shared_data_dir


class FrozenImportance(tp.importance.Importance):
    """Scores of the dense model, looked up by each group's root module name and the
    original indices of its surviving channels."""

    def __init__(self, dense: dict[str, Tensor]) -> None:
        self.dense = dense
        self.ids: dict[str, Tensor] = {}

    def __call__(self, group: Any) -> Tensor | None:
        name = group._DG._module2name[group[0].dep.target.module]
        if name not in self.dense:
            return None
        ids = self.ids.setdefault(name, torch.arange(len(self.dense[name])))
        return self.dense[name][ids].clone()

    def pruned(self, group: Any) -> None:
        """Drop the channels ``group`` removes from the surviving original indices."""
        name = group._DG._module2name[group[0].dep.target.module]
        if name in self.ids:
            keep = torch.ones(len(self.ids[name]), dtype=torch.bool)
            keep[torch.tensor([int(i) for i in group[0].idxs], dtype=torch.long)] = False
            self.ids[name] = self.ids[name][keep]


def _accuracy(model: nn.Module, loader: DataLoader) -> float:
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def _pruner(model: nn.Module, example: Tensor, importance: Any, steps: int, ratio: float) -> Any:
    names = {la.name for la in find_prunable(model, example)}
    ignored = [
        m for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES) and n not in names
    ]
    return tp.pruner.MetaPruner(
        model,
        example,
        importance=importance,
        iterative_steps=steps,
        pruning_ratio=ratio,
        global_pruning=True,
        ignored_layers=ignored,
    )


def _taylor_gradients(model: nn.Module, loader: DataLoader) -> None:
    model.zero_grad(set_to_none=True)
    for x, y in loader:
        F.cross_entropy(model(x), y).backward()


def main() -> None:
    shared = shared_data_dir()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--data-dir", default=str(shared / "cifar10") if shared else None)
    parser.add_argument("--score-images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = get_model("cifar-resnet56", args.weights).eval()
    train = load_cifar10(args.data_dir, "train")
    score = TensorDataset(*(t[: args.score_images] for t in train.tensors))
    loader = DataLoader(score, batch_size=args.batch_size)
    test = load_cifar10(args.data_dir, "test", exact=True)
    test_loader = DataLoader(test, batch_size=500)
    example = score.tensors[0][:2]
    ratios = [args.sparsity * (k + 1) / args.steps for k in range(args.steps)]
    result: dict[str, Any] = {
        "command": "OMP_NUM_THREADS=1 python experiments/pruning_tp_iterative.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "score_images": len(score),
        "test_images": len(test),
        "ratios": ratios,
        "dense_accuracy": _accuracy(model, test_loader),
    }

    # Dense G-NDI of every group, by root module name (one scoring pass).
    dense_model = copy.deepcopy(model)
    gndi = GNDIImportance(loader, target="label")
    dense: dict[str, Tensor] = {}
    pruner = _pruner(dense_model, example, gndi, 1, args.sparsity)
    for group in pruner.DG.get_all_groups(
        ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
    ):
        scores = gndi(group)
        if scores is not None:
            dense[pruner.DG._module2name[group[0].dep.target.module]] = scores

    curves: dict[str, list[float]] = {}
    curves["oneshot"] = []
    curves["taylor-oneshot"] = []
    for ratio in ratios:
        pruned = copy.deepcopy(model)
        frozen = FrozenImportance(dense)
        _pruner(pruned, example, frozen, 1, ratio).step()
        curves["oneshot"].append(_accuracy(pruned, test_loader))
        pruned = copy.deepcopy(model)
        pruner = _pruner(pruned, example, tp.importance.GroupTaylorImportance(), 1, ratio)
        _taylor_gradients(pruned, loader)
        pruner.step()
        curves["taylor-oneshot"].append(_accuracy(pruned, test_loader))
        print(ratio, curves["oneshot"][-1], curves["taylor-oneshot"][-1], flush=True)

    pruned = copy.deepcopy(model)
    frozen = FrozenImportance(dense)
    pruner = _pruner(pruned, example, frozen, args.steps, args.sparsity)
    curves["frozen"] = []
    for _ in range(args.steps):
        for group in pruner.step(interactive=True):
            frozen.pruned(group)
            group.prune()
        curves["frozen"].append(_accuracy(pruned, test_loader))
    print("frozen", curves["frozen"], flush=True)

    pruned = copy.deepcopy(model)
    pruner = _pruner(
        pruned, example, tp.importance.GroupTaylorImportance(), args.steps, args.sparsity
    )
    curves["taylor-iter"] = []
    for _ in range(args.steps):
        _taylor_gradients(pruned, loader)
        pruner.step()
        pruned.zero_grad(set_to_none=True)
        curves["taylor-iter"].append(_accuracy(pruned, test_loader))
    print("taylor-iter", curves["taylor-iter"], flush=True)

    pruned = copy.deepcopy(model)
    gndi = GNDIImportance(loader, target="label")
    pruner = _pruner(pruned, example, gndi, args.steps, args.sparsity)
    curves["rescored"] = []
    for _ in range(args.steps):
        pruner.step()
        curves["rescored"].append(_accuracy(pruned, test_loader))
        print("rescored", curves["rescored"][-1], flush=True)
    result["curves"] = curves
    result["passes"] = gndi.passes
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
