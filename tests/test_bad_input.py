"""Every bad input gets a clear error, and the user's model is left exactly as it was."""

from __future__ import annotations

import copy

import pytest
import torch
from captum.testing.helpers.basic_models import BasicModel_MultiLayer, BasicModelWithReusedModules
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_gndi import InterventionError, LayerCall, LayerGNDI, compute_gndi


def snapshot(model: nn.Module) -> dict:
    return {
        "training": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "params": {name: p.detach().clone() for name, p in model.named_parameters()},
    }


def assert_untouched(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    for name, value in before["params"].items():
        assert torch.equal(after["params"][name], value), name
    for name, module in model.named_modules():
        assert not module._forward_hooks, f"hook left on {name}"
        assert not module._forward_pre_hooks, f"pre-hook left on {name}"
        assert not module._backward_hooks, f"backward hook left on {name}"
    for name, p in model.named_parameters():
        assert p.grad is None, f".grad accumulated on {name}"


@pytest.fixture
def model():
    return BasicModel_MultiLayer().double().eval()


@pytest.fixture
def x():
    return torch.tensor([[3.0, 4.0, 0.0], [1.0, -2.0, 0.5]], dtype=torch.float64)


def run_bad(model, call, error, match):
    before = snapshot(model)
    with pytest.raises(error, match=match):
        call()
    assert_untouched(model, before)


def test_layer_not_in_model(model, x):
    stranger = nn.Linear(3, 4)
    run_bad(
        model, lambda: LayerGNDI(model, stranger).attribute(x), InterventionError, "not a submodule"
    )


def test_layer_never_called(model, x):
    # linear1_alt exists but is only used with multi_input_module=True
    run_bad(
        model,
        lambda: LayerGNDI(model, model.linear1_alt).attribute(x),
        InterventionError,
        "never called",
    )


def test_layer_never_called_reverse_mode(model, x):
    run_bad(
        model,
        lambda: LayerGNDI(model, [model.linear1, model.linear1_alt]).attribute(x, mode="reverse"),
        InterventionError,
        "linear1_alt.*never called",
    )


def test_layer_called_twice_says_how_to_pick_one():
    model = BasicModelWithReusedModules().double().eval()
    x = torch.randn(2, 3, dtype=torch.float64)
    run_bad(
        model,
        lambda: LayerGNDI(model, model.relu).attribute(x),
        InterventionError,
        r"called 2 times.*LayerCall\(module, call_index=k\)",
    )
    run_bad(
        model,
        lambda: LayerGNDI(model, LayerCall(model.relu, 5)).attribute(x),
        InterventionError,
        "only 2 times",
    )


def test_hooks_removed_when_the_forward_raises(model, x):
    class Boom(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, t):
            self.inner(t)
            raise RuntimeError("boom")

    wrapper = Boom(model).eval()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        LayerGNDI(wrapper, model.linear1).attribute(x)
    assert_untouched(model, before)


def test_non_tensor_layer_output(x):
    class DictLayer(nn.Module):
        def forward(self, t):
            return {"out": t}

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.dict_layer = DictLayer()
            self.fc = nn.Linear(3, 2)

        def forward(self, t):
            return self.fc(self.dict_layer(t)["out"])

    model = Model().double().eval()
    run_bad(
        model,
        lambda: LayerGNDI(model, model.dict_layer).attribute(x),
        InterventionError,
        "is a dict, not a tensor",
    )


def test_integer_layer_output(x):
    class Quantize(nn.Module):
        def forward(self, t):
            return t.round().long()

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.quantize = Quantize()
            self.fc = nn.Linear(3, 2)

        def forward(self, t):
            return self.fc(self.quantize(t).double())

    model = Model().double().eval()
    run_bad(
        model,
        lambda: LayerGNDI(model, model.quantize).attribute(x),
        TypeError,
        "cannot be differentiated",
    )


def test_non_tensor_model_output(model, x):
    run_bad(
        model,
        lambda: LayerGNDI(lambda t: {"logits": model(t)}, model.linear1).attribute(x),
        TypeError,
        "returned a dict",
    )


def test_target_out_of_range(model, x):
    run_bad(
        model,
        lambda: LayerGNDI(model, model.linear1).attribute(x, target=2),
        ValueError,
        r"target 2 is out of range .* \(valid: 0..1\)",
    )
    run_bad(
        model,
        lambda: LayerGNDI(model, model.linear1).attribute(x, target=[0, 7]),
        ValueError,
        "target 7 is out of range",
    )


def test_baseline_shape_does_not_broadcast(model, x):
    run_bad(
        model,
        lambda: LayerGNDI(model, model.linear1).attribute(x, layer_baselines=torch.zeros(3)),
        ValueError,
        r"shape \(3,\) does not broadcast .* shape \(2, 4\)",
    )
    run_bad(
        model,
        lambda: LayerGNDI(model, model.linear1).attribute(x, baselines=torch.zeros(5)),
        ValueError,
        "does not broadcast",
    )


def test_both_kinds_of_baseline(model, x):
    run_bad(
        model,
        lambda: LayerGNDI(model, model.linear1).attribute(x, baselines=0.0, layer_baselines=0),
        ValueError,
        "either input-space `baselines` or `layer_baselines`",
    )


def test_nan_inputs(model, x):
    bad = x.clone()
    bad[0, 1] = float("nan")
    run_bad(model, lambda: LayerGNDI(model, model.linear1).attribute(bad), ValueError, "NaN or inf")


def test_nan_activations(x):
    class LogModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.fc2 = nn.Linear(3, 2)

        def forward(self, t):
            return self.fc2(torch.log(self.fc(t)))

    model = LogModel().double().eval()
    with torch.no_grad():
        model.fc.weight.copy_(-torch.eye(3))
        model.fc.bias.zero_()
    log = model.fc2  # its input holds log of negative numbers -> NaN
    run_bad(
        model,
        lambda: LayerGNDI(model, log).attribute(x, attribute_to_layer_input=True),
        ValueError,
        "NaN or inf activations",
    )


def test_p_below_one(model, x):
    run_bad(
        model,
        lambda: LayerGNDI(model, model.linear1).attribute(x, norm=0.5),
        ValueError,
        "p < 1 is not a norm",
    )


def test_unknown_string_baseline(model, x):
    run_bad(
        model,
        lambda: LayerGNDI(model, model.linear1).attribute(x, layer_baselines="mean"),
        ValueError,
        "compute_gndi",
    )


def test_training_mode_warns_and_mode_is_kept(x):
    # a dropout module in training mode: its output depends on the flag (test_model_state.py)
    model = nn.Sequential(BasicModel_MultiLayer(), nn.Dropout(0.5)).double().train()
    before = snapshot(model)
    with pytest.warns(UserWarning, match="training mode: 1"):
        LayerGNDI(model, model[0].linear1).attribute(x)
    assert_untouched(model, before)
    assert model.training


def test_successful_runs_leave_the_model_untouched(model, x):
    frozen = copy.deepcopy(model)
    for p in frozen.parameters():
        p.requires_grad_(False)
    for m in (model, frozen):
        before = snapshot(m)
        for mode in ("forward", "reverse"):
            LayerGNDI(m, [m.linear0, m.linear1]).attribute(
                x, mode=mode, n_steps=3, return_convergence_delta=True
            )
        LayerGNDI(m, m.linear1).attribute(x, granularity="channel")
        assert_untouched(m, before)
    # frozen parameters give the same scores: the engine needs no parameter gradients
    torch.testing.assert_close(
        LayerGNDI(frozen, frozen.linear1).attribute(x, mode="reverse"),
        LayerGNDI(model, model.linear1).attribute(x, mode="reverse"),
    )


def test_empty_data_loader(model):
    empty = DataLoader(TensorDataset(torch.zeros(0, 3, dtype=torch.float64)), batch_size=4)
    run_bad(
        model,
        lambda: compute_gndi(model, empty, {"l1": model.linear1}, progress=False),
        ValueError,
        "no batches",
    )


def test_compute_gndi_unknown_layer_name(model):
    data = [torch.randn(2, 3, dtype=torch.float64)]
    with pytest.raises((KeyError, ValueError), match="linear9"):
        compute_gndi(model, data, ["linear9"], progress=False)
