"""Train the paper's ResNet-18: CIFAR-style ResNet-18, 7 epochs on 10% of CIFAR-10's training set.

The public code behind the G-NDI paper validated on a ResNet-18 trained for 7 epochs on 10% of the
CIFAR-10 training data (reported 68.36% test accuracy). This script reproduces that setting on the
shared CIFAR-10 copy: a seeded random subset of 5,000 training images (10% of CIFAR-10's 50,000;
drawn from the 20,000 training images present in the shared folder), random-crop + flip
augmentation, SGD with momentum and a one-cycle learning-rate schedule.

Usage (about half an hour on 2 CPU cores)::

    nice -n 10 .venv/bin/python experiments/train_resnet18_paper.py \
        --data-dir ../shared/data/cifar10 --out runs/resnet18_paper.pt

The checkpoint is a plain state dict of :func:`captum_gndi.zoo.resnet18_cifar`; a JSON file next to
it records the settings and the test accuracy (on the 1,017 exact test images and on the full
JPEG-derived test batch).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from captum_gndi.zoo import load_cifar10, resnet18_cifar, shared_data_dir


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 32x32 crop of the 4-pixel zero-padded image and a random horizontal flip."""
    n = images.shape[0]
    padded = F.pad(images, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=generator)
    dy = torch.randint(0, 9, (n,), generator=generator)
    crops = torch.stack([padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32] for i in range(n)])
    flip = torch.rand(n, generator=generator) < 0.5
    crops[flip] = crops[flip].flip(-1)
    return crops


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: TensorDataset, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on ``data``."""
    correct = 0
    for images, labels in DataLoader(data, batch_size=batch_size):
        correct += int((model(images).argmax(1) == labels).sum())
    return correct / len(data)


def main() -> None:
    default_data = shared_data_dir()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        default=str(default_data / "cifar10") if default_data else None,
        help="CIFAR-10 folder (python layout); default: the shared data folder",
    )
    parser.add_argument("--out", default="runs/resnet18_paper.pt", help="checkpoint path")
    parser.add_argument("--epochs", type=int, default=7)
    parser.add_argument("--n-train", type=int, default=5000, help="10%% of CIFAR-10's 50,000")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.data_dir is None:
        parser.error("no shared data folder found; pass --data-dir")

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    train = load_cifar10(args.data_dir, split="train")
    subset = torch.randperm(len(train), generator=generator)[: args.n_train]
    images, labels = train.tensors[0][subset], train.tensors[1][subset]

    model = resnet18_cifar()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    steps_per_epoch = -(-args.n_train // args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch
    )
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(args.n_train, generator=generator)
        total = 0.0
        for step in range(steps_per_epoch):
            batch = order[step * args.batch_size : (step + 1) * args.batch_size]
            x, y = augment(images[batch], generator), labels[batch]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(batch)
        elapsed = time.perf_counter() - start
        print(f"epoch {epoch + 1}: loss {total / args.n_train:.4f} ({elapsed:.0f} s)", flush=True)
    model.eval()

    exact = load_cifar10(args.data_dir, split="test", exact=True)
    full = load_cifar10(args.data_dir, split="test")
    result = {
        "settings": vars(args),
        "test_accuracy_exact_1017": accuracy(model, exact),
        "test_accuracy_jpeg_10000": accuracy(model, full),
        "train_seconds": time.perf_counter() - start,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
