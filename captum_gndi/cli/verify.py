"""``captum-gndi verify``: the exact top-k units, screened by G-NDI and verified by ablation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..interventions import DAMAGE_METRICS
from .loaders import check_counts, prepare_scoring
from .options import (
    GRANULARITIES,
    GranularityOption,
    add_baseline_option,
    add_model_options,
    add_output_options,
)

__all__ = ["add_parser", "run"]

_EPILOG = """examples:
  # the 20 branch channels of the trained ResNet-20 whose ablation moves the logits most
  captum-gndi verify --model cifar-resnet20 \\
      --weights ../shared/data/cifar_resnets/resnet20-12fca82f.th \\
      --data cifar10 --data-dir ../shared/data/cifar10 --k 20 --granularity channel \\
      --out report-verify/
  # the 5 residual branches whose ablation costs most accuracy
  captum-gndi verify --model cifar-resnet56 --granularity layer --k 5 --damage accuracy_drop

G-NDI scores every unit, then units are ablated in order of predicted damage until no
unverified unit can still enter the top k (see captum_gndi.verify). The report folder gets
verify.md and verify.json.
"""


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``verify`` on the subparsers object of the main parser.

    Args:
        commands: The object ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The ``verify`` parser (its handler is stored as ``func``).
    """
    parser = commands.add_parser(
        "verify",
        help="find the exact top-k units by ablation, verifying only G-NDI's candidates",
        description="Score every unit with first-order G-NDI, then ablate units in order of "
        "predicted damage until no unverified unit can still enter the top k. Prints the top k "
        "with their true damage and the share of brute force's ablations that were needed.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(parser)
    group = parser.add_argument_group("verification")
    group.add_argument("--k", type=int, default=10, help="how many units to return (default 10)")
    group.add_argument(
        "--granularity",
        action=GranularityOption,
        default="channel",
        metavar="{layer,channel}",
        help="one unit per channel, or per layer (default channel)",
    )
    add_baseline_option(group)
    add_output_options(group, with_norm=False)
    group.add_argument(
        "--damage",
        choices=DAMAGE_METRICS,
        default="output_delta",
        help="ground-truth damage of an ablation (default output_delta: L2 change of the output)",
    )
    group.add_argument(
        "--expected-misses",
        type=float,
        default=1.0,
        help="bound on the expected number of true top-k units left unverified (default 1; "
        "lower is safer and costlier)",
    )
    group.add_argument(
        "--audit", type=int, help="random audit size (default ceil(k / expected misses))"
    )
    group.add_argument(
        "--units-per-pass", type=int, default=8, help="units ablated in one stacked forward pass"
    )
    group.add_argument("--seed", type=int, default=0, help="seed of the audit sample")
    group.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    group.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--out", help="folder for verify.md and verify.json")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run :func:`captum_gndi.verify_top_k`, print the table, write Markdown/JSON to ``--out``.

    Args:
        args: Parsed arguments of the ``verify`` parser.

    Returns:
        The exit status (0).

    Raises:
        ValueError: For a ``--granularity`` other than layer or channel, counts below 1, or
            ``--k`` above the number of units.
    """
    from ..verify import verify_top_k

    if args.granularity not in GRANULARITIES:
        raise ValueError(f"unknown --granularity {args.granularity!r}; choose layer or channel")
    check_counts(args, ("k", "units_per_pass"))
    loaded, loader, layers = prepare_scoring(args)
    result = verify_top_k(
        loaded.model,
        loader,
        layers,
        k=args.k,
        granularity=args.granularity,
        baseline=args.baseline,
        damage=args.damage,
        expected_misses=args.expected_misses,
        audit=args.audit,
        units_per_pass=args.units_per_pass,
        channel_dim=loaded.channel_dim,
        target=args.target,
        device=args.device,
        progress=not args.quiet,
        seed=args.seed,
    )
    print(result)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        payload = result.to_dict()
        payload["model"], payload["data"] = args.model, args.data or loaded.data
        (out / "verify.json").write_text(json.dumps(payload, indent=2))
        (out / "verify.md").write_text(
            result.to_markdown() + f"\nModel `{args.model}`, data `{args.data or loaded.data}`, "
            f"{result.settings['n_examples']} examples, baseline `{args.baseline}`.\n"
        )
        print(f"\nreport written to {out / 'verify.md'} and {out / 'verify.json'}")
    return 0
