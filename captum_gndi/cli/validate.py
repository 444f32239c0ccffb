"""``captum-gndi validate``: ablate every unit and test how well each criterion predicts it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .loaders import prepare_scoring, split_names
from .options import (
    add_model_options,
    add_scoring_options,
    criterion_targets,
    known_criteria,
    unit_granularity,
)

__all__ = ["add_parser", "load_layer_mask", "run"]

_EPILOG = """examples:
  # every residual branch of the trained ResNet-56, all criteria, zero baseline
  captum-gndi validate --model cifar-resnet56 \\
      --weights ../shared/data/cifar_resnets/resnet56-4bfd9763.th \\
      --data cifar10 --data-dir ../shared/data/cifar10 --out report/
  # 300 random convolution channels with the data-set-mean baseline
  captum-gndi validate --model cifar-resnet20 --weights resnet20.th --kind conv \\
      --n-channels 300 --baseline mean --out report-channels/
  # a sentence encoder: attention and MLP sublayers, damage = change of the embedding
  captum-gndi validate --model minilm --kind attention,mlp --out report-minilm/
  # groups as units: a layer_mask saved with torch.save (one tensor for every layer, or a
  # dict layer name -> tensor; Captum's LayerFeatureAblation semantics)
  captum-gndi validate --model cifar-resnet20 --weights resnet20.th --kind conv \
      --layer-mask quarters.pt --out report-groups/

The report folder holds report.md (the summary with verdicts), report.json, CSV tables and
figures. Criteria: {criteria}.
"""


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``validate`` on the subparsers object of the main parser.

    Args:
        commands: The object ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The ``validate`` parser (its handler is stored as ``func``).
    """
    parser = commands.add_parser(
        "validate",
        help="ablate every layer/channel and test how well each criterion predicts the damage",
        description="Measure the true damage of setting each unit to its baseline, score the "
        "same units with every criterion, and write a report of correlations, confidence "
        "intervals, comparisons with trivial controls and per-example agreement.",
        epilog=_EPILOG.format(criteria=", ".join(known_criteria())),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(parser)
    add_scoring_options(parser, None)
    parser.add_argument(
        "--damage",
        help="comma-separated damage metrics: accuracy_drop, loss_increase, output_delta, kl, "
        "embedding_cosine (default: the first four; the last two for text models)",
    )
    parser.add_argument(
        "--layer-mask",
        metavar="FILE",
        help="groups as units: a file written by torch.save holding one integer mask for every "
        "layer or a dict layer name -> mask (group ids 0..G-1, Captum's LayerFeatureAblation "
        "semantics; batch dimension 1 or one row per example)",
    )
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--out", default="report", help="report folder (default report/)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run :func:`captum_gndi.validation.validate`, print the report, write it to ``--out``.

    Args:
        args: Parsed arguments of the ``validate`` parser.

    Returns:
        The exit status (0).
    """
    from ..validation import validate

    granularity = unit_granularity(args)
    layer_mask = load_layer_mask(args.layer_mask)
    if layer_mask is not None and args.granularity == "layer":
        granularity = "layer"  # the mask's groups are the units; --n-channels samples them
    loaded, loader, layers = prepare_scoring(args)
    report = validate(
        loaded.model,
        loader,
        layers,
        split_names(args.criteria),  # the criteria, by position (renamed from methods=)
        damage=split_names(args.damage),
        baseline=args.baseline,
        granularity=granularity,
        n_channels=args.n_channels,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
        out_dir=args.out,
        n_steps=args.n_steps,
        channel_dim=loaded.channel_dim,
        n_boot=args.n_boot,
        metadata={"model": args.model, "data": args.data or loaded.data},
        layer_mask=layer_mask,
        **criterion_targets(args, text_model=loaded.tokenizer is not None),
    )
    print(report.to_markdown())
    print(f"\nreport written to {Path(args.out).resolve()}")
    return 0


def load_layer_mask(path: str | None) -> Any:
    """The ``--layer-mask`` file: a tensor or a dict layer name -> tensor (``None``: no file).

    Args:
        path: The file written by ``torch.save``, or ``None``.

    Returns:
        The mask(s), or ``None``.

    Raises:
        ValueError: For a file that holds neither a tensor nor a dict of tensors.
    """
    if path is None:
        return None
    import torch

    mask = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(mask, torch.Tensor):
        return mask
    if isinstance(mask, dict) and all(isinstance(v, torch.Tensor) for v in mask.values()):
        return {str(k): v for k, v in mask.items()}
    raise ValueError(
        f"--layer-mask {path} holds a {type(mask).__name__}; save one integer tensor "
        "(torch.save(mask, path)) or a dict layer name -> tensor."
    )
