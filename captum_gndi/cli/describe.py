"""``captum-gndi describe``: list a model's intervention points and what zeroing each means."""

from __future__ import annotations

import argparse
from typing import Any

from .loaders import check_kinds, load_model
from .options import DeprecatedOption, add_model_options

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``describe`` on the subparsers object of the main parser.

    Args:
        commands: The object ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The ``describe`` parser (its handler is stored as ``func``).
    """
    parser = commands.add_parser(
        "describe",
        help="list a model's intervention points and what zeroing each one means",
        description="List the layers G-NDI can intervene on, with their output shapes.",
        epilog="example:\n  captum-gndi describe --model minilm --kind attention,mlp",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(parser, with_data=False)
    parser.add_argument("--granularity", dest="kind", action=DeprecatedOption, replacement="--kind")
    parser.add_argument("--seed", type=int, default=0, help="seed of digits-resnet training")
    parser.add_argument("--quiet", action="store_true", help="print the table only")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the model's size and one table of points per ``--kind``.

    Args:
        args: Parsed arguments of the ``describe`` parser.

    Returns:
        The exit status (0).
    """
    from ..adapters import describe_layers

    kinds = check_kinds(args.kind)
    loaded = load_model(args.model, args.weights, args.seed, verbose=not args.quiet)
    n_params = sum(p.numel() for p in loaded.model.parameters())
    print(f"{args.model}: {type(loaded.model).__name__}, {n_params:,} parameters")
    for kind in kinds:
        print(f"\n{kind} points:")
        describe_layers(loaded.model, kind, loaded.example_inputs())
    return 0
