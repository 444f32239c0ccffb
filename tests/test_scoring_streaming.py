"""Specification of ``compute_gndi`` as a streaming reduction over a data set."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_gndi import LayerGNDI, compute_gndi


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    ).eval()


def dataset(n: int = 22) -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, 4, 4, generator=generator)
    y = torch.randint(0, 3, (n,), generator=generator)
    return TensorDataset(x, y)


LAYERS = ["1", "3"]  # dotted names of the BatchNorm and the second convolution


def per_example_scores(model, data, granularity, target):
    """Independent reference: LayerGNDI on each batch, concatenated over all examples."""
    layers = [model[1], model[3]]
    scores = [[], []]
    for x, y in data:
        batch_target = y if target == "label" else target
        result = LayerGNDI(model, layers).attribute(x, target=batch_target, granularity=granularity)
        for i, s in enumerate(result):
            scores[i].append(s)
    return [torch.cat(s) for s in scores]


@pytest.mark.parametrize("granularity", ["layer", "channel"])
@pytest.mark.parametrize("target", [None, "label"])
def test_generator_of_batches_equals_mean_of_per_batch_attributions(granularity, target):
    model, data = small_cnn(), dataset()
    batches = [(x, y) for x, y in DataLoader(data, batch_size=5)]  # 5, 5, 5, 5, 2

    def stream():
        yield from batches

    result = compute_gndi(
        model,
        stream(),
        {"1": model[1], "3": model[3]},
        target=target,
        granularity=granularity,
        progress=False,
    )
    expected = per_example_scores(model, batches, granularity, target)
    assert result.n_examples == 22
    for name, scores in zip(LAYERS, expected):
        torch.testing.assert_close(result.mean[name], scores.mean(0), rtol=1e-10, atol=0)
        stderr = scores.std(0) / len(scores) ** 0.5
        torch.testing.assert_close(result.stderr[name], stderr, rtol=1e-8, atol=1e-14)


def test_batches_are_released_as_the_stream_advances():
    """Constant memory: when batch i + 2 is requested, nothing holds batch i any more (freed by
    reference counting alone, no garbage collection needed)."""
    model, data = small_cnn(), dataset(40)
    alive: list[weakref.ref] = []

    def stream():
        for x, y in DataLoader(data, batch_size=4):
            if len(alive) >= 2:
                assert alive[-2]() is None, "an earlier batch is still referenced"
            alive.append(weakref.ref(x))
            yield x, y

    result = compute_gndi(model, stream(), LAYERS, granularity="channel", progress=False)
    assert result.n_examples == 40 and len(alive) == 10


def test_internal_batch_size_gives_the_same_result():
    model, data = small_cnn(), dataset()
    loader = DataLoader(data, batch_size=11)
    whole = compute_gndi(model, loader, LAYERS, target="label", progress=False)
    split = compute_gndi(
        model, loader, LAYERS, target="label", internal_batch_size=3, progress=False
    )
    assert split.n_examples == whole.n_examples == 22
    for name in LAYERS:
        torch.testing.assert_close(split.mean[name], whole.mean[name], rtol=1e-12, atol=0)
        torch.testing.assert_close(split.stderr[name], whole.stderr[name], rtol=1e-9, atol=0)


def test_max_batches_counts_batches():
    model, data = small_cnn(), dataset()
    loader = DataLoader(data, batch_size=4)
    result = compute_gndi(model, loader, LAYERS, max_batches=2, progress=False)
    first_eight = compute_gndi(model, [data.tensors[0][:8]], LAYERS, progress=False)
    assert result.n_examples == 8
    for name in LAYERS:
        torch.testing.assert_close(result.mean[name], first_eight.mean[name], rtol=1e-12, atol=0)


def test_mean_baseline_with_a_one_pass_iterator_is_refused_clearly():
    model, data = small_cnn(), dataset()
    with pytest.raises(ValueError, match="one-pass iterator"):
        compute_gndi(model, iter(DataLoader(data, batch_size=4)), LAYERS, baseline="mean")


class _NoJVP(torch.autograd.Function):
    """Doubling with a backward formula but no forward-AD (jvp) formula."""

    @staticmethod
    def forward(x):
        return 2 * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


class NoForwardAD(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 6)

    def forward(self, x):
        return self.b(_NoJVP.apply(torch.tanh(self.a(x))))


def test_auto_decides_once_and_falls_back_to_reverse_once():
    model = NoForwardAD().eval()  # 6 outputs > 1 layer: auto prefers forward, which fails
    x = torch.randn(9, 3)
    with pytest.warns(UserWarning, match="falling back to reverse") as record:
        result = compute_gndi(model, [x[:3], x[3:6], x[6:]], ["a"], progress=False)
    assert sum("falling back" in str(w.message) for w in record) == 1
    assert result.settings["mode"] == "reverse"
    expected = LayerGNDI(model, model.a).attribute(x, mode="reverse")
    torch.testing.assert_close(result.mean["a"], expected.mean(), rtol=1e-10, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_batches_are_moved_to_the_models_device():
    model, data = small_cnn(), dataset()
    loader = DataLoader(data, batch_size=8)  # CPU batches
    on_cpu = compute_gndi(model, loader, LAYERS, progress=False)
    on_gpu = compute_gndi(model.cuda(), loader, LAYERS, progress=False)
    for name in LAYERS:
        torch.testing.assert_close(on_gpu.mean[name].cpu(), on_cpu.mean[name], rtol=1e-6, atol=0)
