"""Masks against the physical model on the torchvision families (random weights, no download).

For ResNet-50, MobileNetV3-Large, EfficientNet-B0, ConvNeXt-Tiny and ViT-B/16 (random weights;
ConvNeXt's layer scales set to 0.5 and ViT's zero-initialised head drawn at random, so that the
outputs depend on the pruned channels): :func:`captum_gndi.pruning.find_prunable` with no
options, random channel scores (seed 0), 50% global sparsity, then the masked model against the
physically pruned one (:func:`captum_gndi.pruning.prune_physically`): channels kept per layer,
parameters and MACs of :func:`captum_gndi.pruning.pruning_report` against
``tp.utils.count_ops_and_params`` of the physical model, and the largest output difference
relative to the largest output.

Usage (a few CPU minutes)::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/pruning_families.py \\
        --out benchmarks/results/pruning_families.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch_pruning as tp
import torchvision
from torch import nn

from captum_gndi.pruning import (
    channel_masks,
    find_prunable,
    prune_physically,
    pruning_report,
    select_channels,
)


def _convnext() -> nn.Module:
    model = torchvision.models.convnext_tiny()
    for name, param in model.named_parameters():
        if name.endswith("layer_scale"):
            param.data.fill_(0.5)
    return model


def _vit() -> nn.Module:
    model = torchvision.models.vit_b_16()
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


FAMILIES = {
    "resnet50": (torchvision.models.resnet50, 64),
    "mobilenet_v3_large": (torchvision.models.mobilenet_v3_large, 64),
    "efficientnet_b0": (torchvision.models.efficientnet_b0, 64),
    "convnext_tiny": (_convnext, 64),
    "vit_b_16": (_vit, 224),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rows = []
    for name in args.families.split(","):
        build, size = FAMILIES[name]
        start = time.perf_counter()
        torch.manual_seed(0)
        model = build().eval()
        x = torch.randn(2, 3, size, size)
        layers = find_prunable(model, x)
        generator = torch.Generator().manual_seed(0)
        scores = {la.name: torch.rand(la.n_channels, generator=generator) for la in layers}
        keep = select_channels(scores, args.sparsity)
        small = prune_physically(model, x, layers, scores, args.sparsity)
        report = pruning_report(model, layers, keep, x)
        macs, params = tp.utils.count_ops_and_params(small, x[:1])
        with torch.no_grad(), channel_masks(model, layers, keep):
            masked = model(x)
            physical = small(x)
        row = {
            "family": name,
            "input": size,
            "layers": len(layers),
            "coupled_modules": sum(len(la.coupled) for la in layers),
            "channels": sum(la.n_channels for la in layers),
            "channels_kept_masks": sum(int(keep[la.name].sum()) for la in layers),
            "channels_kept_physical": sum(
                small.get_submodule(la.name).weight.shape[0] for la in layers
            ),
            "params_report": report.params_after,
            "params_tp": int(params),
            "macs_report": report.flops_after,
            "macs_tp": int(macs),
            "params_dense": report.params_before,
            "macs_dense": report.flops_before,
            "max_output_difference": float((masked - physical).abs().max()),
            "max_output": float(masked.abs().max()),
            "seconds": time.perf_counter() - start,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"sparsity": args.sparsity, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
