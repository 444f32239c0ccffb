"""Tests of captum_gndi.zoo: model definitions, checkpoint loading and data loaders."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from captum_gndi.zoo import (
    CAPTUM_CIFAR_MEAN,
    CAPTUM_CIFAR_STD,
    CIFAR10_CLASSES,
    CIFAR_RESNET_MEAN,
    CIFAR_RESNET_STD,
    MODEL_NAMES,
    CaptumCifarNet,
    CifarResNet,
    DigitsResNet,
    PadShortcut,
    captum_cifar_cnn,
    cifar10_classes,
    cifar10_loader,
    cifar_resnet,
    digits_resnet,
    get_model,
    load_cifar10,
    load_digits_dataset,
    normalize_images,
    resnet18_cifar,
    shared_data_dir,
    train_digits_resnet,
)

# Clean accuracy (%) on the 1,017 exact test images, from ../shared/data/README.md.
README_ACCURACY = {20: 91.6, 32: 92.8, 44: 93.4, 56: 92.7}
CHECKPOINTS = {
    20: "resnet20-12fca82f.th",
    32: "resnet32-d509ac18.th",
    44: "resnet44-014dd654.th",
    56: "resnet56-4bfd9763.th",
}


@pytest.fixture(scope="module")
def cifar_dir(shared_data: Path) -> Path:
    return shared_data / "cifar10"


@pytest.fixture(scope="module")
def npz(cifar_dir: Path) -> dict[str, np.ndarray]:
    with np.load(cifar_dir / "cifar10_exact_raw_prefixes.npz") as data:
        return {k: data[k] for k in data.files}


@torch.no_grad()
def _accuracy(model: nn.Module, loader: torch.utils.data.DataLoader) -> float:
    correct = sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
    return 100.0 * correct / len(loader.dataset)


def _fake_cifar_batch(rng: np.random.Generator, n: int) -> dict[bytes, object]:
    return {
        b"batch_label": b"fake",
        b"labels": rng.integers(0, 10, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"x.png"] * n,
    }


def _write_pickle(path: Path, obj: object) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f)


# ----------------------------------------------------------------------------- CIFAR ResNets


def test_parameter_counts_match_hand_derivation():
    # Per depth 6n+2: stem 3*16*9 + 32 (bn) = 464; linear 64*10 + 10 = 650.
    # layer1: n * (2 * 16*16*9 + 2*32) = 4672 n.
    # layer2: (16*32*9 + 32*32*9 + 128) + (n-1) * (2 * 32*32*9 + 128) = 13952 + 18560 (n-1).
    # layer3: (32*64*9 + 64*64*9 + 256) + (n-1) * (2 * 64*64*9 + 256) = 55552 + 73984 (n-1).
    # Total = 97216 n - 21926: n=3 -> 269,722 (0.27M), n=9 -> 853,018 (0.85M).
    assert sum(p.numel() for p in cifar_resnet(20).parameters()) == 269_722
    assert sum(p.numel() for p in cifar_resnet(56).parameters()) == 853_018


def test_cifar_resnet_structure_and_eval_mode():
    model = cifar_resnet(20)
    assert not model.training
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [3, 3, 3]
    names = dict(model.named_modules())
    assert isinstance(names["layer2.0.shortcut"], PadShortcut)
    assert isinstance(names["layer2.1.shortcut"], nn.Identity)
    assert not list(names["layer2.0.shortcut"].parameters())
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        cifar_resnet(21)


@pytest.mark.parametrize(
    "block_path, build",
    [
        ("layer2.0", lambda: cifar_resnet(20)),
        ("layer2.0", lambda: digits_resnet(width=4)),
        ("layer3.0", resnet18_cifar),
    ],
)
def test_bn2_is_the_branch_and_block_output_is_the_sum(block_path, build):
    model = build()
    block = model.get_submodule(block_path)
    shortcut = block.downsample if hasattr(block, "downsample") else block.shortcut
    seen = {}
    block.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out))
    block.bn2.register_forward_hook(lambda m, args, out: seen.update(branch=out))
    size = 8 if isinstance(model, DigitsResNet) else 32
    channels = 1 if isinstance(model, DigitsResNet) else 3
    with torch.no_grad():
        model(torch.randn(2, channels, size, size))
        # An inplace addition would have overwritten the captured branch with the sum.
        expected = torch.relu(seen["branch"] + shortcut(seen["x"]))
    torch.testing.assert_close(seen["out"], expected)
    assert not torch.equal(seen["branch"], seen["out"])


@pytest.mark.shared_data
@pytest.mark.parametrize("depth", sorted(CHECKPOINTS))
def test_checkpoint_loads_strictly_and_matches_readme_accuracy(shared_data, cifar_dir, depth):
    path = shared_data / "cifar_resnets" / CHECKPOINTS[depth]
    model = cifar_resnet(depth, weights=path)
    raw = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    fresh = CifarResNet((depth - 2) // 6)
    fresh.load_state_dict({k.removeprefix("module."): v for k, v in raw.items()}, strict=True)
    assert not model.training
    loader = cifar10_loader(cifar_dir, exact=True, batch_size=256, normalize="resnet")
    assert len(loader.dataset) == 1017
    assert _accuracy(model, loader) == pytest.approx(README_ACCURACY[depth], abs=0.15)


@pytest.mark.shared_data
def test_wrong_depth_checkpoint_names_its_depth(shared_data):
    with pytest.raises(ValueError, match="looks like a resnet56.*cifar_resnet\\(56"):
        cifar_resnet(20, weights=shared_data / "cifar_resnets" / CHECKPOINTS[56])


# ----------------------------------------------------------------------------- weights


def test_weights_from_local_path_dataparallel_layout(tmp_path):
    source = cifar_resnet(20)
    path = tmp_path / "ckpt.th"
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state, "best_prec1": 90.0}, path)
    loaded = cifar_resnet(20, weights=str(path))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))
    plain = cifar_resnet(20, weights=source.state_dict())
    torch.testing.assert_close(plain.linear.weight, source.linear.weight)


def test_weight_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.th"):
        cifar_resnet(20, weights=tmp_path / "nope.th")
    corrupt = tmp_path / "corrupt.th"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="corrupt or not a PyTorch checkpoint"):
        cifar_resnet(20, weights=corrupt)
    listing = tmp_path / "list.pt"
    torch.save([1, 2, 3], listing)
    with pytest.raises(ValueError, match="holds no state dict"):
        captum_cifar_cnn(weights=listing)
    wrong_depth = tmp_path / "r32.th"
    torch.save({"state_dict": cifar_resnet(32).state_dict()}, wrong_depth)
    with pytest.raises(ValueError, match="looks like a resnet32"):
        cifar_resnet(44, weights=wrong_depth)
    with pytest.raises(ValueError, match="does not fit captum-cifar-cnn: .*unexpected keys"):
        captum_cifar_cnn(weights=cifar_resnet(20).state_dict())


# ----------------------------------------------------------------------------- other models


def test_resnet18_cifar_matches_torchvision_keys():
    torchvision = pytest.importorskip("torchvision")
    model = resnet18_cifar()
    reference = torchvision.models.resnet18(num_classes=10).state_dict()
    assert {k: v.shape for k, v in model.state_dict().items() if k != "conv1.weight"} == {
        k: v.shape for k, v in reference.items() if k != "conv1.weight"
    }
    assert model.conv1.weight.shape == (64, 3, 3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    # torchvision's 11,689,512 minus 7x7->3x3 stem (9408 - 1728) minus fc 1000->10 classes.
    assert sum(p.numel() for p in model.parameters()) == 11_689_512 - 7_680 - 507_870
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    resnet18_cifar(weights=model.state_dict())


def test_captum_cnn_modules():
    model = captum_cifar_cnn()
    names = dict(model.named_children())
    assert [n for n in names if n.startswith("relu")] == ["relu1", "relu2", "relu3", "relu4"]
    assert len({id(names[f"relu{i}"]) for i in range(1, 5)}) == 4
    assert CAPTUM_CIFAR_MEAN == CAPTUM_CIFAR_STD == (0.5, 0.5, 0.5)


@pytest.mark.shared_data
def test_captum_cnn_loads_strictly_and_accuracy(shared_data, cifar_dir):
    path = shared_data / "cifar_resnets" / "captum_cifar_torchvision.pt"
    CaptumCifarNet().load_state_dict(torch.load(path, weights_only=True), strict=True)
    model = captum_cifar_cnn(weights=path)
    loader = cifar10_loader(cifar_dir, exact=True, normalize="captum")
    # Measured: 605 / 1017 = 59.49 % (README: about 59.5 %).
    assert _accuracy(model, loader) == pytest.approx(59.5, abs=2.0)


def test_get_model_names_and_errors():
    assert set(MODEL_NAMES) == {
        "cifar-resnet20",
        "cifar-resnet32",
        "cifar-resnet44",
        "cifar-resnet56",
        "cifar-resnet18",
        "captum-cifar-cnn",
        "digits-resnet",
    }
    assert len(get_model("cifar-resnet44").layer1) == 7
    assert isinstance(get_model("captum-cifar-cnn"), CaptumCifarNet)
    assert isinstance(get_model("digits-resnet"), DigitsResNet)
    weights = cifar_resnet(32).state_dict()
    torch.testing.assert_close(
        get_model("cifar-resnet32", weights).linear.bias, weights["linear.bias"]
    )
    with pytest.raises(ValueError, match="did you mean .*cifar-resnet20.*known models: "):
        get_model("cifar-resnet2O")


# ----------------------------------------------------------------------------- CIFAR-10 data


def test_shared_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CAPTUM_GNDI_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path


@pytest.mark.shared_data
def test_load_cifar10_shared_test_split(cifar_dir, npz):
    test = load_cifar10(cifar_dir, normalize=None)
    images, labels = test.tensors
    assert images.shape == (10_000, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert torch.bincount(labels).tolist() == [1000] * 10
    assert torch.equal(labels[:1017], torch.from_numpy(npz["test_batch_labels"]).long())
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert cifar10_classes(cifar_dir) == CIFAR10_CLASSES


@pytest.mark.shared_data
def test_exact_prefix_pixels_roundtrip(cifar_dir, npz):
    exact = load_cifar10(cifar_dir, exact=True, normalize="resnet")
    mean = torch.tensor(CIFAR_RESNET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_RESNET_STD).view(1, 3, 1, 1)
    pixels = (exact.tensors[0] * std + mean) * 255
    expected = torch.from_numpy(npz["test_batch_data"].reshape(-1, 3, 32, 32)).float()
    assert torch.allclose(pixels, expected, atol=1e-3)
    assert torch.equal(exact.tensors[1], torch.from_numpy(npz["test_batch_labels"]).long())
    # The JPEG-derived pickles are close to, not equal to, the exact pixels (README: ~30 dB).
    jpeg = load_cifar10(cifar_dir, limit=1017, normalize=None).tensors[0] * 255
    psnr = 10 * torch.log10(255.0**2 / ((jpeg - expected) ** 2).mean())
    assert 25 < psnr < 40


@pytest.mark.shared_data
def test_both_folder_forms_and_train_split(cifar_dir):
    a = load_cifar10(cifar_dir, limit=7)
    b = load_cifar10(cifar_dir / "cifar-10-batches-py", limit=7)
    assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])
    exact = load_cifar10(cifar_dir / "cifar-10-batches-py", exact=True, limit=3)
    assert len(exact) == 3
    # Only data_batch_1 and data_batch_2 are shared: 20,000 training images.
    train = load_cifar10(cifar_dir, split="train", limit=10_005, normalize="captum")
    assert len(train) == 10_005
    assert train.tensors[0].min() >= -1.0 and train.tensors[0].max() <= 1.0
    loader = cifar10_loader(cifar_dir, batch_size=64, limit=100)
    assert [len(y) for _, y in loader] == [64, 36]


def test_load_cifar10_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="CIFAR-10 folder not found"):
        load_cifar10(tmp_path / "missing")
    with pytest.raises(
        FileNotFoundError, match="no CIFAR-10 test batches in .*expected .*test_batch"
    ):
        load_cifar10(tmp_path)
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 train batches"):
        load_cifar10(tmp_path, split="train")
    with pytest.raises(FileNotFoundError, match="exact=True needs cifar10_exact_raw_prefixes.npz"):
        load_cifar10(tmp_path, exact=True)
    with pytest.raises(ValueError, match="split must be"):
        load_cifar10(tmp_path, split="val")
    with pytest.raises(ValueError, match="normalize must be one of"):
        normalize_images(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), "imagenet")


def test_fake_cifar_folder_any_path(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "my_cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {
        name: _fake_cifar_batch(rng, n)
        for name, n in [("test_batch", 5), ("data_batch_1", 4), ("data_batch_3", 3)]
    }
    for name, batch in batches.items():
        _write_pickle(folder / name, batch)
    names = [b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h", b"i", b"j"]
    _write_pickle(folder / "batches.meta", {b"label_names": names})

    test = load_cifar10(tmp_path / "my_cifar", normalize=None)
    expected = batches["test_batch"][b"data"].reshape(5, 3, 32, 32)
    assert torch.equal((test.tensors[0] * 255).round().to(torch.uint8), torch.from_numpy(expected))
    assert test.tensors[1].tolist() == batches["test_batch"][b"labels"]

    train = load_cifar10(folder, split="train", normalize=None)
    labels = batches["data_batch_1"][b"labels"] + batches["data_batch_3"][b"labels"]
    assert train.tensors[1].tolist() == labels
    assert cifar10_classes(folder) == tuple("abcdefghij")

    # Exact prefixes stored channels-last are transposed to NCHW.
    hwc = expected.transpose(0, 2, 3, 1)
    np.savez(
        tmp_path / "my_cifar" / "cifar10_exact_raw_prefixes.npz",
        test_batch_data=hwc,
        test_batch_labels=np.arange(5, dtype=np.uint8),
    )
    exact = load_cifar10(folder, exact=True, normalize=None)
    assert torch.equal((exact.tensors[0] * 255).round().to(torch.uint8), torch.from_numpy(expected))
    assert exact.tensors[1].tolist() == [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------- digits


def test_digits_dataset_splits():
    train, test, full = (load_digits_dataset(s) for s in ("train", "test", "all"))
    assert train.tensors[0].shape == (1347, 1, 8, 8) and test.tensors[0].shape == (450, 1, 8, 8)
    assert len(full) == 1797 and full.tensors[0].dtype == torch.float32
    assert full.tensors[0].min() == 0.0 and full.tensors[0].max() == 1.0
    assert torch.equal(load_digits_dataset("test").tensors[0], test.tensors[0])
    assert not torch.equal(load_digits_dataset("test", seed=1).tensors[1], test.tensors[1])
    per_class = torch.bincount(full.tensors[1])
    in_test = torch.bincount(test.tensors[1])
    assert torch.equal(torch.bincount(train.tensors[1]) + in_test, per_class)
    assert ((in_test - 0.25 * per_class).abs() <= 1).all()  # stratified split
    with pytest.raises(ValueError, match="split must be"):
        load_digits_dataset("validation")


def test_digits_resnet_shape():
    model = digits_resnet(width=8)
    branches = [n for n, m in model.named_modules() if n.endswith("bn2")]
    assert len(branches) == 8
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert isinstance(model.layer2[0].shortcut, nn.Sequential)
    assert isinstance(model.layer4[1].shortcut, nn.Identity)


@pytest.mark.slow
def test_train_digits_resnet_accuracy():
    model, accuracy = train_digits_resnet(seed=0)
    assert not model.training
    assert accuracy >= 0.9
    test = load_digits_dataset("test")
    with torch.no_grad():
        recomputed = (model(test.tensors[0]).argmax(1) == test.tensors[1]).float().mean().item()
    assert recomputed == pytest.approx(accuracy)
