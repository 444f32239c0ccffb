"""CIFAR-10 from the python pickle layout in any folder, and the project's shared data folder."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from captum_gndi.zoo.captum_cnn import CAPTUM_CIFAR_MEAN, CAPTUM_CIFAR_STD
from captum_gndi.zoo.cifar_resnet import CIFAR_RESNET_MEAN, CIFAR_RESNET_STD

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_EXACT_PREFIXES",
    "NORMALIZATIONS",
    "Normalization",
    "cifar10_classes",
    "cifar10_loader",
    "load_cifar10",
    "normalize_images",
    "shared_data_dir",
]

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
"""CIFAR-10 class names in label order (as in ``batches.meta``)."""

CIFAR10_EXACT_PREFIXES = "cifar10_exact_raw_prefixes.npz"
"""File name of the exact-pixel prefixes in the shared data folder (see its README)."""

NORMALIZATIONS = {
    "resnet": (CIFAR_RESNET_MEAN, CIFAR_RESNET_STD),
    "captum": (CAPTUM_CIFAR_MEAN, CAPTUM_CIFAR_STD),
}
"""Per-channel ``(mean, std)`` of each supported input convention."""

Normalization = Optional[Literal["resnet", "captum"]]
Split = Literal["test", "train"]
_BATCHES_DIR = "cifar-10-batches-py"
_EXPECTED = "test_batch, data_batch_1..5 and batches.meta"


def shared_data_dir() -> Path | None:
    """Locate the project's shared data folder.

    Returns:
        ``$CAPTUM_GNDI_DATA`` if that variable is set (whether or not it exists), else
        ``<repo root>/../shared/data`` if it exists, else ``None``.

    Examples:
        >>> root = shared_data_dir()
        >>> test = load_cifar10(root / "cifar10", exact=True) if root else None
    """
    env = os.environ.get("CAPTUM_GNDI_DATA")
    if env:
        return Path(env).expanduser()
    candidate = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def _batches_dir(root: Union[str, os.PathLike]) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"CIFAR-10 folder not found: {root}; pass the folder that holds {_BATCHES_DIR}/"
        )
    nested = root / _BATCHES_DIR
    return nested if nested.is_dir() else root


def _unpickle(path: Path) -> dict[str, object]:
    with path.open("rb") as f:
        raw = pickle.load(f, encoding="bytes")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}


def _batch_files(folder: Path, split: Split) -> list[Path]:
    if split == "test":
        files = [folder / "test_batch"] if (folder / "test_batch").is_file() else []
    else:
        numbered = (
            p for p in folder.glob("data_batch_*") if re.fullmatch(r"data_batch_\d+", p.name)
        )
        files = sorted(numbered, key=lambda p: int(p.name.rsplit("_", 1)[1]))
    if not files:
        raise FileNotFoundError(
            f"no CIFAR-10 {split} batches in {folder}: expected the python layout ({_EXPECTED}) "
            f"there or in its {_BATCHES_DIR}/ subfolder"
        )
    return files


def _to_nchw(data: np.ndarray, source: str) -> np.ndarray:
    if data.ndim == 2 and data.shape[1] == 3072:
        return data.reshape(-1, 3, 32, 32)
    if data.ndim == 4 and data.shape[1:] == (3, 32, 32):
        return data
    if data.ndim == 4 and data.shape[1:] == (32, 32, 3):
        return data.transpose(0, 3, 1, 2)
    raise ValueError(
        f"{source}: image array of shape {data.shape} is not (N, 3072), (N, 3, 32, 32) or "
        "(N, 32, 32, 3)"
    )


def _read_pickles(root: Union[str, os.PathLike], split: Split, limit: int | None):
    images, labels, count = [], [], 0
    for path in _batch_files(_batches_dir(root), split):
        if limit is not None and count >= limit:
            break
        batch = _unpickle(path)
        images.append(_to_nchw(np.asarray(batch["data"], dtype=np.uint8), str(path)))
        labels.append(np.asarray(batch["labels"], dtype=np.int64))
        count += len(labels[-1])
    return images, labels


def _read_exact(root: Union[str, os.PathLike], split: Split, limit: int | None):
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"CIFAR-10 folder not found: {root}; pass the shared cifar10 folder"
        )
    candidates = [root / CIFAR10_EXACT_PREFIXES, root.parent / CIFAR10_EXACT_PREFIXES]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(
            f"exact=True needs {CIFAR10_EXACT_PREFIXES} in {root} or its parent; "
            "pass the shared cifar10 folder or use exact=False"
        )
    with np.load(path) as npz:
        if split == "test":
            names = ["test_batch"]
        else:
            found = (
                m.group(1) for k in npz.files if (m := re.fullmatch(r"(data_batch_\d+)_data", k))
            )
            names = sorted(found, key=lambda n: int(n.rsplit("_", 1)[1]))
        if not names or f"{names[0]}_data" not in npz.files:
            raise ValueError(f"{path} holds no {split} images (keys: {', '.join(npz.files)})")
        images = [_to_nchw(npz[f"{n}_data"], f"{path}[{n}_data]") for n in names]
        labels = [npz[f"{n}_labels"].astype(np.int64) for n in names]
    return images, labels


def normalize_images(images: Tensor, normalize: Normalization = "resnet") -> Tensor:
    """Scale uint8 images to [0, 1] floats and apply a named per-channel normalisation.

    Args:
        images: ``(N, 3, H, W)`` uint8 tensor.
        normalize: ``"resnet"`` (the akamaster checkpoints' convention), ``"captum"`` (Captum's
            tutorial CNN) or ``None`` for plain [0, 1] pixels.

    Returns:
        A float32 tensor of the same shape.

    Examples:
        >>> normalize_images(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8), "captum").max()
        tensor(1.)
    """
    x = images.float() / 255.0
    if normalize is None:
        return x
    if normalize not in NORMALIZATIONS:
        raise ValueError(
            f"normalize must be one of {sorted(NORMALIZATIONS)} or None, got {normalize!r}"
        )
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATIONS[normalize])
    return (x - mean) / std


def load_cifar10(
    root: Union[str, os.PathLike],
    split: Split = "test",
    exact: bool = False,
    limit: int | None = None,
    normalize: Normalization = "resnet",
) -> TensorDataset:
    """Load CIFAR-10 images and labels into memory.

    Reads the standard python layout (pickles with byte-string keys) from any folder. Only load
    pickles from sources you trust.

    Args:
        root: The folder that contains ``cifar-10-batches-py/``, or that folder itself. With
            ``exact=True``: a folder holding ``cifar10_exact_raw_prefixes.npz``, or whose parent
            holds it.
        split: ``"test"`` (``test_batch``) or ``"train"`` (every ``data_batch_N`` present, in
            order).
        exact: Read the exact original pixels of the first 1,017 images of each batch from
            ``cifar10_exact_raw_prefixes.npz`` instead of the pickles.
        limit: Keep only the first ``limit`` images.
        normalize: ``"resnet"``, ``"captum"`` or ``None``; see :func:`normalize_images`.

    Returns:
        ``TensorDataset(images, labels)`` with float32 images ``(N, 3, 32, 32)`` and int64 labels.

    Raises:
        FileNotFoundError: If the folder does not exist or holds no CIFAR-10 files for ``split``.
        ValueError: For an unknown ``split`` or ``normalize``.

    Examples:
        >>> test = load_cifar10("../shared/data/cifar10", exact=True)
        >>> len(test), test.tensors[0].shape[1:]
        (1017, torch.Size([3, 32, 32]))
    """
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    images, labels = (_read_exact if exact else _read_pickles)(root, split, limit)
    x = torch.from_numpy(np.ascontiguousarray(np.concatenate(images)[:limit]))
    y = torch.from_numpy(np.concatenate(labels)[:limit])
    return TensorDataset(normalize_images(x, normalize), y)


def cifar10_loader(
    root: Union[str, os.PathLike],
    split: Split = "test",
    batch_size: int = 256,
    shuffle: bool = False,
    exact: bool = False,
    limit: int | None = None,
    normalize: Normalization = "resnet",
    num_workers: int = 0,
) -> DataLoader:
    """Wrap :func:`load_cifar10` in a ``DataLoader``.

    Args:
        root: See :func:`load_cifar10`.
        split: ``"test"`` or ``"train"``.
        batch_size: Images per batch.
        shuffle: Shuffle each epoch (off by default, so batches are reproducible).
        exact: See :func:`load_cifar10`.
        limit: See :func:`load_cifar10`.
        normalize: See :func:`load_cifar10`.
        num_workers: ``DataLoader`` worker processes.

    Returns:
        A ``DataLoader`` yielding ``(images, labels)``.

    Examples:
        >>> images, labels = next(iter(cifar10_loader("../shared/data/cifar10", batch_size=8)))
    """
    dataset = load_cifar10(root, split=split, exact=exact, limit=limit, normalize=normalize)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers)


def cifar10_classes(root: Union[str, os.PathLike, None] = None) -> tuple[str, ...]:
    """Class names from ``batches.meta`` when present, else :data:`CIFAR10_CLASSES`.

    Args:
        root: A CIFAR-10 folder (either form accepted by :func:`load_cifar10`), or ``None``.

    Returns:
        The ten class names in label order.

    Examples:
        >>> cifar10_classes("../shared/data/cifar10")[:2]
        ('airplane', 'automobile')
    """
    if root is not None:
        root = Path(root).expanduser()
        meta = (root / _BATCHES_DIR if (root / _BATCHES_DIR).is_dir() else root) / "batches.meta"
        if meta.is_file():
            names = _unpickle(meta)["label_names"]
            return tuple(n.decode() if isinstance(n, bytes) else n for n in names)
    return CIFAR10_CLASSES
