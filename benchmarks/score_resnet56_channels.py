"""Score every channel of the 27 residual branches of the trained CIFAR ResNet-56 on the 10,000
CIFAR-10 test images with ``compute_gndi(..., granularity="channel")``, and time it.

Usage::

    python benchmarks/score_resnet56_channels.py --target none --out results.json

Prints the wall time, the options and the ten most important channels, and writes the
per-channel scores (mean and standard error per branch) to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from captum_gndi import compute_gndi
from captum_gndi.adapters import find_layers
from captum_gndi.zoo import cifar10_loader, cifar_resnet

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED / "cifar10")
    parser.add_argument(
        "--weights", type=Path, default=SHARED / "cifar_resnets" / "resnet56-4bfd9763.th"
    )
    parser.add_argument("--target", choices=["none", "label"], default="none")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--limit", type=int, default=None, help="score only the first images")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    model = cifar_resnet(56, weights=args.weights).eval()
    layers = find_layers(model, "branch")  # the 27 bn2 outputs: zeroing one skips its block
    loader = cifar10_loader(args.data, split="test", batch_size=args.batch_size, limit=args.limit)
    start = time.perf_counter()
    result = compute_gndi(
        model,
        loader,
        layers,
        target=None if args.target == "none" else "label",
        granularity="channel",
    )
    seconds = time.perf_counter() - start
    channels = [
        (float(score), name, c)
        for name in result.names
        for c, score in enumerate(result.mean[name].tolist())
    ]
    summary = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "wall_s": seconds,
        "n_examples": result.n_examples,
        "n_channels": len(channels),
        "settings": result.settings,
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "loadavg_at_end": os.getloadavg(),
        "top_channels": [
            f"{name}[{c}]: {score:.4g}" for score, name, c in sorted(channels)[::-1][:10]
        ],
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**summary, "result": result.to_dict()}) + "\n")


if __name__ == "__main__":
    main()
