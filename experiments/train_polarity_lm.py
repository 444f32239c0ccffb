"""Train the zoo's polarity LM: a 4-layer GPT-2 and its byte-level BPE tokenizer, from scratch.

Both are trained on Pang & Lee's sentence-polarity corpus (``../shared/data/text/
sentence_polarity.zip``, 10,662 movie-review sentences) with a fixed seed; 10% of the sentences
(a seeded permutation) are held out from the tokenizer and the model and give the reported
perplexity. Runs offline on one CPU thread in about 10 to 15 minutes.

Usage (writes the checkpoint shipped in the package)::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/train_polarity_lm.py \
        --corpus ../shared/data/text/sentence_polarity.zip \
        --out captum_gndi/zoo/checkpoints/polarity_lm

The output folder holds ``model.safetensors`` (float16), ``config.json``, ``tokenizer.json`` (+
tokenizer config files) and ``training.json`` (settings, seed, the command, per-epoch and final
held-out perplexity, training time). Load it with :func:`captum_gndi.zoo.load_polarity_lm`.

The tokenizer trainer (:func:`train_polarity_tokenizer`), the model configuration
(:func:`polarity_lm_config`) and the training loop (:func:`train_polarity_lm`) live here, not in
the installed package: the zoo only loads the checkpoint.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAYON_RS_NUM_CPUS", "1")  # the tokenizers library's trainer
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import GPT2Config, PreTrainedTokenizerFast  # noqa: E402

from captum_gndi.zoo.polarity_lm import (  # noqa: E402
    MODEL_INPUT_NAMES,
    POLARITY_LM_DIR,
    POLARITY_LM_EOS,
    POLARITY_LM_PAD,
    TRAINING_FILE,
    PathLike,
    encode_sentences,
    load_polarity_lm,
    load_polarity_sentences,
    next_token_nll,
    pad_right,
    polarity_lm_perplexity,
)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


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
    train_rows = encode_sentences(tokenizer, train_texts, max_length)

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
            ids, mask = pad_right(batch, tokenizer.pad_token_id)
            nll, n = next_token_nll(model, ids, mask)
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--corpus",
        default=None,
        help="sentence_polarity.zip or a folder with rt-polarity.pos/.neg "
        "(default: <shared data>/text/sentence_polarity.zip)",
    )
    parser.add_argument(
        "--out", default=str(POLARITY_LM_DIR), help="output folder (default: the packaged one)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--max-length", type=int, default=64, help="positions / token cap")
    parser.add_argument("--heldout-fraction", type=float, default=0.1)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    info = train_polarity_lm(
        args.corpus,
        args.out,
        seed=args.seed,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        vocab_size=args.vocab_size,
        max_length=args.max_length,
        heldout_fraction=args.heldout_fraction,
        dtype=DTYPES[args.dtype],
    )
    raw = sys.argv[1:] if argv is None else argv
    info = {"command": shlex.join(["python", "experiments/train_polarity_lm.py", *raw]), **info}
    out = Path(args.out)
    (out / TRAINING_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(
        f"held-out perplexity {info['heldout_perplexity']:.2f} "
        f"({info['n_heldout_sentences']} sentences, {info['saved_dtype']} weights); "
        f"training {info['train_seconds']:.0f} s; {size / 2**20:.2f} MiB in {out}"
    )
    return info


if __name__ == "__main__":
    main()
