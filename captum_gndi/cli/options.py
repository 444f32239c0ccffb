"""Options that several subcommands share, and the deprecated spellings they still accept.

One word per concept, in every subcommand's ``--help``: ``--kind`` says which layers (an adapter
kind: block, branch, attention, mlp, head, conv, linear, auto), ``--granularity`` says what one unit
is (a whole layer or one channel), and ``--criteria`` names the importance criteria. The old
spellings (``--granularity branch``, ``--level``, ``--methods``) still work for one release:
they print one warning line on stderr and set the new option.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from .loaders import DATA_SETS, LAYER_KINDS, split_names

__all__ = [
    "GRANULARITIES",
    "PROG",
    "DeprecatedOption",
    "GranularityOption",
    "add_baseline_option",
    "add_criteria_option",
    "add_model_options",
    "add_output_options",
    "add_scoring_options",
    "criterion_targets",
    "known_criteria",
    "unit_granularity",
    "warn",
]

PROG = "captum-gndi"
"""The program name in usage lines, warnings and errors."""

GRANULARITIES = ("layer", "channel")
"""``--granularity`` values: one unit per layer, or per channel."""


def warn(message: str) -> None:
    """Print one warning line on stderr (``captum-gndi: warning: ...``)."""
    print(f"{PROG}: warning: {message}", file=sys.stderr)


class DeprecatedOption(argparse.Action):
    """An old option spelling: warns once on stderr and stores its value into the new option.

    Args:
        option_strings: The old flag, e.g. ``["--methods"]``.
        dest: The new option's destination, e.g. ``"criteria"``.
        replacement: The new flag named in the warning, e.g. ``"--criteria"``.
        **kwargs: Passed on to :class:`argparse.Action` (``choices``, ``help``, ...).
    """

    def __init__(
        self, option_strings: Sequence[str], dest: str, replacement: str, **kwargs: Any
    ) -> None:
        kwargs.setdefault("help", argparse.SUPPRESS)
        kwargs.setdefault("default", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)
        self.replacement = replacement

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        """Warn and store ``values`` as the new option's value."""
        warn(f"{option_string} is deprecated; use {self.replacement} (same values)")
        setattr(namespace, self.dest, values)


class GranularityOption(argparse.Action):
    """``--granularity layer|channel``; an adapter kind there (the old meaning) goes to --kind.

    ``--granularity branch`` (or any comma list of adapter kinds) prints a warning and sets
    ``--kind``; other values are kept and rejected by :func:`unit_granularity`.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        """Store a granularity, or warn and store an adapter kind as ``--kind``."""
        kinds = split_names(values) or []
        if values not in GRANULARITIES and kinds and all(k in LAYER_KINDS for k in kinds):
            warn(
                f"--granularity {values} is deprecated: --granularity is now layer or channel; "
                f"use --kind {values} to choose the layers"
            )
            namespace.kind = values
        else:
            setattr(namespace, self.dest, values)


def known_criteria() -> dict[str, str]:
    """The importance criteria ``--criteria`` accepts, with a one-line description each."""
    from ..criteria import available_criteria

    return available_criteria()


def criterion_targets(args: argparse.Namespace, text_model: bool) -> dict[str, Any]:
    """The criteria's ``gndi_target``, ``norm``, ``n_probes`` and ``target`` from ``--target``,
    ``--norm`` and ``--n-probes`` (as ``prune`` reads them).

    Args:
        args: Parsed arguments of ``score`` or ``validate``.
        text_model: A model without class labels (a sentence encoder): the loss- and
            logit-based criteria then get no target unless ``--target`` names one.

    Returns:
        Keyword arguments of :class:`~captum_gndi.criteria.CriterionSettings`.
    """
    default = None if text_model else "label"
    return {
        "gndi_target": args.target,
        "norm": args.norm,
        "n_probes": args.n_probes,
        "target": default if args.target is None else args.target,
    }


def unit_granularity(args: argparse.Namespace) -> str:
    """What one unit is: ``"channel"`` with ``--n-channels``, else ``--granularity``.

    Raises:
        ValueError: For a ``--granularity`` that is neither ``layer`` nor ``channel``.
    """
    if args.granularity not in GRANULARITIES:
        raise ValueError(
            f"unknown --granularity {args.granularity!r}; choose layer or channel (--kind "
            f"chooses the layers: {', '.join(LAYER_KINDS)})"
        )
    return "channel" if args.n_channels is not None else args.granularity


def add_model_options(parser: argparse.ArgumentParser, with_data: bool = True) -> None:
    """``--model``, ``--weights``, ``--kind`` (and ``--layers`` and the data options).

    Args:
        parser: A subcommand's parser.
        with_data: Also add ``--layers`` and the data group (``--data``, ``--data-dir``,
            ``--limit``, ``--batch-size``).
    """
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        required=True,
        help="cifar-resnet20/32/44/56, cifar-resnet18, captum-cifar-cnn, digits-resnet (trained "
        "in seconds unless --weights is given), torchvision:NAME, minilm, or a Hugging Face "
        "model folder",
    )
    group.add_argument("--weights", help="checkpoint file (state dict or akamaster .th)")
    group.add_argument(
        "--kind",
        default="auto",
        help="which layers: auto, block, branch, attention, mlp, head, conv, linear, or a comma "
        "list such as attention,mlp (default auto)",
    )
    if not with_data:
        return
    group.add_argument(
        "--layers", nargs="+", metavar="NAME", help="dotted layer names (overrides --kind)"
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data", choices=DATA_SETS, help="data set (default: the model's own)")
    data.add_argument(
        "--data-dir",
        help="CIFAR-10 folder holding cifar-10-batches-py (default: the shared data folder), "
        "or a sentence .txt / polarity .zip file (default: the built-in demo sentences)",
    )
    data.add_argument(
        "--limit", type=int, default=256, help="number of examples to use (default 256)"
    )
    data.add_argument("--batch-size", type=int, default=128, help="examples per batch")


def add_criteria_option(
    parser: argparse.ArgumentParser | Any, default: str | None, help_text: str | None = None
) -> None:
    """``--criteria`` (with ``--criterion`` as a hidden synonym and ``--methods`` deprecated).

    Args:
        parser: A parser or argument group.
        default: The default comma list, or ``None`` for every criterion.
        help_text: The help line (default: ``comma-separated importance criteria``).
    """
    parser.add_argument(
        "--criteria",
        default=default,
        help=help_text
        or "comma-separated importance criteria (default: "
        + ("all" if default is None else default)
        + ")",
    )
    parser.add_argument(
        "--criterion", dest="criteria", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--methods", dest="criteria", action=DeprecatedOption, replacement="--criteria"
    )


def add_baseline_option(parser: argparse.ArgumentParser | Any) -> None:
    """``--baseline zero|mean``: the value an intervention sets a unit to (default zero).

    Declared here only, for every subcommand that intervenes (``score``, ``validate``,
    ``prune``, ``verify``).

    Args:
        parser: A subcommand's parser or one of its argument groups.
    """
    parser.add_argument(
        "--baseline",
        choices=("zero", "mean"),
        default="zero",
        help="value the intervention sets the unit to: zero or the data-set mean activation",
    )


def _target(text: str) -> str | int | None:
    if text == "none":
        return None
    if text in ("label", "predicted"):
        return text
    try:
        return int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected none, label, predicted or a class index, got {text!r}"
        ) from error


def _norm(text: str) -> str | float:
    """``--norm``: a name (l1, l2, linf, fisher) or a number, which the API wants as a float."""
    try:
        return float(text)
    except ValueError:
        return text


def add_output_options(parser: argparse.ArgumentParser | Any, with_norm: bool = True) -> None:
    """``--target``, ``--norm``, ``--n-probes``: which output G-NDI measures, and how.

    Declared here only, for ``prune``, ``score`` and ``validate`` (``verify`` takes ``--target``
    alone: its screen ranks units by the L2 change that its damage measures). ``--target`` is
    also the class of the loss- and logit-based criteria (Taylor, SNIP, ...; ``label`` when it
    is ``none``).

    Args:
        parser: A subcommand's parser or one of its argument groups.
        with_norm: Add ``--norm`` and ``--n-probes`` too.
    """
    parser.add_argument(
        "--target",
        type=_target,
        default=None,
        metavar="{none,label,predicted,INDEX}",
        help="output G-NDI measures: none (every output, default), each example's label, the "
        "predicted class, or one class index (one backward pass instead of one per output); "
        "the class of the loss- and logit-based criteria too (label when none)",
    )
    if not with_norm:
        return
    parser.add_argument(
        "--norm",
        type=_norm,
        default="l2",
        help="norm over the output: l1, l2 (default), linf, a number p >= 1, or fisher",
    )
    parser.add_argument(
        "--n-probes",
        type=int,
        help="estimate the L2 / Fisher norm from this many random vector-Jacobian products "
        "(that many backward passes, whatever the number of outputs)",
    )


def add_scoring_options(parser: argparse.ArgumentParser, default_criteria: str | None) -> None:
    """The scoring group of ``score`` and ``validate``.

    ``--criteria``, ``--baseline``, ``--target``, ``--norm``, ``--n-probes``, ``--granularity``,
    ``--n-channels``, ``--n-steps``, ``--seed``, ``--device`` and ``--quiet``, plus the
    deprecated ``--methods`` and ``--level``.

    Args:
        parser: A subcommand's parser.
        default_criteria: The default of ``--criteria`` (``None``: every criterion).
    """
    run = parser.add_argument_group("scoring")
    add_criteria_option(run, default_criteria)
    add_baseline_option(run)
    add_output_options(run)
    run.add_argument(
        "--granularity",
        action=GranularityOption,
        default="layer",
        metavar="{layer,channel}",
        help="one unit per layer, or per channel (default layer)",
    )
    run.add_argument(
        "--level",
        dest="granularity",
        action=DeprecatedOption,
        replacement="--granularity",
        choices=GRANULARITIES,
    )
    run.add_argument(
        "--n-channels",
        type=int,
        help="random sample of this many channels (implies --granularity channel)",
    )
    run.add_argument(
        "--n-steps",
        type=int,
        default=8,
        help="integration points of gndi_path, layer_conductance and layer_integrated_gradients "
        "(default 8; their cost grows linearly with it)",
    )
    run.add_argument("--seed", type=int, default=0, help="seed of samples and controls")
    run.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
