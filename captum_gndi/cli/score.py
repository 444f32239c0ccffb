"""``captum-gndi score``: print (and save) importance scores of layers or channels."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from .loaders import prepare_scoring, split_names
from .options import add_model_options, add_scoring_options, criterion_targets, unit_granularity

__all__ = ["add_parser", "run"]

_EPILOG = """examples:
  captum-gndi score --model cifar-resnet20 --weights resnet20.th --kind branch --criteria gndi,snip
  # G-NDI as the Fisher norm of the softmax, estimated from 8 random probes per batch
  captum-gndi score --model cifar-resnet20 --weights r20.th --kind branch --norm fisher --n-probes 8
"""


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``score`` on the subparsers object of the main parser.

    Args:
        commands: The object ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The ``score`` parser (its handler is stored as ``func``).
    """
    parser = commands.add_parser(
        "score",
        help="print importance scores of layers or channels",
        description="Score every unit with one or more criteria and print a table.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(parser)
    add_scoring_options(parser, "gndi")
    parser.add_argument("--out", help="folder for scores.csv and scores.json")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Score every unit with ``--criteria``, print the table, write CSV/JSON to ``--out``.

    Args:
        args: Parsed arguments of the ``score`` parser.

    Returns:
        The exit status (0).
    """
    from ..criteria import score_criteria
    from ..validation import select_units

    granularity = unit_granularity(args)
    loaded, loader, layers = prepare_scoring(args)
    units = select_units(
        loaded.model,
        loader,
        layers,
        granularity=granularity,
        n_channels=args.n_channels,
        seed=args.seed,
        channel_dim=loaded.channel_dim,
        device=args.device,
    )
    scores, _ = score_criteria(
        loaded.model,
        loader,
        layers,
        criteria=split_names(args.criteria),
        baseline=args.baseline,
        units=units,
        seed=args.seed,
        n_steps=args.n_steps,
        channel_dim=loaded.channel_dim,
        device=args.device,
        progress=not args.quiet,
        skip_undefined=True,
        **criterion_targets(args, text_model=loaded.tokenizer is not None),
    )
    columns = {m: (v.mean(0) if v.ndim == 2 else v) for m, v in scores.items()}
    rows = [
        {"unit": unit.name, "position": unit.depth, **{m: float(v[i]) for m, v in columns.items()}}
        for i, unit in enumerate(units)
    ]
    width = max(len("unit"), *(len(r["unit"]) for r in rows))
    print(f"{'unit':<{width}}  " + "  ".join(f"{m:>12.12}" for m in columns))
    for row in rows:
        print(f"{row['unit']:<{width}}  " + "  ".join(f"{row[m]:>12.5g}" for m in columns))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "scores.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        (out / "scores.json").write_text(json.dumps(rows, indent=2))
        print(f"\nscores written to {out / 'scores.csv'} and {out / 'scores.json'}")
    return 0
