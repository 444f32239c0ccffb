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
import shlex  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from captum_gndi.zoo.polarity_lm import (  # noqa: E402
    POLARITY_LM_DIR,
    TRAINING_FILE,
    train_polarity_lm,
)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


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
