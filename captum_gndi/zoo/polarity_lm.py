"""A small GPT-2 language model and its byte-level BPE tokenizer, trained on movie-review sentences.

The model is a Hugging Face :class:`transformers.GPT2LMHeadModel` (4 layers, 4 heads, width 128,
64 positions, eager attention so forward-mode AD works), so every Hugging Face adapter of
:mod:`captum_gndi.adapters` applies to it. Model and tokenizer are trained from scratch, offline,
on Pang & Lee's sentence-polarity corpus (10,662 one-sentence movie-review snippets, half positive,
half negative; ``<shared data>/text/sentence_polarity.zip``) with a fixed seed and a fixed held-out
split of 10% of the sentences that neither the tokenizer nor the model sees in training.

A trained checkpoint ships in the package (:data:`POLARITY_LM_DIR`: float16 safetensors weights,
loaded back as float32, and ``tokenizer.json``) and ``experiments/train_polarity_lm.py``
reproduces it: the tokenizer trainer and the training loop live in that script, not in the
installed package; this module loads the checkpoint, reads the corpus with the fixed split and
scores perplexity (the helpers :func:`encode_sentences`, :func:`pad_right` and
:func:`next_token_nll` are shared with the script).

Each sequence is ``<|endoftext|> sentence <|endoftext|>``: the tokenizer adds the leading
``<|endoftext|>`` (BOS) itself, the trailing one (EOS) is appended for training and perplexity
only, so the last real token of a tokenized prompt is its last word and next-token
predictions continue the sentence. Batches pad on the right with ``<|pad|>`` and come with an
``attention_mask``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np
import torch
from torch import Tensor

from captum_gndi.zoo.data import shared_data_dir

if TYPE_CHECKING:  # transformers is an optional dependency (the ``nlp`` extra)
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

__all__ = [
    "POLARITY_CORPUS",
    "POLARITY_LM_DIR",
    "POLARITY_LM_EOS",
    "POLARITY_LM_PAD",
    "encode_sentences",
    "load_polarity_lm",
    "load_polarity_sentences",
    "next_token_nll",
    "pad_right",
    "polarity_corpus_path",
    "polarity_lm_perplexity",
]

POLARITY_LM_DIR = Path(__file__).resolve().parent / "checkpoints" / "polarity_lm"
"""Folder of the packaged checkpoint: ``model.safetensors``, ``config.json``, ``tokenizer.json``
and ``training.json`` (hyperparameters, seed, split, held-out perplexity, training time)."""

POLARITY_CORPUS = Path("text") / "sentence_polarity.zip"
"""Location of the sentence-polarity zip inside the shared data folder."""

POLARITY_LM_EOS = "<|endoftext|>"
"""Beginning- and end-of-text token (id 0), as in GPT-2."""

POLARITY_LM_PAD = "<|pad|>"
"""Padding token (id 1); never a training target."""

MODEL_INPUT_NAMES = ("input_ids", "attention_mask")
"""What the tokenizer returns (no ``token_type_ids``: GPT-2 would add their embeddings)."""

TRAINING_FILE = "training.json"
"""The metadata file the training script writes next to the checkpoint."""

TRAINING_SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "train_polarity_lm.py"
"""The script that trains the tokenizer and the LM (present in a checkout of the repository)."""

MOVED_TO_SCRIPT = ("polarity_lm_config", "train_polarity_lm", "train_polarity_tokenizer")
"""Training functions that moved from this module to :data:`TRAINING_SCRIPT`."""
_MEMBERS = {"pos": 1, "neg": 0}  # rt-polarity.<suffix> -> label
Split = Literal["train", "heldout", "all"]
PathLike = Union[str, os.PathLike]


def _transformers():
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            "the polarity LM needs Hugging Face transformers and tokenizers: "
            'pip install "captum_gndi[nlp]"'
        ) from err
    return transformers


def polarity_corpus_path() -> Path | None:
    """The sentence-polarity zip in the shared data folder.

    Returns:
        ``<shared data>/text/sentence_polarity.zip`` if that file exists, else ``None``.

    Examples:
        >>> path = polarity_corpus_path()
        >>> sentences = load_polarity_sentences(path) if path else []
    """
    root = shared_data_dir()
    if root is None:
        return None
    path = root / POLARITY_CORPUS
    return path if path.is_file() else None


def _read_corpus(corpus_path: PathLike | None) -> list[tuple[str, int]]:
    if corpus_path is None:
        corpus_path = polarity_corpus_path()
        if corpus_path is None:
            raise FileNotFoundError(
                "sentence-polarity corpus not found at <shared data>/"
                f"{POLARITY_CORPUS.as_posix()}; pass its path or set CAPTUM_GNDI_DATA to the "
                "shared data folder"
            )
    path = Path(corpus_path).expanduser()
    files: dict[str, bytes] = {}
    if path.is_dir():
        for suffix in _MEMBERS:
            found = sorted(path.rglob(f"rt-polarity.{suffix}"))
            if found:
                files[suffix] = found[0].read_bytes()
    elif path.is_file():
        with zipfile.ZipFile(path) as archive:
            for name in sorted(archive.namelist()):
                suffix = name.rsplit(".", 1)[-1]
                if suffix in _MEMBERS and Path(name).stem == "rt-polarity":
                    files.setdefault(suffix, archive.read(name))
    else:
        raise FileNotFoundError(f"sentence-polarity corpus not found: {path}")
    if set(files) != set(_MEMBERS):
        raise ValueError(f"{path} does not hold both rt-polarity.pos and rt-polarity.neg")
    rows = []
    for suffix, label in _MEMBERS.items():
        raw = files[suffix]
        try:  # the v1.0 release is UTF-8; the original rt-polaritydata is latin-1
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        rows += [(line.strip(), label) for line in text.splitlines() if line.strip()]
    return rows


def load_polarity_sentences(
    corpus_path: PathLike | None = None,
    split: Split = "all",
    seed: int = 0,
    heldout_fraction: float = 0.1,
    labels: bool = False,
) -> list[str] | list[tuple[str, int]]:
    """Pang & Lee's sentence-polarity snippets, with the LM's fixed train / held-out split.

    Args:
        corpus_path: The ``sentence_polarity.zip`` file, or a folder holding ``rt-polarity.pos``
            and ``rt-polarity.neg`` (default: :func:`polarity_corpus_path`).
        split: ``"train"``, ``"heldout"`` or ``"all"`` (file order: positive, then negative).
        seed: Seed of the split (a NumPy permutation of all sentences; the first
            ``round(heldout_fraction * N)`` are held out, in permutation order).
        heldout_fraction: Share of the sentences held out.
        labels: Return ``(sentence, label)`` pairs, label 1 for positive and 0 for negative.

    Returns:
        The sentences (stripped of surrounding whitespace), or ``(sentence, label)`` pairs.

    Raises:
        FileNotFoundError: If the corpus is not found.
        ValueError: For an unknown ``split``, a fraction outside [0, 1) or a file without both
            polarity files.

    Examples:
        >>> heldout = load_polarity_sentences(split="heldout")
        >>> len(heldout)
        1066
    """
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    rows = _read_corpus(corpus_path)
    if split != "all":
        order = np.random.default_rng(seed).permutation(len(rows))
        n_heldout = round(heldout_fraction * len(rows))
        picked = order[:n_heldout] if split == "heldout" else order[n_heldout:]
        rows = [rows[i] for i in picked]
    return rows if labels else [text for text, _ in rows]


def encode_sentences(
    tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], max_length: int
) -> list[list[int]]:
    """``BOS text EOS`` token ids per text, cut at ``max_length`` (a cut sequence has no EOS).

    Args:
        tokenizer: The LM's tokenizer (it adds the BOS itself).
        texts: The sentences.
        max_length: Longest sequence.

    Returns:
        One list of ids per text.
    """
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return [(row + [tokenizer.eos_token_id])[:max_length] for row in ids]


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Token-id rows as one right-padded ``(N, T)`` batch and its attention mask.

    Args:
        rows: Token ids per sequence.
        pad_id: The padding token's id.

    Returns:
        ``(input_ids, attention_mask)``, both ``(N, longest row)`` int64.
    """
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def next_token_nll(model: GPT2LMHeadModel, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Summed next-token negative log-likelihood over the real target tokens, and their count.

    Args:
        model: A causal LM taking ``input_ids`` and ``attention_mask``.
        ids: ``(N, T)`` token ids.
        mask: ``(N, T)`` attention mask (1 for real tokens).

    Returns:
        ``(summed NLL, number of predicted tokens)``.
    """
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
    )
    return nll, (targets != -100).sum()


@torch.no_grad()
def polarity_lm_perplexity(
    model: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str],
    batch_size: int = 64,
    max_length: int | None = None,
) -> float:
    """Per-token perplexity of texts, scored as in training.

    Each text is scored as ``<|endoftext|> text <|endoftext|>`` (cut at ``max_length`` tokens):
    every token after the leading BOS is predicted, the closing EOS included, and the
    perplexity is ``exp(total NLL / number of predicted tokens)`` over all texts together.

    Args:
        model: A causal LM taking ``input_ids`` and ``attention_mask`` (e.g. the polarity LM).
        tokenizer: Its tokenizer (adds the BOS, has ``eos_token_id`` and ``pad_token_id``).
        texts: Sentences to score.
        batch_size: Texts per forward pass.
        max_length: Longest sequence scored (default: the model's ``n_positions``).

    Returns:
        The perplexity (``float``); the model is scored in eval mode and put back in the mode it
        was in.

    Raises:
        ValueError: If ``texts`` is empty.

    Examples:
        >>> model, tokenizer = load_polarity_lm()
        >>> ppl = polarity_lm_perplexity(model, tokenizer, ["a gorgeous , witty film ."])
    """
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise ValueError("texts is empty: pass at least one sentence")
    if max_length is None:
        max_length = getattr(model.config, "n_positions", tokenizer.model_max_length)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        rows = encode_sentences(tokenizer, texts, max_length)
        for start in range(0, len(rows), batch_size):
            ids, mask = pad_right(rows[start : start + batch_size], tokenizer.pad_token_id)
            nll, n = next_token_nll(model, ids.to(device), mask.to(device))
            total += nll.item()
            count += int(n)
    finally:
        model.train(was_training)
    return math.exp(total / max(count, 1))


def load_polarity_lm(
    path: PathLike | None = None,
) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """Load the polarity LM and its tokenizer from a local folder (no network).

    Args:
        path: A folder written by ``experiments/train_polarity_lm.py`` (default: the checkpoint
            shipped in the package, :data:`POLARITY_LM_DIR`).

    Returns:
        ``(model, tokenizer)``: a float32 ``GPT2LMHeadModel`` in eval mode with eager attention,
        and a ``PreTrainedTokenizerFast`` that returns ``input_ids`` and ``attention_mask``,
        prepends BOS and pads on the right.

    Raises:
        FileNotFoundError: If the folder lacks the weights, config or tokenizer (the message
            names the command that writes them).

    Examples:
        >>> model, tokenizer = load_polarity_lm()
        >>> batch = tokenizer(["a good film", "the plot is"], padding=True, return_tensors="pt")
        >>> logits = model(**batch).logits  # (2, tokens, vocabulary)
    """
    transformers = _transformers()
    folder = Path(path).expanduser() if path is not None else POLARITY_LM_DIR
    missing = [
        name
        for name in ("config.json", "model.safetensors", "tokenizer.json")
        if not (folder / name).is_file()
    ]
    if missing:
        raise FileNotFoundError(
            f"no polarity LM checkpoint in {folder} (missing {', '.join(missing)}); write one "
            f"with: python experiments/train_polarity_lm.py --out {folder}"
        )
    model = transformers.GPT2LMHeadModel.from_pretrained(
        folder, attn_implementation="eager", local_files_only=True
    )
    model = model.float().eval()
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(
        folder,
        local_files_only=True,
        padding_side="right",
        add_prefix_space=True,
        model_input_names=list(MODEL_INPUT_NAMES),
        clean_up_tokenization_spaces=False,
    )
    tokenizer.padding_side = "right"
    return model, tokenizer


def __getattr__(name: str) -> Any:
    """The training functions that moved to ``experiments/train_polarity_lm.py``, for one release.

    Reading one warns (``DeprecationWarning``) and returns it from that script when the
    repository checkout has it.
    """
    if name not in MOVED_TO_SCRIPT:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"captum_gndi.zoo.{name} moved to experiments/train_polarity_lm.py (the zoo only loads "
        "models); import it from that script.",
        DeprecationWarning,
        stacklevel=2,
    )
    if not TRAINING_SCRIPT.is_file():
        raise AttributeError(
            f"{name} moved to experiments/train_polarity_lm.py, which this installation does not "
            "include; use a checkout of the repository."
        )
    spec = importlib.util.spec_from_file_location("train_polarity_lm", TRAINING_SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return getattr(script, name)
