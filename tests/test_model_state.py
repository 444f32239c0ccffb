"""Issue #24 item 1: submodules in training mode. Every buffer is unchanged after each entry
point, one warning names the submodules in training mode, and modules whose training flag cannot
change their output (containers, wrappers, Captum's fresh forward-function module) give none."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_gndi import LayerGNDI, compute_gndi, verify_top_k
from captum_gndi.interventions.model_state import training_submodules, trains_differently
from captum_gndi.pruning import channel_importance
from captum_gndi.pruning.layers import find_prunable
from captum_gndi.validation import ablate, validate


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.bn1 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():  # non-trivial running statistics
            for bn in (self.bn1, self.bn2):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.relu(self.bn2(self.conv2(h)))
        return self.fc(h.mean((2, 3)))


class Wrapper(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def mixed_net():
    model = Net().eval()
    model.bn2.train()  # root in eval, one BatchNorm submodule in training mode
    return model


def buffers(model):
    return {name: b.clone() for name, b in model.named_buffers()}


def assert_same_buffers(model, before):
    after = dict(model.named_buffers())
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), name


def one_warning_naming(record, names):
    messages = [str(w.message) for w in record if "training mode" in str(w.message)]
    assert len(messages) == 1, messages
    assert f"Submodules in training mode: {names}." in messages[0]


X = torch.randn(6, 2, 5, 5, generator=torch.Generator().manual_seed(1))
LABELS = torch.tensor([0, 1, 2, 0, 1, 2])


def data():
    return DataLoader(TensorDataset(X, LABELS), batch_size=3)


ENTRY_POINTS = {
    "attribute forward": lambda m: LayerGNDI(m, m.conv2).attribute(X, target=0, mode="forward"),
    "attribute reverse": lambda m: LayerGNDI(m, [m.conv1, m.conv2]).attribute(
        X, target=0, mode="reverse", granularity="channel"
    ),
    "attribute delta": lambda m: LayerGNDI(m, m.conv1).attribute(
        X, target=0, return_convergence_delta=True
    ),
    "compute_gndi": lambda m: compute_gndi(
        m, data(), ["conv1", "conv2"], baseline="mean", target="predicted", progress=False
    ),
    "validate": lambda m: validate(
        m,
        data(),
        ["conv1", "conv2"],
        criteria=["gndi", "magnitude"],
        granularity="channel",
        n_channels=5,
        progress=False,
        n_boot=10,
    ),
    "ablate": lambda m: ablate(m, data(), ["conv1", "conv2"], progress=False),
    "verify_top_k": lambda m: verify_top_k(m, data(), ["conv1", "conv2"], k=2, progress=False),
    "channel_importance": lambda m: channel_importance(
        m, data(), find_prunable(m, X[:2], keep_stem=False, exclude=["fc"]), "gndi"
    ),
    "channel_importance taylor": lambda m: channel_importance(
        m, data(), find_prunable(m, X[:2], keep_stem=False, exclude=["fc"]), "taylor"
    ),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_buffers_unchanged_and_one_warning_names_the_training_submodule(entry):
    model = mixed_net()
    before = buffers(model)
    modes = {name: m.training for name, m in model.named_modules()}
    with pytest.warns(UserWarning) as record:
        ENTRY_POINTS[entry](model)
    assert_same_buffers(model, before)
    assert {name: m.training for name, m in model.named_modules()} == modes
    one_warning_naming(record, "bn2")


def test_behind_a_lambda_and_behind_a_wrapper_in_eval():
    model = mixed_net()
    before = buffers(model)
    with pytest.warns(UserWarning) as record:
        LayerGNDI(lambda x: model(x), model.conv2).attribute(X, target=1)
    one_warning_naming(record, "bn2")  # named in the first module the lambda calls
    wrapper = Wrapper(model).eval()
    model.bn2.train()  # wrapper.eval() set every submodule to eval
    with pytest.warns(UserWarning) as record:
        LayerGNDI(wrapper, model.conv2).attribute(X, target=1)
    one_warning_naming(record, "inner.bn2")
    assert_same_buffers(model, before)


def test_no_warning_where_the_flag_cannot_matter():
    model = Net().eval()

    class ForwardFunc(nn.Module):  # like Captum's LLMGradientAttribution wrapper: a fresh
        def __init__(self, inner):  # module (training mode) around a model in eval mode
            super().__init__()
            self.model = inner

        def forward(self, x):
            return self.model(x).log_softmax(1)[:, 0]

    fresh = ForwardFunc(model)
    model.eval()
    assert fresh.training and not model.training
    plain = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Dropout(0.0), nn.LayerNorm(4)).train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LayerGNDI(fresh, model.conv2).attribute(X)
        LayerGNDI(plain, plain[0]).attribute(torch.randn(2, 3))
        LayerGNDI(nn.DataParallel(model), model.conv2).attribute(X, target=0)
    assert training_submodules(fresh) == [] and training_submodules(plain) == []


def test_which_modules_train_differently():
    assert trains_differently(nn.BatchNorm1d(3).train())
    assert not trains_differently(nn.BatchNorm1d(3, track_running_stats=False))
    assert trains_differently(nn.InstanceNorm1d(3, track_running_stats=True))
    assert not trains_differently(nn.InstanceNorm1d(3))
    assert trains_differently(nn.Dropout(0.1)) and not trains_differently(nn.Dropout(0.0))
    assert trains_differently(nn.RReLU())
    assert not trains_differently(nn.Sequential()) and not trains_differently(nn.LayerNorm(3))

    class OwnTrain(nn.Module):
        def train(self, mode=True):
            return super().train(mode)

    class ReadsFlag(nn.Module):
        def forward(self, x):
            return x * 2 if self.training else x

    assert trains_differently(OwnTrain()) and trains_differently(ReadsFlag())
