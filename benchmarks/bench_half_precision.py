"""The measurement behind the half-precision tolerance of tests/test_precision.py and
docs/benchmarks.md: the trained polarity LM (``zoo.load_polarity_lm``) in float32, bfloat16 and
float16, every position x head of its 4 layers on two 8-token sentences, next-token logits of
the first 16 vocabulary entries (the test's setting), L2 and Fisher norms, forward and reverse
mode. Printed per setting: the largest score difference against float32 as a share of the
largest float32 score.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_half_precision.py \\
        --out benchmarks/results/half_precision_polarity_lm.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_precision import CLASSES, SENTENCES, head_scores  # noqa: E402

from captum_gndi import zoo  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    lm, tokenizer = zoo.load_polarity_lm()
    ids = torch.tensor([tokenizer(s)["input_ids"][:8] for s in SENTENCES])
    rows = []
    for dtype in (torch.bfloat16, torch.float16):
        half = copy.deepcopy(lm).to(dtype)
        for norm in (2, "fisher"):
            for mode in ("reverse", "forward"):
                exact = head_scores(lm, ids, norm=norm, mode=mode)
                approximate = head_scores(half, ids, norm=norm, mode=mode)
                error = ((approximate - exact).abs().max() / exact.abs().max()).item()
                rows.append({"dtype": str(dtype), "norm": norm, "mode": mode, "error": error})
                print(f"{dtype} norm={norm} mode={mode}: max |diff| / max score = {error:.5f}")
    if args.out is not None:
        setting = {"model": "polarity LM", "tokens": list(ids.shape), "classes": CLASSES}
        args.out.write_text(json.dumps({"setting": setting, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
