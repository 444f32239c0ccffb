"""The shared data plumbing (captum_gndi.runs) and the vocabulary's deprecated spellings."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
from captum.testing.helpers.basic_models import BasicModel_MultiLayer
from torch import nn

from captum_gndi import LayerGNDI, mean_activations
from captum_gndi.runs import (
    RunningMoments,
    batch_target,
    channel_count,
    check_norm,
    chunks,
    eval_mode,
    iterate_batches,
    model_device,
    split_batch,
    warn_if_training,
)

PACKAGE = Path(__file__).resolve().parents[1] / "captum_gndi"


def test_running_moments_match_numpy_mean_and_standard_error():
    values = torch.tensor([[1.0, 2.0], [3.0, 6.0], [8.0, 1.0]], dtype=torch.float64)
    moments = RunningMoments(["a"], torch.device("cpu"))
    moments.add("a", values[:2])
    moments.add("a", values[2:])
    mean, stderr, n = moments.reduce()
    assert n == 3
    torch.testing.assert_close(mean["a"], values.mean(0))
    torch.testing.assert_close(stderr["a"], values.std(0, unbiased=True) / math.sqrt(3))


def test_running_moments_without_data_is_a_clear_error():
    with pytest.raises(ValueError, match="no examples"):
        RunningMoments(["a"], torch.device("cpu")).reduce()


def test_split_batch_forms():
    x, y = torch.zeros(2, 3), torch.tensor([0, 1])
    assert split_batch(x) == ((x,), None)
    inputs, labels = split_batch((x, y))
    assert inputs == (x,) and labels is y
    inputs, labels = split_batch(((x, x), y))
    assert len(inputs) == 2 and labels is y
    with pytest.raises(TypeError, match="Cannot read a batch"):
        split_batch(3)


def test_iterate_batches_limits_and_rejects_empty_data():
    data = [torch.full((2, 1), float(i)) for i in range(5)]
    seen = [inputs[0][0, 0].item() for inputs, _ in iterate_batches(data, torch.device("cpu"), 3)]
    assert seen == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="no batches"):
        list(iterate_batches([], torch.device("cpu")))


def test_chunks_split_inputs_and_labels_alike():
    x, y = torch.arange(5.0)[:, None], torch.arange(5)
    parts = list(chunks((x,), y, 2))
    assert [p[0][0].shape[0] for p in parts] == [2, 2, 1]
    assert parts[2][1].tolist() == [4]


def test_channel_count_names_the_fix():
    assert channel_count((4, 3, 8, 8), 1) == 3
    assert channel_count((4, 7, 5), -1) == 5
    with pytest.raises(ValueError, match="dimension 0 indexes examples"):
        channel_count((4, 3), 0)
    with pytest.raises(ValueError, match="channel_dim=5"):
        channel_count((4, 3), 5, "fc")


def test_check_norm_names():
    assert check_norm("l1") == 1.0 and check_norm("L2") == 2.0 and check_norm("linf") == math.inf
    with pytest.raises(ValueError, match="not a norm"):
        check_norm(0.5)


def test_batch_target_label_and_predicted():
    model = nn.Linear(2, 3)
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 2, 0])
    assert batch_target(model, (x,), y, "label") is y
    assert batch_target(model, (x,), y, "predicted").tolist() == model(x).argmax(1).tolist()
    assert batch_target(model, (x,), y, 2) == 2
    with pytest.raises(ValueError, match="needs batches of"):
        batch_target(model, (x,), None, "label")


def test_data_parallel_looks_at_the_wrapped_module():
    inner = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).eval()
    wrapped = nn.DataParallel(inner)
    wrapped.training = True  # the wrapper's own flag does not decide
    with warnings_as_errors():
        warn_if_training(wrapped)
    inner.train()
    with pytest.warns(UserWarning, match="training mode: 1"):
        warn_if_training(nn.DataParallel(inner))
    assert model_device(wrapped) == torch.device("cpu")


def test_eval_mode_restores_each_submodule():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
    model[0].eval()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and not model[0].training and model[1].training


def test_attribute_p_is_a_deprecated_spelling_of_norm():
    model = BasicModel_MultiLayer().double().eval()
    x = torch.tensor([[3.0, 4.0, 0.0]], dtype=torch.float64)
    gndi = LayerGNDI(model, model.linear1)
    with pytest.warns(DeprecationWarning, match="norm="):
        old = gndi.attribute(x, p=1)
    torch.testing.assert_close(old, gndi.attribute(x, norm=1))
    torch.testing.assert_close(old, torch.tensor([48.0]).double())


def test_mean_activations_on_input_is_deprecated():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU()).eval()
    data = [torch.ones(3, 2)]
    with pytest.warns(DeprecationWarning, match="attribute_to_layer_input"):
        old = mean_activations(model, data, {"relu": model[1]}, progress=False, on_input=True)
    new = mean_activations(
        model, data, {"relu": model[1]}, progress=False, attribute_to_layer_input=True
    )
    torch.testing.assert_close(old["relu"], new["relu"])
    torch.testing.assert_close(new["relu"], model[0](torch.ones(1, 2))[0].detach())


def test_no_module_imports_another_modules_underscore_names():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            ours = isinstance(node, ast.ImportFrom) and (
                node.level > 0 or (node.module or "").startswith("captum_gndi")
            )
            if ours:
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private:
                    offenders.append(f"{path.relative_to(PACKAGE)}: {node.module} {private}")
    assert offenders == []


class warnings_as_errors:
    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
