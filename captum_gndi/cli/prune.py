"""``captum-gndi prune``: prune a model's channels and measure accuracy against sparsity.

The model is a zoo name or ``torchvision:NAME`` with ``--weights`` a local checkpoint (nothing is
downloaded).

Channels are scored on training images and accuracy is measured on test images; the handler
raises the library's ``ValueError`` / ``FileNotFoundError`` for bad input, which the parser turns
into one line on stderr.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from .loaders import LoadedModel, check_counts, cifar_root, load_model, split_names
from .options import add_baseline_option, add_criteria_option, add_output_options, known_criteria

__all__ = ["add_parser", "run"]

_EPILOG = """examples:
  captum-gndi prune --model cifar-resnet56 \\
      --weights ../shared/data/cifar_resnets/resnet56-4bfd9763.th \\
      --data-dir ../shared/data/cifar10 --criteria gndi --sparsity 0.5 --out prune-out/
  captum-gndi prune --model cifar-resnet20 --weights resnet20.th \\
      --criteria gndi,magnitude,taylor --curve 0.3,0.5,0.7 --scope layer --limit 2000 \\
      --out prune-out/
  captum-gndi prune --model torchvision:resnet50 --weights resnet50_cifar10.pt \\
      --criteria gndi --sparsity 0.3 --out prune-out/

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


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``prune`` on the subparsers object of the main parser.

    Args:
        commands: The object ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The ``prune`` parser (its handler is stored as ``func``).

    Examples:
        >>> parser = argparse.ArgumentParser()
        >>> add_parser(parser.add_subparsers(dest="command"))
        >>> args = parser.parse_args(["prune", "--model", "cifar-resnet20", "--weights", "r20.th"])
        >>> args.func(args)
    """
    from ..pruning import CRITERIA, DEFAULT_SPARSITIES, NORMALIZATIONS, SCOPES

    parser = commands.add_parser(
        "prune",
        help="prune channels by G-NDI (or another criterion) and report accuracy vs sparsity",
        description=(
            "Score every prunable output channel of a model (zoo, or torchvision:NAME with a "
            "local --weights checkpoint) on training images, zero the "
            "least important ones with torch.nn.utils.prune masks at the target sparsity, and "
            "print the test accuracy before and after; also measures the accuracy-vs-sparsity "
            "curve and writes it (CSV, JSON, markdown table, PNG plot) to --out."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        required=True,
        help="zoo model (e.g. cifar-resnet56) or torchvision:NAME (e.g. torchvision:resnet50)",
    )
    parser.add_argument("--weights", help="checkpoint of the model (path or state dict file)")
    parser.add_argument(
        "--data",
        choices=("cifar10", "digits"),
        help="data set (default: digits for digits-resnet, cifar10 otherwise)",
    )
    parser.add_argument(
        "--data-dir", help="CIFAR-10 folder (python layout); default: the shared data folder"
    )
    add_criteria_option(
        parser,
        "gndi",
        f"comma-separated importance criteria ({', '.join(CRITERIA)}; default gndi)",
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
    add_baseline_option(parser)
    add_output_options(parser)
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
    parser.set_defaults(func=run)
    return parser


def _datasets(
    args: argparse.Namespace, loaded: LoadedModel
) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """(scoring, fine-tuning, test) data sets."""
    from ..zoo import load_cifar10, load_digits_dataset

    data = args.data or loaded.data
    if data == "digits":
        train, test = load_digits_dataset("train", seed=args.seed), load_digits_dataset("test")
    else:
        root = cifar_root(args.data_dir)
        train = load_cifar10(root, "train", normalize=loaded.normalize)
        test = load_cifar10(root, "test", exact=args.exact_test, normalize=loaded.normalize)
    score = TensorDataset(*(t[: args.score_limit] for t in train.tensors))
    tune = TensorDataset(*(t[: args.finetune_limit] for t in train.tensors))
    return score, tune, TensorDataset(*(t[: args.limit] for t in test.tensors))


def _check(args: argparse.Namespace, criteria: list[str]) -> None:
    from ..pruning.ranking import check_sparsity

    known = known_criteria()
    unknown = [c for c in criteria if c not in known]
    if unknown or not criteria:
        raise ValueError(
            f"unknown criterion {unknown or args.criteria!r}; choose from {', '.join(known)}"
        )
    for s in [args.sparsity, *args.curve]:
        check_sparsity(s)
    check_counts(args, ("limit", "score_limit", "finetune_limit", "batch_size", "n_steps"))
    check_counts(args, ("finetune_epochs",), minimum=0)


def run(args: argparse.Namespace) -> int:
    """Score, prune, print accuracies, and write the curve to ``--out``.

    Args:
        args: Parsed arguments of the ``prune`` parser.

    Returns:
        The exit status (0).
    """
    from ..pruning import (
        channel_importance,
        find_prunable,
        pruning_report,
        select_channels,
        sparsity_curve,
    )
    from ..runs import resolve_device

    criteria = split_names(args.criteria) or []
    _check(args, criteria)
    torch.manual_seed(args.seed)
    torchvision = args.model.startswith("torchvision:")
    try:
        loaded = load_model(
            args.model, args.weights, args.seed, verbose=False, zoo_only=not torchvision
        )
    except ValueError as error:
        if torchvision or "unknown model" not in str(error):
            raise
        raise ValueError(f"{error}; or a torchvision model: --model torchvision:NAME") from None
    device = resolve_device(loaded.model, args.device)
    model = loaded.model.to(device).eval()
    score_data, tune_data, test_data = _datasets(args, loaded)
    loader = DataLoader(score_data, batch_size=args.batch_size)
    test_loader = DataLoader(test_data, batch_size=args.batch_size)
    example = score_data.tensors[0][:16].to(device)
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
            target=args.target,
            **(
                dict(norm=args.norm, n_probes=args.n_probes)
                if criterion in ("gndi", "gndi_path")
                else {}
            ),
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
