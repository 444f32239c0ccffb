"""The ``captum-gndi prune`` subcommand: prune a zoo model's channels and measure accuracy.

``captum_gndi.cli`` imports :func:`add_prune_parser` lazily; the handler raises the library's
``ValueError`` / ``FileNotFoundError`` for bad input, which the CLI turns into one line on stderr.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["add_prune_parser", "run_prune"]

_EPILOG = """examples:
  captum-gndi prune --model cifar-resnet56 \\
      --weights ../shared/data/cifar_resnets/resnet56-4bfd9763.th \\
      --data-dir ../shared/data/cifar10 --criterion gndi --sparsity 0.5 --out prune-out/
  captum-gndi prune --model cifar-resnet20 --weights resnet20.th \\
      --criterion gndi,magnitude,taylor --curve 0.3,0.5,0.7 --scope layer --limit 2000 \\
      --out prune-out/

Channels are scored on training images (--score-limit of them) and accuracy is measured on test
images (--limit of them), so the two never overlap. By default the block-internal convolutions
(conv1 of each residual block) are pruned; the stem, the classifier and the convolutions whose
output is added to a residual shortcut are kept (--prune-block-outputs prunes those too).
"""


def _fractions(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated fractions like 0.3,0.5,0.7, got {text!r}"
        ) from error


def add_prune_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``prune`` subcommand on an ``argparse`` subparsers object.

    Args:
        subparsers: The object returned by ``parser.add_subparsers()``.

    Returns:
        The ``prune`` parser (its handler is stored as ``func``).

    Examples:
        >>> parser = argparse.ArgumentParser()
        >>> add_prune_parser(parser.add_subparsers(dest="command"))
        >>> args = parser.parse_args(["prune", "--model", "cifar-resnet20", "--weights", "r20.th"])
        >>> args.func(args)
    """
    from .pruning import CRITERIA, DEFAULT_SPARSITIES, NORMALIZATIONS, SCOPES

    parser = subparsers.add_parser(
        "prune",
        help="prune channels by G-NDI (or another criterion) and report accuracy vs sparsity",
        description=(
            "Score every prunable output channel of a zoo model on training images, zero the "
            "least important ones with torch.nn.utils.prune masks at the target sparsity, and "
            "print the test accuracy before and after; also measures the accuracy-vs-sparsity "
            "curve and writes it (CSV, JSON, markdown table, PNG plot) to --out."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="zoo model, e.g. cifar-resnet56")
    parser.add_argument("--weights", help="checkpoint of the model (path or state dict file)")
    parser.add_argument(
        "--data",
        choices=("cifar10", "digits"),
        help="data set (default: digits for digits-resnet, cifar10 otherwise)",
    )
    parser.add_argument(
        "--data-dir", help="CIFAR-10 folder (python layout); default: the shared data folder"
    )
    parser.add_argument(
        "--criterion",
        default="gndi",
        help=f"criterion or comma-separated criteria ({', '.join(CRITERIA)}; default gndi)",
    )
    parser.add_argument(
        "--sparsity", type=float, default=0.5, help="channel sparsity to report (default 0.5)"
    )
    parser.add_argument(
        "--curve",
        type=_fractions,
        default=list(DEFAULT_SPARSITIES),
        help="sparsities of the curve (default 0.1,...,0.9)",
    )
    parser.add_argument(
        "--scope", choices=SCOPES, default="global", help="rank channels globally or per layer"
    )
    parser.add_argument(
        "--normalize",
        choices=NORMALIZATIONS,
        default="none",
        help="per-layer score normalisation before global ranking (default none)",
    )
    parser.add_argument(
        "--baseline", choices=("zero", "mean"), default="zero", help="G-NDI layer baseline"
    )
    parser.add_argument(
        "--n-steps", type=int, default=8, help="integration points of gndi_path (default 8)"
    )
    parser.add_argument(
        "--prune-block-outputs",
        action="store_true",
        help="also prune convolutions whose output is added to a residual shortcut",
    )
    parser.add_argument("--limit", type=int, help="test images for accuracy (default: all)")
    parser.add_argument(
        "--exact-test",
        action="store_true",
        help="CIFAR-10: measure accuracy on the 1,017 exact-pixel test images of the shared "
        "folder (cifar10_exact_raw_prefixes.npz) instead of the test batch",
    )
    parser.add_argument(
        "--score-limit", type=int, default=1000, help="training images to score on (default 1000)"
    )
    parser.add_argument(
        "--finetune-epochs", type=int, default=0, help="epochs of SGD fine-tuning after pruning"
    )
    parser.add_argument(
        "--finetune-limit", type=int, help="training images for fine-tuning (default: all)"
    )
    parser.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of 'random' and fine-tuning")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--out", help="folder for curve.csv/.json/.md/.png and summary.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_prune)
    return parser


def _datasets(args: argparse.Namespace) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """(scoring, fine-tuning, test) data sets."""
    from .zoo import load_cifar10, load_digits_dataset, shared_data_dir

    data = args.data or ("digits" if args.model.startswith("digits") else "cifar10")
    if data == "digits":
        train, test = load_digits_dataset("train", seed=args.seed), load_digits_dataset("test")
    else:
        root = args.data_dir
        if root is None:
            shared = shared_data_dir()
            if shared is None:
                raise FileNotFoundError(
                    "no CIFAR-10 folder: pass --data-dir (the folder holding cifar-10-batches-py)"
                )
            root = shared / "cifar10"
        normalize = "captum" if args.model == "captum-cifar-cnn" else "resnet"
        train = load_cifar10(root, "train", normalize=normalize)
        test = load_cifar10(root, "test", exact=args.exact_test, normalize=normalize)
    score = TensorDataset(*(t[: args.score_limit] for t in train.tensors))
    tune = TensorDataset(*(t[: args.finetune_limit] for t in train.tensors))
    return score, tune, TensorDataset(*(t[: args.limit] for t in test.tensors))


def _check(args: argparse.Namespace, criteria: list[str]) -> None:
    from .pruning.ranking import check_sparsity
    from .validation.criteria import available_methods

    unknown = [c for c in criteria if c not in available_methods()]
    if unknown or not criteria:
        raise ValueError(
            f"unknown criterion {unknown or args.criterion!r}; choose from "
            f"{', '.join(available_methods())}"
        )
    for s in [args.sparsity, *args.curve]:
        check_sparsity(s)
    for name in ("limit", "score_limit", "finetune_limit", "batch_size", "n_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.finetune_epochs < 0:
        raise ValueError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")


def run_prune(args: argparse.Namespace) -> int:
    """Handle ``captum-gndi prune``: score, prune, print accuracies, write the curve.

    Args:
        args: Parsed arguments of the ``prune`` parser.

    Returns:
        The exit status (0).
    """
    from .pruning import (
        channel_importance,
        find_prunable,
        pruning_report,
        select_channels,
        sparsity_curve,
    )
    from .zoo import get_model

    criteria = [c.strip() for c in args.criterion.split(",") if c.strip()]
    _check(args, criteria)
    torch.manual_seed(args.seed)
    model = get_model(args.model, args.weights).to(args.device).eval()
    score_data, tune_data, test_data = _datasets(args)
    loader = DataLoader(score_data, batch_size=args.batch_size)
    test_loader = DataLoader(test_data, batch_size=args.batch_size)
    example = score_data.tensors[0][:16].to(args.device)
    layers = find_prunable(model, example, prune_block_outputs=args.prune_block_outputs)
    n_channels = sum(layer.n_channels for layer in layers)
    print(
        f"{args.model}: {n_channels} prunable channels in {len(layers)} layers; scoring on "
        f"{len(score_data)} training images, accuracy on {len(test_data)} test images"
    )
    scores = {
        criterion: channel_importance(
            model,
            loader,
            layers,
            criterion,
            baseline=args.baseline,
            n_steps=args.n_steps,
            seed=args.seed,
            progress=not args.quiet,
        )
        for criterion in criteria
    }
    sparsities = sorted({*args.curve, args.sparsity})
    curve = sparsity_curve(
        model,
        layers,
        scores,
        test_loader,
        sparsities,
        example_inputs=example,
        scope=args.scope,
        normalize=args.normalize,
        finetune_data=DataLoader(tune_data, batch_size=128, shuffle=True),
        finetune_epochs=args.finetune_epochs,
        lr=args.lr,
        progress=not args.quiet,
    )
    print(f"accuracy before pruning: {curve.dense_accuracy:.2%}")
    summary: dict[str, Any] = {"dense_accuracy": curve.dense_accuracy, "criteria": {}}
    for criterion in criteria:
        point = curve.point(criterion, args.sparsity)
        keep = select_channels(scores[criterion], args.sparsity, args.scope, args.normalize)
        report = pruning_report(model, layers, keep, example)
        tuned = (
            ""
            if point.finetuned_accuracy is None
            else f", {point.finetuned_accuracy:.2%} after {args.finetune_epochs} epoch(s) fine-tune"
        )
        print(
            f"{criterion} at {args.sparsity:.0%} sparsity: accuracy after pruning "
            f"{point.accuracy:.2%} ({(point.accuracy - curve.dense_accuracy) * 100:+.2f} points)"
            f"{tuned}\n  {report}"
        )
        summary["criteria"][criterion] = {"point": vars(point), "report": report.to_dict()}
    print()
    print(curve.to_markdown())
    if args.out:
        paths = curve.save(args.out)
        summary_path = Path(args.out) / "summary.json"
        summary["settings"] = {k: v for k, v in vars(args).items() if k != "func"}
        summary_path.write_text(json.dumps(summary, indent=2, default=str))
        print(f"\ncurve written to {', '.join(str(p) for p in [*paths.values(), summary_path])}")
    return 0
