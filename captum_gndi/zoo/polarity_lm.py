"""A small GPT-2 language model and its byte-level BPE tokenizer, trained on movie-review sentences.

The model is a Hugging Face :class:`transformers.GPT2LMHeadModel` (4 layers, 4 heads, width 128,
64 positions, eager attention so forward-mode AD works), so every Hugging Face adapter of
:mod:`captum_gndi.adapters` applies to it. Model and tokenizer are trained from scratch, offline,
on Pang & Lee's sentence-polarity corpus (10,662 one-sentence movie-review snippets, half positive,
half negative; ``<shared data>/text/sentence_polarity.zip``) with a fixed seed and a fixed held-out
split of 10% of the sentences that neither the tokenizer nor the model sees in training.

A trained checkpoint ships in the package (:data:`POLARITY_LM_DIR`: float16 safetensors weights,
loaded back as float32, and ``tokenizer.json``) and ``experiments/train_polarity_lm.py``
reproduces it. Each sequence is ``<|endoftext|> sentence <|endoftext|>``: the tokenizer adds the
leading ``<|endoftext|>`` (BOS) itself, the trailing one (EOS) is appended for training and
perplexity only, so the last real token of a tokenized prompt is its last word and next-token
predictions continue the sentence. Batches pad on the right with ``<|pad|>`` and come with an
``attention_mask``.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional, Union

import numpy as np
import torch
from torch import Tensor

from captum_gndi.zoo.data import shared_data_dir

if TYPE_CHECKING:  # transformers is an optional dependency (the ``nlp`` extra)
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

__all__ = [
    "POLARITY_CORPUS",
    "POLARITY_LM_DIR",
    "POLARITY_LM_EOS",
    "POLARITY_LM_PAD",
    "load_polarity_lm",
    "load_polarity_sentences",
    "polarity_corpus_path",
    "polarity_lm_config",
    "polarity_lm_perplexity",
    "train_polarity_lm",
    "train_polarity_tokenizer",
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


def train_polarity_tokenizer(
    sentences: Sequence[str], vocab_size: int = 4096, max_length: int = 64
) -> PreTrainedTokenizerFast:
    """Train a GPT-2-style byte-level BPE tokenizer on sentences.

    The pre-tokenizer adds a prefix space, so a sentence's first word gets the same tokens as
    the same word inside a sentence, and the decoder removes it again: decoding the ids of a
    stripped sentence returns it exactly. Training is deterministic (same sentences, same
    vocabulary).

    Args:
        sentences: Training text, one sentence each.
        vocab_size: Vocabulary size including the 256 byte tokens and the two special tokens.
        max_length: ``model_max_length`` of the tokenizer (the model's number of positions).

    Returns:
        A ``PreTrainedTokenizerFast`` that prepends :data:`POLARITY_LM_EOS` (id 0) as BOS and pads
        on the right with :data:`POLARITY_LM_PAD` (id 1).

    Examples:
        >>> tokenizer = train_polarity_tokenizer(["a good film .", "a bad film ."], vocab_size=300)
        >>> tokenizer("a good film .")["input_ids"][0] == tokenizer.bos_token_id
        True
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    transformers = _transformers()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[POLARITY_LM_EOS, POLARITY_LM_PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(sentences), trainer)
    bos = tokenizer.token_to_id(POLARITY_LM_EOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{POLARITY_LM_EOS} $A",
        pair=f"{POLARITY_LM_EOS} $A {POLARITY_LM_EOS} $B",
        special_tokens=[(POLARITY_LM_EOS, bos)],
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=POLARITY_LM_EOS,
        eos_token=POLARITY_LM_EOS,
        pad_token=POLARITY_LM_PAD,
        model_max_length=max_length,
        padding_side="right",
        add_prefix_space=True,  # transformers resets the pre-tokenizer's flag unless passed
        model_input_names=list(MODEL_INPUT_NAMES),  # GPT-2 would embed token_type_ids
        clean_up_tokenization_spaces=False,  # the corpus writes " ." and " , ": keep them
    )


def polarity_lm_config(
    vocab_size: int,
    n_positions: int = 64,
    n_embd: int = 128,
    n_layer: int = 4,
    n_head: int = 4,
    dropout: float = 0.1,
) -> GPT2Config:
    """The GPT-2 configuration of the polarity LM, built from scratch (no hub download).

    Args:
        vocab_size: Tokenizer vocabulary size.
        n_positions: Maximum sequence length.
        n_embd: Width of the residual stream (the MLP is 4 times as wide).
        n_layer: Number of transformer blocks.
        n_head: Attention heads per block.
        dropout: Residual, embedding and attention dropout used in training.

    Returns:
        A ``GPT2Config`` with eager attention, BOS = EOS = 0 and PAD = 1.

    Examples:
        >>> polarity_lm_config(4096).n_layer
        4
    """
    transformers = _transformers()
    config = transformers.GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )
    config._attn_implementation = "eager"
    return config


def _encode(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], max_length: int):
    """``BOS text EOS`` ids per text, cut at ``max_length`` (a cut sequence has no EOS)."""
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return [(row + [tokenizer.eos_token_id])[:max_length] for row in ids]


def _collate(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def _token_nll(model, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Summed next-token NLL over real target tokens, and their count."""
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
        rows = _encode(tokenizer, texts, max_length)
        for start in range(0, len(rows), batch_size):
            ids, mask = _collate(rows[start : start + batch_size], tokenizer.pad_token_id)
            nll, n = _token_nll(model, ids.to(device), mask.to(device))
            total += nll.item()
            count += int(n)
    finally:
        model.train(was_training)
    return math.exp(total / max(count, 1))


def _batches(
    rows: list[list[int]], batch_size: int, generator: torch.Generator, bucket: int = 50
) -> list[list[list[int]]]:
    """Shuffle, sort by length within buckets of ``bucket`` batches (less padding), and
    shuffle the batches."""
    order = torch.randperm(len(rows), generator=generator).tolist()
    span = batch_size * bucket
    batches = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: len(rows[i]))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    perm = torch.randperm(len(batches), generator=generator).tolist()
    return [[rows[i] for i in batches[j]] for j in perm]


def train_polarity_lm(
    corpus_path: PathLike | None = None,
    out_dir: PathLike | None = None,
    seed: int = 0,
    *,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 2e-3,
    weight_decay: float = 0.1,
    warmup_steps: int = 200,
    vocab_size: int = 4096,
    max_length: int = 64,
    heldout_fraction: float = 0.1,
    dropout: float = 0.1,
    dtype: torch.dtype = torch.float16,
    log: Optional[Callable[[str], None]] = print,
) -> dict[str, object]:
    """Train the tokenizer and the GPT-2 LM on the polarity corpus and save both.

    Deterministic on the CPU for a given seed and thread count: the held-out split, the
    initialisation, the batch order and dropout all derive from ``seed``. The tokenizer is
    trained on the training split only. Optimiser: AdamW (betas 0.9 / 0.95, no weight decay on
    biases, LayerNorms and embeddings' positions) with linear warm-up and cosine decay to 10%,
    gradient clipping at 1.0.

    Args:
        corpus_path: The sentence-polarity zip or folder (default: :func:`polarity_corpus_path`).
        out_dir: Where to write the checkpoint (default: :data:`POLARITY_LM_DIR`); holds
            ``model.safetensors``, ``config.json``, ``tokenizer.json`` (+ its config files) and
            ``training.json`` afterwards.
        seed: Seed of the split, the initialisation, the batch order and dropout.
        epochs: Passes over the training split.
        batch_size: Sentences per step.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay of the weight matrices.
        warmup_steps: Linear warm-up steps.
        vocab_size: Tokenizer vocabulary size.
        max_length: Positions of the model; longer sentences are cut.
        heldout_fraction: Share of sentences held out (see :func:`load_polarity_sentences`).
        dropout: Dropout of the model in training.
        dtype: Storage dtype of the saved weights (``torch.float16`` keeps the file small;
            :func:`load_polarity_lm` reads them back as float32).
        log: Called with one progress line per epoch (``None``: silent).

    Returns:
        The metadata written to ``training.json``: hyperparameters, split, parameter count,
        per-epoch held-out perplexity, the held-out perplexity of the *saved* (``dtype``)
        weights, and the training time in seconds.

    Examples:
        >>> info = train_polarity_lm(out_dir="/tmp/polarity_lm", epochs=1)
        >>> model, tokenizer = load_polarity_lm("/tmp/polarity_lm")
    """
    transformers = _transformers()
    out = Path(out_dir).expanduser() if out_dir is not None else POLARITY_LM_DIR
    started = time.perf_counter()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    split = dict(seed=seed, heldout_fraction=heldout_fraction)
    train_texts = load_polarity_sentences(corpus_path, "train", **split)
    heldout_texts = load_polarity_sentences(corpus_path, "heldout", **split)
    tokenizer = train_polarity_tokenizer(train_texts, vocab_size, max_length)
    config = polarity_lm_config(len(tokenizer), max_length, dropout=dropout)
    model = transformers.GPT2LMHeadModel(config)
    train_rows = _encode(tokenizer, train_texts, max_length)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "wpe" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "wpe" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0}],
        lr=lr,
        betas=(0.9, 0.95),
    )
    steps_per_epoch = math.ceil(len(train_rows) / batch_size)
    total_steps = epochs * steps_per_epoch

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        model.train()
        epoch_nll, epoch_tokens = 0.0, 0
        for batch in _batches(train_rows, batch_size, generator):
            ids, mask = _collate(batch, tokenizer.pad_token_id)
            nll, n = _token_nll(model, ids, mask)
            optimizer.zero_grad(set_to_none=True)
            (nll / n).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            epoch_nll += nll.item()
            epoch_tokens += int(n)
        heldout_ppl = polarity_lm_perplexity(model, tokenizer, heldout_texts)
        row = dict(
            epoch=epoch + 1,
            train_ppl=round(math.exp(epoch_nll / epoch_tokens), 3),
            heldout_ppl=round(heldout_ppl, 3),
            seconds=round(time.perf_counter() - started, 1),
        )
        history.append(row)
        if log is not None:
            log(
                f"epoch {row['epoch']}/{epochs}: train ppl {row['train_ppl']:.2f}, "
                f"held-out ppl {row['heldout_ppl']:.2f} ({row['seconds']:.0f} s)"
            )
    train_seconds = time.perf_counter() - started

    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    saved, saved_tokenizer = load_polarity_lm(out)
    saved_ppl = polarity_lm_perplexity(saved, saved_tokenizer, heldout_texts)
    info: dict[str, object] = dict(
        corpus="sentence_polarity.zip (Pang & Lee 2005, v1.0)",
        n_train_sentences=len(train_texts),
        n_heldout_sentences=len(heldout_texts),
        split=split,
        vocab_size=len(tokenizer),
        n_positions=max_length,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_embd=config.n_embd,
        n_parameters=sum(p.numel() for p in saved.parameters()),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_steps=warmup_steps,
        dropout=dropout,
        saved_dtype=str(dtype).replace("torch.", ""),
        torch_threads=torch.get_num_threads(),
        history=history,
        heldout_perplexity=round(saved_ppl, 3),
        train_seconds=round(train_seconds, 1),
        versions=dict(torch=torch.__version__, transformers=transformers.__version__),
    )
    (out / TRAINING_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def load_polarity_lm(
    path: PathLike | None = None,
) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """Load the polarity LM and its tokenizer from a local folder (no network).

    Args:
        path: A folder written by :func:`train_polarity_lm` (default: the checkpoint shipped in
            the package, :data:`POLARITY_LM_DIR`).

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
