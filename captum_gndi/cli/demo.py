"""``captum-gndi demo``: validate a digits ResNet and MiniLM on bundled data, offline."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .loaders import MINILM, load_data, load_model

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``demo`` on the subparsers object of the main parser.

    Args:
        commands: The object ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The ``demo`` parser (its handler is stored as ``func``).
    """
    parser = commands.add_parser(
        "demo",
        help="validate a digits ResNet and MiniLM on bundled data (a few minutes, offline)",
        description="Train a small ResNet on scikit-learn's digits and validate its residual "
        "branches with every criterion; then validate the attention and MLP sublayers of the "
        "all-MiniLM-L6-v2 sentence encoder on built-in sentences (damage = change of the "
        "mean-pooled embedding).",
        epilog="example:\n  captum-gndi demo --out report/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="report", help="report folder (default report/)")
    parser.add_argument("--n-steps", type=int, default=4, help="integration points")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="seed of training and controls")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Write the digits-resnet and MiniLM reports under ``--out``.

    Args:
        args: Parsed arguments of the ``demo`` parser.

    Returns:
        The exit status (0).
    """
    from ..adapters import find_layers
    from ..validation import validate

    out = Path(args.out)
    progress = not args.quiet
    digits = load_model("digits-resnet", seed=args.seed, verbose=True)
    report = validate(
        digits.model,
        load_data(digits, "digits", batch_size=150, seed=args.seed),
        find_layers(digits.model, "branch"),
        seed=args.seed,
        progress=progress,
        n_steps=args.n_steps,
        n_boot=args.n_boot,
        out_dir=out / "digits-resnet",
        metadata={"model": "digits-resnet (trained in-process)", "data": "digits test split"},
    )
    print(report.to_markdown())
    minilm = load_model(MINILM)
    layers = {**find_layers(minilm.model, "attention"), **find_layers(minilm.model, "mlp")}
    report = validate(
        minilm.model,
        load_data(minilm, "sentences", batch_size=32),
        layers,
        baseline="zero",
        seed=args.seed,
        progress=progress,
        target=None,
        n_steps=args.n_steps,
        channel_dim=-1,
        n_boot=args.n_boot,
        out_dir=out / "minilm",
        metadata={"model": "all-MiniLM-L6-v2", "data": "captum_gndi demo sentences"},
    )
    print(report.to_markdown())
    print(
        f"\nreports written to {(out / 'digits-resnet').resolve()} and {(out / 'minilm').resolve()}"
    )
    return 0
