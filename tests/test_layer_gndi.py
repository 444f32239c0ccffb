"""Foundation specification of LayerGNDI: exact values, independent computations, conventions."""

from __future__ import annotations

import math

import pytest
import torch
from captum.attr import IntegratedGradients, LayerAttribution
from captum.testing.helpers.basic_models import (
    BasicModel_MultiLayer,
    BasicModelWithReusedModules,
)
from torch import nn

from captum_gndi import LayerCall, LayerGNDI

SQRT2 = math.sqrt(2.0)


def multilayer(**kwargs) -> nn.Module:
    return BasicModel_MultiLayer(**kwargs).double().eval()


def x_example() -> torch.Tensor:
    # linear0 is the identity; linear1 -> [-3, 8, 8, 8]; relu -> [0, 8, 8, 8]; output [23, 25]
    return torch.tensor([[3.0, 4.0, 0.0]], dtype=torch.float64)


class TestCaptumConventions:
    def test_is_a_captum_layer_method(self):
        model = multilayer()
        gndi = LayerGNDI(model, model.linear1)
        assert isinstance(gndi, LayerAttribution)
        assert gndi.get_name() == "Layer G-NDI"
        assert gndi.has_convergence_delta()

    def test_sits_next_to_integrated_gradients(self):
        model = multilayer()
        x = x_example()
        ig = IntegratedGradients(model).attribute(x, target=0)
        scores = LayerGNDI(model, model.linear1).attribute(x, target=0)
        assert ig.shape == x.shape
        assert scores.shape == (1,)

    def test_list_of_layers_returns_a_list(self):
        model = multilayer()
        result = LayerGNDI(model, [model.linear0, model.linear1]).attribute(x_example())
        assert isinstance(result, list) and len(result) == 2
        # hand-computed: both layers move the output by [21, 21] and [24, 24]
        torch.testing.assert_close(result[0], torch.tensor([21 * SQRT2], dtype=torch.float64))
        torch.testing.assert_close(result[1], torch.tensor([24 * SQRT2], dtype=torch.float64))


class TestHandComputedValues:
    """BasicModel_MultiLayer: linear0 = I, linear1 = ones(4, 3) + [-10, 1, 1, 1], ReLU,
    linear2 = ones(2, 4) + [-1, 1]. For x = [3, 4, 0] the values below follow by hand."""

    @pytest.mark.parametrize("mode", ["forward", "reverse", "auto"])
    def test_linear1_zero_baseline(self, mode):
        model = multilayer()
        gndi = LayerGNDI(model, model.linear1)
        # h - b = [-3, 8, 8, 8]; ReLU mask [0, 1, 1, 1]; linear2 sums: J(h - b) = [24, 24]
        x = x_example()
        expected_l2 = torch.tensor([24 * SQRT2], dtype=torch.float64)
        torch.testing.assert_close(gndi.attribute(x, mode=mode), expected_l2)
        torch.testing.assert_close(
            gndi.attribute(x, target=1, mode=mode), torch.tensor([24.0]).double()
        )
        torch.testing.assert_close(
            gndi.attribute(x, norm=1, mode=mode), torch.tensor([48.0]).double()
        )
        torch.testing.assert_close(
            gndi.attribute(x, norm=math.inf, mode=mode), torch.tensor([24.0]).double()
        )

    def test_constant_layer_baseline(self):
        model = multilayer()
        # b = 1: h - b = [-4, 7, 7, 7] -> J(h - b) = [21, 21]
        scores = LayerGNDI(model, model.linear1).attribute(
            x_example(), layer_baselines=1.0, target=0
        )
        torch.testing.assert_close(scores, torch.tensor([21.0]).double())

    def test_tensor_and_callable_layer_baselines(self):
        model = multilayer()
        gndi = LayerGNDI(model, model.linear1)
        b = torch.tensor([0.0, 2.0, 0.0, 0.0], dtype=torch.float64)  # per-example shape h.shape[1:]
        # h - b = [-3, 6, 8, 8] -> 22
        torch.testing.assert_close(
            gndi.attribute(x_example(), layer_baselines=b, target=0), torch.tensor([22.0]).double()
        )
        torch.testing.assert_close(
            gndi.attribute(x_example(), layer_baselines=lambda h: h / 2, target=0),
            torch.tensor([12.0]).double(),
        )

    def test_input_baselines_use_the_layer_activation_at_the_baseline(self):
        model = multilayer()
        x = x_example()
        x0 = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
        # activation of linear1 at x0: [-8, 3, 3, 3]; h - b = [5, 5, 5, 5]; ReLU mask [0,1,1,1]
        scores = LayerGNDI(model, model.linear1).attribute(x, baselines=x0, target=0)
        torch.testing.assert_close(scores, torch.tensor([15.0]).double())
        scalar = LayerGNDI(model, model.linear1).attribute(x, baselines=1.0, target=0)
        # baseline input [1, 1, 1]: activation [-7, 4, 4, 4]; h - b = [4, 4, 4, 4] -> 12
        torch.testing.assert_close(scalar, torch.tensor([12.0]).double())

    def test_additional_forward_args(self):
        model = multilayer()
        x = torch.tensor([[2.0, 4.0, 0.0]], dtype=torch.float64)
        add = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)  # x + add = [3, 4, 0]
        scores = LayerGNDI(model, model.linear1).attribute(
            x, target=0, additional_forward_args=(add,)
        )
        torch.testing.assert_close(scores, torch.tensor([24.0]).double())

    def test_tuple_output_layer_is_intervened_on_jointly(self):
        model = multilayer(multi_input_module=True)
        # multi_relu returns (relu(lin1), relu(lin1_alt)), both used downstream: zeroing both
        # moves output 0 by 48 (24 from each); the old first-tensor-only answer was 24
        for mode in ("forward", "reverse"):
            scores, delta = LayerGNDI(model, model.multi_relu).attribute(
                x_example(), target=0, mode=mode, return_convergence_delta=True
            )
            torch.testing.assert_close(scores, torch.tensor([48.0]).double())
            torch.testing.assert_close(delta, torch.zeros(1).double())  # linear after the relus

    def test_layer_whose_output_is_unused_scores_zero(self):
        model = multilayer(multi_input_module=True)  # model.relu runs but its output is dropped
        for mode in ("forward", "reverse"):
            scores = LayerGNDI(model, model.relu).attribute(x_example(), mode=mode)
            torch.testing.assert_close(scores, torch.zeros(1, dtype=torch.float64))

    @pytest.mark.parametrize("mode", ["forward", "reverse"])
    def test_inplace_relu_after_the_layer(self, mode):
        model = multilayer(inplace=True)
        scores = LayerGNDI(model, model.linear1).attribute(x_example(), mode=mode)
        torch.testing.assert_close(scores, torch.tensor([24 * SQRT2], dtype=torch.float64))

    def test_attribute_to_layer_input(self):
        model = multilayer()
        # input of linear2 is relu output [0, 8, 8, 8]; zeroing it moves output by [24, 24]
        scores = LayerGNDI(model, model.linear2).attribute(
            x_example(), target=0, attribute_to_layer_input=True
        )
        torch.testing.assert_close(scores, torch.tensor([24.0]).double())

    def test_reused_module_via_layer_call(self):
        torch.manual_seed(0)
        model = BasicModelWithReusedModules().double().eval()
        x = torch.randn(4, 3, dtype=torch.float64)
        # relu runs twice: call 1 is the final output relu; zeroing it moves the output by itself
        scores = LayerGNDI(model, LayerCall(model.relu, 1)).attribute(x, norm=2)
        torch.testing.assert_close(scores, model(x).norm(dim=1))


class TestIndependentComputations:
    @staticmethod
    def split_model():
        torch.manual_seed(1)
        head = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh())
        tail = nn.Sequential(
            nn.Conv2d(4, 3, 3), nn.BatchNorm2d(3), nn.Softplus(), nn.Flatten(), nn.Linear(12, 5)
        )
        model = nn.Sequential(head, tail).double()
        for bn in (head[1], tail[1]):  # non-trivial running statistics, used in eval mode
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
        return model.eval(), head, tail

    def test_linear_downstream_equals_true_intervention_exactly(self):
        torch.manual_seed(2)
        model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.Linear(4, 3))
        model = model.double().eval()
        x = torch.randn(7, 5, dtype=torch.float64)
        gndi = LayerGNDI(model, model[1])  # everything after the Tanh is affine
        scores, delta = gndi.attribute(x, return_convergence_delta=True)
        true_effect = model(x) - model[3](model[2](torch.zeros(7, 6, dtype=torch.float64)))
        torch.testing.assert_close(scores, true_effect.norm(dim=1))
        assert delta.abs().max() < 1e-12

    @pytest.mark.parametrize("mode", ["forward", "reverse"])
    def test_matches_torch_func_jvp_on_the_split_model(self, mode):
        model, head, tail = self.split_model()
        x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
        h = head(x).detach()
        baseline = torch.full_like(h, 0.3)
        _, tangent = torch.func.jvp(tail, (h,), (h - baseline,))
        expected = tangent.norm(dim=1)
        scores = LayerGNDI(model, head).attribute(x, layer_baselines=0.3, mode=mode)
        torch.testing.assert_close(scores, expected, rtol=1e-10, atol=1e-12)

    def test_matches_central_finite_differences(self):
        model, head, tail = self.split_model()
        x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
        h = head(x).detach()
        eps = 1e-5
        finite = (tail(h + eps * h) - tail(h - eps * h)) / (2 * eps)  # direction h - 0
        scores = LayerGNDI(model, head).attribute(x, target=2)
        torch.testing.assert_close(scores, finite[:, 2].abs(), rtol=1e-6, atol=1e-9)

    def test_forward_and_reverse_agree(self):
        model, head, tail = self.split_model()
        x = torch.randn(5, 2, 4, 4, dtype=torch.float64)
        layers = [head[0], head[1], head, tail[0], tail[2]]
        forward = LayerGNDI(model, layers).attribute(x, mode="forward")
        reverse = LayerGNDI(model, layers).attribute(x, mode="reverse")
        for a, b in zip(forward, reverse):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=0)

    def test_convergence_delta_is_the_taylor_remainder(self):
        model, head, tail = self.split_model()
        x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
        h = head(x).detach()
        _, tangent = torch.func.jvp(tail, (h,), (h,))
        exact = tail(h) - tail(torch.zeros_like(h))
        _, delta = LayerGNDI(model, head).attribute(x, return_convergence_delta=True)
        torch.testing.assert_close(delta, (exact - tangent).norm(dim=1))
        assert (delta > 1e-6).all()  # the tail is nonlinear: the remainder is not zero

    def test_float32_matches_float64(self):
        model, head, _ = self.split_model()
        x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
        expected = LayerGNDI(model, head).attribute(x)
        model32 = model.float()
        scores = LayerGNDI(model32, head).attribute(x.float())
        assert scores.dtype == torch.float32
        torch.testing.assert_close(scores.double(), expected, rtol=1e-4, atol=1e-5)

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
    def test_cuda_matches_cpu(self):
        model, head, _ = self.split_model()
        x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
        expected = LayerGNDI(model, head).attribute(x)
        scores = LayerGNDI(model.cuda(), head).attribute(x.cuda())
        torch.testing.assert_close(scores.cpu(), expected)
