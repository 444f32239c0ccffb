"""The ``captum-gndi`` parser and :func:`main`: one subparser per subcommand module.

Each subcommand module (:mod:`.describe`, :mod:`.score`, :mod:`.validate`, :mod:`.demo`,
:mod:`.prune`, :mod:`.verify`) registers its parser with ``add_parser`` and stores its handler
as ``func``. :func:`main` runs the handler and turns the user's input errors into one line on
stderr and exit status 2. Input errors are the types the package raises for bad input: a
``ValueError`` (an argument check, an unknown name, a corrupt checkpoint), a
``FileNotFoundError`` (a missing file or folder) and an ``ImportError`` (an optional dependency
that is not installed). Anything else (``TypeError``, ``KeyError``, other ``OSError``s, ...) is a
bug or an environment problem and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import demo, describe, prune, score, validate, verify
from .options import PROG

__all__ = ["SUBCOMMANDS", "USER_ERRORS", "build_parser", "main"]

SUBCOMMANDS = (validate, score, describe, demo, prune, verify)
"""The subcommand modules, in the order ``--help`` lists them."""

USER_ERRORS = (ValueError, FileNotFoundError, ImportError)
"""The exception types :func:`main` reports as one line and exit status 2."""

_EPILOG = """examples:
  captum-gndi describe --model cifar-resnet56 --kind branch
  captum-gndi score --model cifar-resnet20 --weights resnet20-12fca82f.th --limit 500
  captum-gndi validate --model cifar-resnet56 \\
      --weights ../shared/data/cifar_resnets/resnet56-4bfd9763.th \\
      --data cifar10 --data-dir ../shared/data/cifar10 --out report/
  captum-gndi demo --out report/
  captum-gndi verify --model cifar-resnet20 --weights resnet20-12fca82f.th --k 20

Run "captum-gndi COMMAND --help" for the options of each command.
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``captum-gndi`` argument parser with every subcommand.

    Returns:
        The parser; ``parse_args`` stores the chosen subcommand's handler as ``func``.

    Examples:
        >>> args = build_parser().parse_args(["describe", "--model", "cifar-resnet20"])
        >>> args.func(args)
        0
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="G-NDI layer importance: score layers and channels, and check the scores "
        "against real interventions (do(h := b)) on the model.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in SUBCOMMANDS:
        command.add_parser(commands)
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 for a usage or input error (one line on stderr).

    Raises:
        Exception: Any error that is not one of :data:`USER_ERRORS`, with its traceback.

    Examples:
        >>> main(["describe", "--model", "cifar-resnet20", "--kind", "branch"])
        0
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as error:
        print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
        return 2
