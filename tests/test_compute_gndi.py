"""compute_gndi over a data set: equals per-batch LayerGNDI, mean baselines, result API."""

from __future__ import annotations

import json

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_gndi import GNDIResult, LayerGNDI, compute_gndi, mean_activations


def make_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    return model.double().eval()


def make_loader(n: int = 23, batch_size: int = 5) -> DataLoader:
    torch.manual_seed(1)
    data = TensorDataset(torch.randn(n, 6, dtype=torch.float64), torch.randint(0, 4, (n,)))
    return DataLoader(data, batch_size=batch_size)


def test_equals_mean_of_per_example_attribute():
    model, loader = make_model(), make_loader()
    layers = {"fc1": model[0], "tanh": model[1], "fc2": model[2]}
    result = compute_gndi(model, loader, layers, progress=False)
    x, y = loader.dataset.tensors
    per_example = LayerGNDI(model, list(layers.values())).attribute(x)
    assert result.n_examples == 23
    for name, scores in zip(layers, per_example):
        torch.testing.assert_close(result.mean[name], scores.mean())
        torch.testing.assert_close(result.stderr[name], scores.std() / 23**0.5)
    labelled = compute_gndi(model, loader, layers, target="label", progress=False)
    per_label = LayerGNDI(model, layers["fc2"]).attribute(x, target=y)
    torch.testing.assert_close(labelled.mean["fc2"], per_label.mean())


def test_mean_baseline_is_the_data_set_mean_activation():
    model, loader = make_model(), make_loader()
    x = loader.dataset.tensors[0]
    layers = {"fc2": model[2]}
    means = mean_activations(model, loader, layers, progress=False)
    expected_mean = model[:3](x).mean(0)
    torch.testing.assert_close(means["fc2"], expected_mean)
    result = compute_gndi(model, loader, layers, baseline="mean", progress=False)
    per_example = LayerGNDI(model, model[2]).attribute(x, layer_baselines=expected_mean)
    torch.testing.assert_close(result.mean["fc2"], per_example.mean())
    zero = compute_gndi(model, loader, layers, baseline="zero", progress=False)
    assert not torch.allclose(zero.mean["fc2"], result.mean["fc2"])


def test_dotted_names_tensor_batches_and_max_batches():
    model = make_model()
    batches = [torch.randn(4, 6, dtype=torch.float64) for _ in range(3)]
    result = compute_gndi(model, iter(batches), ["0", "2"], max_batches=2, progress=False)
    assert result.names == ["0", "2"] and result.n_examples == 8
    expected = LayerGNDI(model, model[0]).attribute(torch.cat(batches[:2])).mean()
    torch.testing.assert_close(result.mean["0"], expected)


def test_result_ranking_table_and_dict():
    model, loader = make_model(), make_loader()
    result = compute_gndi(model, loader, {"a": model[0], "b": model[2]}, norm="l1", progress=False)
    assert isinstance(result, GNDIResult)
    scores = result.layer_scores()
    assert result.ranking() == sorted(scores, key=lambda k: -scores[k])
    table = str(result)
    assert "rank" in table and "a" in table and "p=1.0" in table
    as_dict = json.loads(json.dumps(result.to_dict()))
    assert as_dict["n_examples"] == 23
    assert as_dict["layers"][result.ranking()[0]]["rank"] == 1
