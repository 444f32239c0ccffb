"""Captum conformance: LayerGNDI against Captum's own generated checks and layer-test idioms.

Re-creates, for LayerGNDI, the checks that pytorch/captum generates from
``tests/attr/helpers/test_config.py``: ``tests/attr/test_targets.py`` (a batched target equals
per-example runs) and ``tests/attr/test_hook_removal.py`` (no hooks left after normal runs, wrong
targets and a module that raises), each with and without ``NoiseTunnel``; then the idioms of
Captum's layer tests (``torch.no_grad()``, multi-input models, embeddings, frozen parameters,
in-place ReLU, unused layers, multi-tensor layers), ``NoiseTunnel`` against a manual mean,
``compute_convergence_delta``, ``grad_kwargs``, ``DataParallel`` and ``captum.metrics``.
"""

from __future__ import annotations

import inspect
import re
import sys
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from captum.attr import (
    GradientAttribution,
    InputXGradient,
    LayerAttribution,
    LayerGradientXActivation,
    NoiseTunnel,
)
from captum.metrics import infidelity, sensitivity_max
from captum.testing.helpers.basic_models import (
    BasicEmbeddingModel,
    BasicModel_ConvNet,
    BasicModel_MultiLayer,
    BasicModel_MultiLayer_MultiInput,
    BasicModel_MultiLayer_TrueMultiInput,
)
from torch import Tensor, nn

from captum_gndi import LayerGNDI

D = torch.float64


def x_example() -> Tensor:
    # BasicModel_MultiLayer: linear1 -> [-3, 8, 8, 8]; relu -> [0, 8, 8, 8]; output [23, 25]
    return torch.tensor([[3.0, 4.0, 0.0]], dtype=D)


def get_layer(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def randomise_head(model: nn.Module, seed: int = 7) -> nn.Module:
    """Captum's models have all-ones output weights: every target has the same Jacobian (and
    BasicModel_ConvNet's softmax output is constant), so a misaligned target would go
    unnoticed; give the last linear layer distinct rows."""
    generator = torch.Generator().manual_seed(seed)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.copy_(torch.randn(last.weight.shape, generator=generator, dtype=D))
    return model


# name -> (model factory, layer name, attribute arguments); mirrors Captum's layer configs
def _cases() -> dict[str, tuple[Callable[[], nn.Module], str, Callable[[], dict[str, Any]]]]:
    def randn(*shape: int, seed: int) -> Tensor:
        return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)

    def multilayer(**kw: Any) -> Callable[[], nn.Module]:
        return lambda: randomise_head(BasicModel_MultiLayer(**kw).double().eval())

    tuple_targets = [(1, 0, 0), (0, 1, 1), (1, 1, 1), (0, 0, 0)]
    return {
        "conv_layer_single_target": (
            lambda: randomise_head(BasicModel_ConvNet().double().eval()),
            "conv2",
            lambda: {"inputs": randn(4, 1, 10, 10, seed=1), "target": 1},
        ),
        "basic_layer_in_place": (
            multilayer(inplace=True),
            "relu",
            lambda: {"inputs": randn(4, 3, seed=2), "target": [0, 1, 1, 0]},
        ),
        "basic_layer_multi_output": (
            multilayer(multi_input_module=True),
            "multi_relu",
            lambda: {"inputs": randn(4, 3, seed=3), "target": [1, 0, 1, 0]},
        ),
        "basic_layer_multi_input": (
            lambda: randomise_head(BasicModel_MultiLayer_MultiInput().double().eval()),
            "model.relu",
            lambda: {
                "inputs": (randn(6, 3, seed=4), 0.5 * randn(6, 3, seed=5)),
                "additional_forward_args": (0.2 * randn(6, 3, seed=6), 5),
                "target": [0, 1, 1, 0, 0, 1],
            },
        ),
        "basic_layer_tensor_multiple_target": (
            multilayer(),
            "relu",
            lambda: {"inputs": randn(4, 3, seed=7), "target": torch.tensor([0, 1, 1, 0])},
        ),
        "basic_layer_tensor_single_target": (
            multilayer(),
            "relu",
            lambda: {"inputs": randn(4, 3, seed=8), "target": torch.tensor([1])},
        ),
        "basic_layer_multiple_tuple_target": (
            multilayer(),
            "relu",
            lambda: {
                "inputs": randn(4, 3, seed=9),
                "target": tuple_targets,
                "additional_forward_args": (None, True),
            },
        ),
        "conv_layer_tensor_target_with_baselines": (
            lambda: randomise_head(BasicModel_ConvNet().double().eval()),
            "conv1",
            lambda: {
                "inputs": randn(3, 1, 10, 10, seed=10),
                "baselines": 0.5 * randn(3, 1, 10, 10, seed=11),
                "target": torch.tensor([3, 1, 4]),
            },
        ),
    }


CASES = _cases()
GRANULARITIES = ["layer", "channel", "unit"]
# a multi-tensor layer: one joint score at layer granularity, one score tensor per tensor of
# the layer at channel and unit granularity (Captum's layer methods return one per tensor)
TARGET_RUNS = [(case, granularity) for case in CASES for granularity in GRANULARITIES]


def per_tensor(scores: Any) -> tuple[Tensor, ...]:
    """The score tensors of one layer (a tuple for a multi-tensor layer at unit granularity)."""
    return scores if isinstance(scores, tuple) else (scores,)


def one_example(args: dict[str, Any], i: int, n: int, target_as_list: bool) -> dict[str, Any]:
    """Captum's test_targets slicing: example i of inputs, targets, forward args, baselines."""
    single = dict(args)
    target = args["target"]
    if isinstance(target, (list, Tensor)) and len(target) == n:
        single["target"] = target[i : i + 1] if target_as_list else target[i]
    inputs = args["inputs"]
    single["inputs"] = (
        inputs[i : i + 1] if isinstance(inputs, Tensor) else tuple(t[i : i + 1] for t in inputs)
    )
    if args.get("additional_forward_args") is not None:
        single["additional_forward_args"] = tuple(
            a[i : i + 1] if isinstance(a, Tensor) else a for a in args["additional_forward_args"]
        )
    if isinstance(args.get("baselines"), Tensor):
        single["baselines"] = args["baselines"][i : i + 1]
    return single


def n_examples(args: dict[str, Any]) -> int:
    inputs = args["inputs"]
    return len(inputs) if isinstance(inputs, Tensor) else len(inputs[0])


def method_for(model: nn.Module, layer: Any, noise_tunnel: bool):
    gndi = LayerGNDI(model, layer)
    return NoiseTunnel(gndi) if noise_tunnel else gndi


NT_ARGS = {"nt_samples": 3, "stdevs": 0.0}  # Captum's NoiseTunnel configs use stdevs=0.0


class TestTargets:
    """Captum's test_targets: a batched target equals per-example runs (int, list, tensor and
    tuple targets), at every granularity, with and without NoiseTunnel."""

    @pytest.mark.parametrize("noise_tunnel", [False, True], ids=["plain", "NoiseTunnel"])
    @pytest.mark.parametrize(("case", "granularity"), TARGET_RUNS)
    def test_batched_target_equals_per_example_runs(self, case, granularity, noise_tunnel):
        make_model, layer_name, make_args = CASES[case]
        model = make_model()
        args = {**make_args(), "granularity": granularity}
        if noise_tunnel:
            args.update(NT_ARGS)
        method = method_for(model, get_layer(model, layer_name), noise_tunnel)
        n = n_examples(args)
        batched = per_tensor(method.attribute(**args))
        for part in batched:
            assert part.shape[0] == n
            assert part.abs().sum() > 0 and torch.isfinite(part).all()
        for i in range(n):
            for as_list in (False, True):
                single = per_tensor(method.attribute(**one_example(args, i, n, as_list)))
                assert len(single) == len(batched)
                for part, one in zip(batched, single):
                    torch.testing.assert_close(part[i : i + 1], one, rtol=1e-9, atol=1e-10)
        if noise_tunnel:  # zero noise: NoiseTunnel's mean is LayerGNDI itself
            plain_args = {k: v for k, v in args.items() if k not in NT_ARGS}
            plain = LayerGNDI(model, get_layer(model, layer_name)).attribute(**plain_args)
            for part, p in zip(batched, per_tensor(plain)):
                torch.testing.assert_close(part, p, rtol=1e-9, atol=1e-10)

    @pytest.mark.parametrize("case", ["basic_layer_in_place", "basic_layer_multi_input"])
    def test_targets_matter(self, case):
        # the per-example check above is only informative when targets change the scores
        make_model, layer_name, make_args = CASES[case]
        model = make_model()
        args = make_args()
        gndi = LayerGNDI(model, get_layer(model, layer_name))
        flipped = [1 - t for t in args["target"]]
        assert not torch.allclose(
            gndi.attribute(**args), gndi.attribute(**{**args, "target": flipped})
        )

    def test_multi_tensor_layer_gives_one_score_tensor_per_tensor(self):
        # Captum's multi-output layer idiom: one attribution per tensor of the layer; the
        # generated target check (batched = per example) holds for each, with NoiseTunnel too
        model = BasicModel_MultiLayer(multi_input_module=True).double().eval()
        x = torch.tensor([[3.0, 4.0, 0.0], [1.0, -2.0, 0.5], [0.5, 1.0, 2.0]], dtype=D)
        target = [0, 1, 0]
        for granularity in ("channel", "unit"):
            gndi = LayerGNDI(model, model.multi_relu)
            batched = gndi.attribute(x, target=target, granularity=granularity)
            assert isinstance(batched, tuple) and len(batched) == 2
            for i in range(x.shape[0]):
                single = gndi.attribute(x[i : i + 1], target=target[i], granularity=granularity)
                for b, s in zip(batched, single):
                    torch.testing.assert_close(b[i : i + 1], s, rtol=1e-9, atol=1e-10)
            smooth = NoiseTunnel(gndi).attribute(
                x, target=target, granularity=granularity, nt_samples=2, stdevs=0.0
            )
            for b, s in zip(batched, smooth):
                torch.testing.assert_close(b, s, rtol=1e-9, atol=1e-10)


# --- hooks -------------------------------------------------------------------------------------

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def leftover_hooks(model: nn.Module) -> list[str]:
    found = [
        f"{name or '<root>'}.{kind}"
        for name, module in model.named_modules()
        for kind in HOOK_DICTS
        if len(getattr(module, kind, {}))
    ]
    registry = torch.nn.modules.module
    found += [kind for kind in GLOBAL_HOOKS if len(getattr(registry, kind, {}))]
    return found


class ErrorModule(nn.Module):
    """Captum's test_hook_removal module: raises when run."""

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        raise AssertionError("Raising error on execution")


HOOK_CASES = [
    "basic_layer_multiple_tuple_target",
    "conv_layer_single_target",
    "basic_layer_multi_output",
]


class TestHookRemoval:
    """Captum's test_hook_removal: no forward, forward-pre or backward hooks on any module
    after a normal run, a wrong target, or a layer that raises; with and without NoiseTunnel,
    on every engine path."""

    @pytest.mark.parametrize("noise_tunnel", [False, True], ids=["plain", "NoiseTunnel"])
    @pytest.mark.parametrize(
        "options",
        [
            {"mode": "forward"},
            {"mode": "reverse"},
            {"mode": "auto", "granularity": "unit"},
            {"mode": "forward", "granularity": "unit", "n_steps": 2},
            {"mode": "reverse", "granularity": "channel"},
            {"mode": "auto", "return_convergence_delta": True},
        ],
        ids=["forward", "reverse", "unit", "unit-path", "channel", "delta"],
    )
    @pytest.mark.parametrize("case", HOOK_CASES)
    def test_normal_run(self, case, options, noise_tunnel):
        make_model, layer_name, make_args = CASES[case]
        model = make_model()
        args = {**make_args(), **options, **(NT_ARGS if noise_tunnel else {})}
        result = method_for(model, get_layer(model, layer_name), noise_tunnel).attribute(**args)
        scores = result[0] if options.get("return_convergence_delta") else result
        assert sum(part.abs().sum() for part in per_tensor(scores)) > 0
        assert leftover_hooks(model) == []

    @pytest.mark.parametrize("noise_tunnel", [False, True], ids=["plain", "NoiseTunnel"])
    @pytest.mark.parametrize("mode", ["forward", "reverse"])
    @pytest.mark.parametrize("case", HOOK_CASES)
    def test_incorrect_target(self, case, mode, noise_tunnel):
        make_model, layer_name, make_args = CASES[case]
        model = make_model()
        args = {**make_args(), "target": (9999,) * 20, "mode": mode}
        if noise_tunnel:
            args.update(NT_ARGS)
        method = method_for(model, get_layer(model, layer_name), noise_tunnel)
        with pytest.raises(AssertionError):  # Captum's own target check, as in its test
            method.attribute(**args)
        assert leftover_hooks(model) == []
        args["target"] = 99  # out of range: our own error, still no hooks
        with pytest.raises(ValueError, match="out of range"):
            method.attribute(**args)
        assert leftover_hooks(model) == []

    @pytest.mark.parametrize("noise_tunnel", [False, True], ids=["plain", "NoiseTunnel"])
    @pytest.mark.parametrize(
        "options",
        [{"mode": "forward"}, {"mode": "reverse"}, {"return_convergence_delta": True}],
        ids=["forward", "reverse", "delta"],
    )
    @pytest.mark.parametrize("case", HOOK_CASES)
    def test_invalid_module(self, case, options, noise_tunnel):
        make_model, layer_name, make_args = CASES[case]
        model = make_model()
        setattr(model, layer_name, ErrorModule())  # Captum's _set_deep_layer_value
        args = {**make_args(), **options, **(NT_ARGS if noise_tunnel else {})}
        method = method_for(model, get_layer(model, layer_name), noise_tunnel)
        with pytest.raises(AssertionError, match="Raising error on execution"):
            method.attribute(**args)
        assert leftover_hooks(model) == []

    def test_error_inside_a_later_module(self):
        # the layer itself runs; the module after it raises while hooks are installed
        model = BasicModel_MultiLayer().double().eval()
        model.linear2 = ErrorModule()
        for mode in ("forward", "reverse"):
            with pytest.raises(AssertionError, match="Raising error"):
                LayerGNDI(model, model.linear1).attribute(x_example(), target=0, mode=mode)
            assert leftover_hooks(model) == []


# --- Captum layer-test idioms ------------------------------------------------------------------


def snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "modes": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "grads": {name: p.grad for name, p in model.named_parameters()},
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": leftover_hooks(model),
    }


def assert_untouched(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert after["modes"] == before["modes"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(g is None for g in after["grads"].values())
    assert after["hooks"] == before["hooks"] == []
    for key, value in before["state"].items():
        torch.testing.assert_close(after["state"][key], value, rtol=0, atol=0)


class TestLayerIdioms:
    @pytest.mark.parametrize("mode", ["forward", "reverse", "auto"])
    def test_under_no_grad(self, mode):
        model = BasicModel_MultiLayer().double().eval()
        x = torch.randn(5, 3, dtype=D, generator=torch.Generator().manual_seed(0))
        expected = LayerGNDI(model, model.linear1).attribute(x, target=1, mode=mode)
        with torch.no_grad():
            scores = LayerGNDI(model, model.linear1).attribute(x, target=1, mode=mode)
            hand = LayerGNDI(model, model.linear1).attribute(x_example(), target=0, mode=mode)
            assert not torch.is_grad_enabled()
        torch.testing.assert_close(scores, expected)
        torch.testing.assert_close(hand, torch.tensor([24.0], dtype=D))

    def test_multi_input_model(self):
        model = BasicModel_MultiLayer_MultiInput().double().eval()
        g = torch.Generator().manual_seed(1)
        x1, x2, x3 = (torch.randn(6, 3, dtype=D, generator=g) for _ in range(3))
        scores = LayerGNDI(model, model.model.relu).attribute(
            (x1, x2), target=0, additional_forward_args=(x3, 2)
        )
        # everything after the relu is linear2 (all-ones rows): zeroing it moves output 0 by
        # the sum of the relu output
        inner = model.model
        expected = torch.relu(inner.linear1(inner.linear0(2 * (x1 + x2 + x3)))).sum(dim=1)
        torch.testing.assert_close(scores, expected.detach())

    def test_true_multi_input_model(self):
        model = BasicModel_MultiLayer_TrueMultiInput().double().eval()
        g = torch.Generator().manual_seed(2)
        x1, x2, x3 = (torch.randn(4, 3, dtype=D, generator=g) for _ in range(3))
        scores = LayerGNDI(model, model.m1.relu).attribute((x1, x2, x3), target=0)
        expected = torch.relu(model.m1.linear1(model.m1.linear0(x1))).sum(dim=1)
        torch.testing.assert_close(scores, expected.detach())

    @pytest.mark.parametrize("mode", ["forward", "reverse"])
    def test_embedding_layer_with_token_ids(self, mode):
        torch.manual_seed(3)
        model = BasicEmbeddingModel().double().eval()
        g = torch.Generator().manual_seed(3)
        ids1 = torch.randint(0, 30, (3, 5), generator=g)
        ids2 = torch.randint(0, 30, (3, 5), generator=g)
        scores = LayerGNDI(model, model.embedding1).attribute((ids1, ids2), mode=mode)
        # linear1 and linear2 are all-ones: d out / d e1[t] = 256 * 1[s_t > 0] per token t
        e1 = model.embedding1(ids1)
        s = (e1 + model.embedding2.inner_embedding(ids2)).sum(-1)
        expected = (256 * e1.sum(-1) * (s > 0)).sum(1).abs()
        torch.testing.assert_close(scores, expected.detach())
        assert ids1.dtype == torch.int64  # integer inputs are left alone

    @pytest.mark.parametrize("mode", ["forward", "reverse"])
    def test_parameters_with_requires_grad_false(self, mode):
        model = BasicModel_MultiLayer().double().eval()
        model.linear0.requires_grad_(False)
        model.linear2.weight.requires_grad_(False)
        before = snapshot(model)
        scores = LayerGNDI(model, model.linear1).attribute(x_example(), target=0, mode=mode)
        torch.testing.assert_close(scores, torch.tensor([24.0], dtype=D))
        model.requires_grad_(False)  # all frozen
        frozen = LayerGNDI(model, model.linear1).attribute(x_example(), target=0, mode=mode)
        torch.testing.assert_close(frozen, torch.tensor([24.0], dtype=D))
        assert not any(p.requires_grad for p in model.parameters())
        for name, p in model.named_parameters():
            p.requires_grad_(before["requires_grad"][name])
        assert_untouched(model, before)

    @pytest.mark.parametrize("mode", ["forward", "reverse"])
    def test_inplace_relu_as_the_layer(self, mode):
        model = BasicModel_MultiLayer(inplace=True).double().eval()
        scores, delta = LayerGNDI(model, model.relu).attribute(
            x_example(), target=0, mode=mode, return_convergence_delta=True
        )
        torch.testing.assert_close(scores, torch.tensor([24.0], dtype=D))
        torch.testing.assert_close(delta, torch.zeros(1, dtype=D))
        units = LayerGNDI(model, model.relu).attribute(x_example(), target=0, granularity="unit")
        torch.testing.assert_close(units, torch.tensor([[0.0, 8.0, 8.0, 8.0]], dtype=D))

    @pytest.mark.parametrize("mode", ["forward", "reverse", "auto"])
    def test_unused_layer_scores_zero_with_grad_kwargs(self, mode):
        model = BasicModel_MultiLayer(multi_input_module=True).double().eval()
        for grad_kwargs in (None, {"materialize_grads": True}):
            scores = LayerGNDI(model, model.relu).attribute(
                torch.randn(3, 3, dtype=D), mode=mode, grad_kwargs=grad_kwargs
            )
            torch.testing.assert_close(scores, torch.zeros(3, dtype=D), rtol=0, atol=0)

    def test_grad_kwargs_reach_torch_autograd_grad(self):
        model = BasicModel_MultiLayer().double().eval()
        gndi = LayerGNDI(model, model.linear1)
        with pytest.raises(TypeError, match="not_a_grad_argument"):
            gndi.attribute(x_example(), mode="reverse", grad_kwargs={"not_a_grad_argument": 1})
        assert leftover_hooks(model) == []
        scores = gndi.attribute(x_example(), target=0, mode="reverse", grad_kwargs={})
        torch.testing.assert_close(scores, torch.tensor([24.0], dtype=D))

    @pytest.mark.parametrize("mode", ["forward", "reverse"])
    def test_multi_tensor_layer_joint_intervention(self, mode):
        model = BasicModel_MultiLayer(multi_input_module=True).double().eval()
        x = x_example()
        gndi = LayerGNDI(model, model.multi_relu)
        # both relu outputs [0, 8, 8, 8] feed linear2: zeroing both moves output 0 by 48
        scores, delta = gndi.attribute(x, target=0, mode=mode, return_convergence_delta=True)
        torch.testing.assert_close(scores, torch.tensor([48.0], dtype=D))
        torch.testing.assert_close(delta, torch.zeros(1, dtype=D))
        # its two inputs ([-3, 8, 8, 8] each) set to zero: the relus pass 8 + 8 + 8 of each
        on_input = gndi.attribute(x, target=0, mode=mode, attribute_to_layer_input=True)
        torch.testing.assert_close(on_input, torch.tensor([48.0], dtype=D))
        nt = NoiseTunnel(gndi).attribute(x, target=0, mode=mode, **NT_ARGS)
        torch.testing.assert_close(nt, torch.tensor([48.0], dtype=D))
        # Captum's LayerGradientXActivation gives one attribution per tensor; their sum is
        # the signed first-order effect of the joint intervention
        lgxa = LayerGradientXActivation(model, model.multi_relu).attribute(x, target=0)
        assert isinstance(lgxa, tuple) and len(lgxa) == 2
        torch.testing.assert_close(sum(t.sum() for t in lgxa).reshape(1), scores)

    @pytest.mark.parametrize("layer_name", ["conv1", "conv2", "relu3"])
    def test_signed_scores_equal_summed_layer_gradient_x_activation(self, layer_name):
        model = randomise_head(BasicModel_ConvNet().double().eval())
        x = torch.randn(3, 1, 10, 10, dtype=D, generator=torch.Generator().manual_seed(4))
        layer = get_layer(model, layer_name)
        signed = LayerGNDI(model, layer).attribute(x, target=2, signed=True)
        lgxa = LayerGradientXActivation(model, layer).attribute(x, target=2)
        torch.testing.assert_close(signed, lgxa.flatten(1).sum(1))
        assert signed.abs().min() > 0

    def test_model_left_exactly_as_it_was(self):
        model = randomise_head(BasicModel_ConvNet().double().eval())
        model.relu2.train()  # a submodule in its own mode (harmless for a ReLU)
        model.conv1.bias.requires_grad_(False)
        before = snapshot(model)
        x = torch.randn(2, 1, 10, 10, dtype=D)
        layers = [model.conv1, model.conv2]
        for options in (
            {"mode": "forward"},
            {"mode": "reverse", "granularity": "channel"},
            {"granularity": "unit", "n_steps": 3},
            {"return_convergence_delta": True, "baselines": 0.1},
        ):
            LayerGNDI(model, layers).attribute(x, target=[1, 2], **options)
            NoiseTunnel(LayerGNDI(model, model.conv2)).attribute(
                x, target=1, nt_samples=2, stdevs=0.1, **options
            )
        assert x.grad is None and not x.requires_grad
        assert_untouched(model, before)


# --- NoiseTunnel -------------------------------------------------------------------------------


def captum_noise(inputs: tuple[Tensor, ...], stdevs: tuple[float, ...], k: int):
    """NoiseTunnel's draw for one batch of k samples per example (same RNG calls, same order)."""
    return tuple(
        x.repeat_interleave(k, dim=0)
        + torch.normal(0, torch.tensor(s).repeat((len(x) * k,) + x.shape[1:]))
        for x, s in zip(inputs, stdevs)
    )


def manual_smoothing(gndi, inputs, stdevs, nt_samples, batch, seed, **kwargs):
    """LayerGNDI on NoiseTunnel's noisy inputs, as (N, nt_samples, ...) samples and deltas."""
    torch.manual_seed(seed)
    n = len(inputs[0])
    sizes = [batch] * (nt_samples // batch) + [nt_samples % batch] * bool(nt_samples % batch)
    samples, deltas = [], []
    for k in sizes:
        noisy = captum_noise(inputs, stdevs, k)
        target = kwargs.get("target")
        expanded = dict(kwargs)
        if isinstance(target, list):
            expanded["target"] = [t for t in target for _ in range(k)]
        if kwargs.get("additional_forward_args") is not None:
            expanded["additional_forward_args"] = tuple(
                a.repeat_interleave(k, 0) if isinstance(a, Tensor) else a
                for a in kwargs["additional_forward_args"]
            )
        out = gndi.attribute(noisy if len(noisy) > 1 else noisy[0], **expanded)
        if kwargs.get("return_convergence_delta"):
            out, delta = out
            deltas.append(delta)
        samples.append(out.reshape(n, k, *out.shape[1:]))
    return torch.cat(samples, dim=1), deltas


class TestNoiseTunnel:
    @pytest.mark.parametrize("granularity", GRANULARITIES)
    def test_smoothgrad_is_the_mean_over_the_same_noisy_inputs(self, granularity):
        model = randomise_head(BasicModel_ConvNet().double().eval())
        x = torch.randn(3, 1, 10, 10, dtype=D, generator=torch.Generator().manual_seed(5))
        gndi = LayerGNDI(model, model.conv2)
        kwargs = {"target": [1, 3, 5], "granularity": granularity}
        torch.manual_seed(11)
        smooth = NoiseTunnel(gndi).attribute(
            x, nt_type="smoothgrad", nt_samples=4, stdevs=0.3, **kwargs
        )
        samples, _ = manual_smoothing(gndi, (x,), (0.3,), 4, 4, 11, **kwargs)
        torch.testing.assert_close(smooth, samples.mean(dim=1))
        plain = gndi.attribute(x, **kwargs)
        assert smooth.shape == plain.shape
        assert not torch.allclose(smooth, plain)  # the noise really moved the scores

    def test_batches_of_samples_vargrad_and_multi_input(self):
        model = randomise_head(BasicModel_MultiLayer_MultiInput().double().eval())
        g = torch.Generator().manual_seed(6)
        x1, x2, x3 = (torch.randn(4, 3, dtype=D, generator=g) for _ in range(3))
        gndi = LayerGNDI(model, model.model.linear1)
        kwargs = {"target": [0, 1, 1, 0], "additional_forward_args": (x3, 2)}
        nt = NoiseTunnel(gndi)
        for nt_type, reduce in (
            ("smoothgrad", lambda s: s.mean(1)),
            ("smoothgrad_sq", lambda s: (s**2).mean(1)),
            ("vargrad", lambda s: (s**2).mean(1) - s.mean(1) ** 2),
        ):
            torch.manual_seed(12)
            smooth = nt.attribute(
                (x1, x2),
                nt_type=nt_type,
                nt_samples=5,
                nt_samples_batch_size=2,  # batches of 2, 2 and 1 samples
                stdevs=(0.5, 0.1),
                **kwargs,
            )
            samples, _ = manual_smoothing(gndi, (x1, x2), (0.5, 0.1), 5, 2, 12, **kwargs)
            torch.testing.assert_close(smooth, reduce(samples))

    def test_convergence_delta_per_noisy_sample(self):
        model = randomise_head(BasicModel_ConvNet().double().eval())
        x = torch.randn(2, 1, 10, 10, dtype=D, generator=torch.Generator().manual_seed(7))
        gndi = LayerGNDI(model, model.conv1)
        kwargs = {"target": [2, 7], "return_convergence_delta": True}
        torch.manual_seed(13)
        smooth, delta = NoiseTunnel(gndi).attribute(x, nt_samples=3, stdevs=0.2, **kwargs)
        samples, deltas = manual_smoothing(gndi, (x,), (0.2,), 3, 3, 13, **kwargs)
        torch.testing.assert_close(smooth, samples.mean(1))
        # Captum concatenates the wrapped method's deltas: one per noisy sample, example-major
        assert delta.shape == (2 * 3,)
        torch.testing.assert_close(delta, torch.cat(deltas))
        assert (delta > 0).all()  # softmax and max-pool after conv1: a real remainder

    def test_list_of_layers_fails_as_for_captum_layer_methods(self):
        # NoiseTunnel takes a tensor or a tuple from the wrapped method; Captum's own layer
        # methods return a list for a list of layers and fail the same way
        model = BasicModel_MultiLayer(multi_input_module=True).double().eval()
        layers = [model.linear1, model.linear1_alt]
        x = torch.randn(2, 3, dtype=D)
        for method in (LayerGradientXActivation(model, layers), LayerGNDI(model, layers)):
            with pytest.raises(AssertionError, match="must be a torch.Tensor or a tuple"):
                NoiseTunnel(method).attribute(x, target=0, nt_samples=2, stdevs=0.1)
        assert leftover_hooks(model) == []
        # one NoiseTunnel per layer is the way
        per_layer = [
            NoiseTunnel(LayerGNDI(model, layer)).attribute(x, target=0, **NT_ARGS)
            for layer in layers
        ]
        for got, expected in zip(per_layer, LayerGNDI(model, layers).attribute(x, target=0)):
            torch.testing.assert_close(got, expected)

    def test_what_noise_tunnel_reads(self):
        model = BasicModel_MultiLayer().double().eval()
        gndi = LayerGNDI(model, model.linear1)
        assert callable(LayerGNDI.attribute.__wrapped__)  # log_usage, as Captum's methods
        assert "grad_kwargs" in inspect.signature(LayerGNDI.attribute).parameters
        nt = NoiseTunnel(gndi)
        assert nt.has_convergence_delta() and nt.is_gradient_method
        assert nt.multiplies_by_inputs == gndi.multiplies_by_inputs is True


# --- compute_convergence_delta -----------------------------------------------------------------


class TestComputeConvergenceDelta:
    def test_hand_computed_remainder_replaces_captum_completeness(self):
        model = BasicModel_MultiLayer(multi_input_module=True).double().eval()
        x = x_example()
        gndi = LayerGNDI(model, model.multi_relu)
        scores = gndi.attribute(x)  # ||[48, 48]||_2
        torch.testing.assert_close(scores, torch.tensor([48 * 2**0.5], dtype=D))
        # linear2 after the layer: the first-order estimate is exact
        delta = gndi.compute_convergence_delta(scores, None, x)
        torch.testing.assert_close(delta, torch.zeros(1, dtype=D))
        # the inherited integrated-gradients formula is meaningless here:
        # sum(attr) - sum_rows(F(x) - F(0)) = 67.88 - ((47 - 5) + (49 - 7)) = -16.12
        inherited = GradientAttribution.compute_convergence_delta(gndi, scores, 0.0, x)
        torch.testing.assert_close(inherited, torch.tensor([48 * 2**0.5 - 84], dtype=D))

    @pytest.mark.parametrize(
        "options",
        [
            {"start_point": None},
            {"start_point": 0.5},
            {"start_point": "tensor"},
            {"start_point": None, "layer_baselines": 0.2, "norm": 1},
            {"start_point": None, "n_steps": 4, "mode": "reverse"},
        ],
        ids=["layer-zero", "scalar-input", "tensor-input", "layer-baseline-l1", "n_steps"],
    )
    def test_equals_the_delta_attribute_returns(self, options):
        model = randomise_head(BasicModel_ConvNet().double().eval())
        g = torch.Generator().manual_seed(8)
        x = torch.randn(3, 1, 10, 10, dtype=D, generator=g)
        options = dict(options)
        start = options.pop("start_point")
        if start == "tensor":
            start = 0.3 * torch.randn(3, 1, 10, 10, dtype=D, generator=g)
        gndi = LayerGNDI(model, model.conv1)
        target = [0, 4, 9]
        scores, delta = gndi.attribute(
            x, baselines=start, target=target, return_convergence_delta=True, **options
        )
        again = gndi.compute_convergence_delta(scores, start, x, target=target, **options)
        torch.testing.assert_close(again, delta)
        assert (delta > 0).all()

    def test_list_of_layers_and_additional_forward_args(self):
        model = BasicModel_MultiLayer().double().eval()
        g = torch.Generator().manual_seed(9)
        x = torch.randn(4, 3, dtype=D, generator=g)
        add = torch.randn(4, 3, dtype=D, generator=g)
        gndi = LayerGNDI(model, [model.linear0, model.linear1, model.relu])
        kwargs = {"target": 1, "additional_forward_args": (add,)}
        scores, delta = gndi.attribute(x, return_convergence_delta=True, **kwargs)
        again = gndi.compute_convergence_delta(scores, None, x, **kwargs)
        assert isinstance(again, list) and len(again) == 3
        for a, b in zip(again, delta):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(again[2], torch.zeros(4, dtype=D))  # linear after relu

    def test_bad_attributions(self):
        model = BasicModel_MultiLayer().double().eval()
        gndi = LayerGNDI(model, [model.linear0, model.linear1])
        x = torch.randn(4, 3, dtype=D)
        with pytest.raises(ValueError, match="2 tensor"):
            gndi.compute_convergence_delta(torch.ones(4), None, x)
        with pytest.raises(ValueError, match="one row per example"):
            gndi.compute_convergence_delta([torch.ones(4), torch.ones(3)], None, x)
        with pytest.raises(ValueError, match="either"):
            gndi.compute_convergence_delta([torch.ones(4)] * 2, 0.0, x, layer_baselines=1.0)


# --- typing, DataParallel, interpolate, captum.metrics -----------------------------------------


@pytest.mark.skipif(sys.version_info < (3, 11), reason="typing.get_overloads needs Python 3.11")
def test_overloads_follow_return_convergence_delta_and_the_signature():
    overloads = typing.get_overloads(LayerGNDI.attribute)
    assert len(overloads) == 3
    implementation = inspect.signature(LayerGNDI.attribute)
    returns = {}
    for overload in overloads:
        signature = inspect.signature(overload)
        # same parameters, in the same order, as the implementation
        assert list(signature.parameters) == list(implementation.parameters)
        returns[signature.parameters["return_convergence_delta"].annotation] = (
            signature.return_annotation
        )
    assert returns == {
        "Literal[False]": "Scores",
        "Literal[True]": "tuple[Scores, Scores]",
        "bool": "Scores | tuple[Scores, Scores]",
    }


# DataParallel wants the model on its first GPU where there is one
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class TestDataParallel:
    def test_eval_model_inside_data_parallel(self):
        model = randomise_head(BasicModel_MultiLayer().double().eval()).to(DEVICE)
        wrapped = nn.DataParallel(model)
        assert wrapped.training and not model.training  # the wrapper itself is in train mode
        x = torch.randn(4, 3, dtype=D, device=DEVICE)
        expected = LayerGNDI(model, model.relu).attribute(x, target=[0, 1, 0, 1])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            scores = LayerGNDI(wrapped, model.relu).attribute(x, target=[0, 1, 0, 1])
            smooth = NoiseTunnel(LayerGNDI(wrapped, wrapped.module.relu)).attribute(
                x, target=[0, 1, 0, 1], **NT_ARGS
            )
        torch.testing.assert_close(scores, expected)
        torch.testing.assert_close(smooth, expected)

    def test_training_inner_model_still_warns(self):
        model = BasicModel_MultiLayer().double().to(DEVICE)
        model.relu = nn.Sequential(nn.ReLU(), nn.Dropout(0.5)).train()  # flag matters
        with pytest.warns(UserWarning, match="training mode: relu.1"):
            LayerGNDI(nn.DataParallel(model), model.relu).attribute(
                x_example().to(DEVICE), target=0
            )


def test_layer_attribution_interpolate_on_unit_scores():
    model = randomise_head(BasicModel_ConvNet().double().eval())
    x = torch.randn(2, 1, 10, 10, dtype=D, generator=torch.Generator().manual_seed(10))
    units = LayerGNDI(model, model.conv2).attribute(x, target=1, granularity="unit")
    assert units.shape == (2, 4, 2, 2) and units.abs().sum() > 0
    upsampled = LayerAttribution.interpolate(units, (10, 10))  # nearest: 5 x 5 blocks
    assert upsampled.shape == (2, 4, 10, 10)
    torch.testing.assert_close(upsampled[:, :, 5:, :5], units[:, :, 1:, :1].expand(-1, -1, 5, 5))
    bilinear = LayerAttribution.interpolate(units, (10, 10), interpolate_mode="bilinear")
    assert bilinear.shape == (2, 4, 10, 10)


class TestCaptumMetrics:
    """``captum.metrics`` on LayerGNDI (#24 item 12), as Captum's docs write them."""

    @staticmethod
    def conv_model() -> tuple[nn.Module, Tensor]:
        model = randomise_head(BasicModel_ConvNet().double().eval())
        return model, torch.randn(3, 1, 10, 10, dtype=D, generator=torch.Generator().manual_seed(4))

    def test_the_plain_idiom_fails_in_captum_for_every_layer_method(self):
        # sensitivity_max reads the first explanation as a tuple of per-input tensors; Captum's
        # layer methods return a tensor, so Captum's own LayerGradientXActivation fails alike
        model, x = self.conv_model()
        gndi, lgxa = LayerGNDI(model, model.conv2), LayerGradientXActivation(model, model.conv2)
        for attribute, kwargs in [(gndi.attribute, {"granularity": "unit"}), (lgxa.attribute, {})]:
            with pytest.raises(RuntimeError, match="size of tensor"):
                sensitivity_max(attribute, x, target=1, n_perturb_samples=2, **kwargs)
        units = LayerGNDI(model, model.conv2).attribute(x, target=1, granularity="unit")
        with pytest.raises(AssertionError, match="matching shapes"):
            infidelity(model, lambda t: (t * 0.1, t * 0.9), x, units, target=1)

    @pytest.mark.parametrize("granularity", ["layer", "channel", "unit"])
    def test_sensitivity_max_equals_an_independent_computation(self, granularity):
        from captum_gndi import explanation_func

        model, x = self.conv_model()
        gndi = LayerGNDI(model, model.conv2)
        noise = 0.05 * torch.randn(
            3 * 4, 1, 10, 10, dtype=D, generator=torch.Generator().manual_seed(9)
        )

        def perturb(inputs, radius):  # deterministic: the same noise in both computations
            return inputs + noise

        kwargs = dict(target=1, granularity=granularity, signed=granularity == "unit")
        sens = sensitivity_max(
            explanation_func(gndi.attribute), x, perturb, n_perturb_samples=4, **kwargs
        )
        # by hand: max over samples of ||A(x + d) - A(x)||_F / ||A(x)||_F, example by example
        clean = gndi.attribute(x, **kwargs).reshape(3, -1)
        moved = gndi.attribute(x.repeat_interleave(4, 0) + noise, **kwargs).reshape(12, -1)
        change = (moved - clean.repeat_interleave(4, 0)).norm(dim=1).view(3, 4).max(1).values
        expected = change / clean.norm(dim=1)
        assert (expected > 1e-4).all()
        torch.testing.assert_close(sens, expected)

    def test_sensitivity_max_of_signed_units_equals_captums_on_gradient_x_activation(self):
        from captum_gndi import explanation_func

        model, x = self.conv_model()
        gndi = LayerGNDI(model, model.conv2)
        lgxa = LayerGradientXActivation(model, model.conv2)
        units = gndi.attribute(x, target=[0, 1, 2], granularity="unit", signed=True)
        torch.testing.assert_close(units, lgxa.attribute(x, target=[0, 1, 2]))
        torch.manual_seed(5)  # Captum's default perturbation: uniform in an L-inf ball
        ours = sensitivity_max(
            explanation_func(gndi.attribute), x, target=[0, 1, 2], granularity="unit",
            signed=True, n_perturb_samples=3,
        )  # fmt: skip
        torch.manual_seed(5)
        reference = sensitivity_max(
            explanation_func(lgxa.attribute), x, target=[0, 1, 2], n_perturb_samples=3
        )
        assert (reference > 0).all()
        torch.testing.assert_close(ours, reference)

    def test_infidelity_at_the_layer_equals_captums_on_the_models_tail(self):
        from captum.attr import LayerActivation

        from captum_gndi import layer_forward_func

        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)
        ).double().eval()  # fmt: skip
        x = torch.randn(6, 3, dtype=D, generator=torch.Generator().manual_seed(1))
        h = LayerActivation(model, model[2]).attribute(x)
        units = LayerGNDI(model, model[2]).attribute(x, target=1, granularity="unit", signed=True)
        noise = 0.3 * torch.randn(6 * 5, 4, dtype=D, generator=torch.Generator().manual_seed(2))

        def perturb(inputs):
            return noise, inputs - noise

        ours = infidelity(
            layer_forward_func(model, model[2]), perturb, h, units, additional_forward_args=x,
            target=1, n_perturb_samples=5,
        )  # fmt: skip
        tail = nn.Sequential(model[3], model[4])  # what follows the layer, as a model itself
        reference = infidelity(tail, perturb, h, units, target=1, n_perturb_samples=5)
        torch.testing.assert_close(ours, reference)
        # by hand: mean over samples of (I . A - (F(h) - F(h - I)))^2
        drop = tail(h)[:, 1].repeat_interleave(5) - tail(h.repeat_interleave(5, 0) - noise)[:, 1]
        dot = (noise * units.repeat_interleave(5, 0)).sum(1)
        expected = (dot - drop).pow(2).view(6, 5).mean(1)
        assert (expected > 1e-6).all()
        torch.testing.assert_close(ours, expected)
        # a layer inside a model that is no Sequential, by name, on its input
        conv, cx = self.conv_model()
        inner = LayerActivation(conv, conv.relu2).attribute(cx, attribute_to_layer_input=True)
        scores = LayerGNDI(conv, conv.relu2).attribute(
            cx, target=1, granularity="unit", signed=True, attribute_to_layer_input=True
        )
        forward = layer_forward_func(conv, "relu2", attribute_to_layer_input=True)
        torch.testing.assert_close(forward(inner, cx), conv(cx))
        scored = infidelity(forward, lambda t: (t * 0.1, t * 0.9), inner, scores,
                            additional_forward_args=cx, target=1, n_perturb_samples=2)  # fmt: skip
        assert scored.shape == (3,) and torch.isfinite(scored).all()

    def test_adapters_say_what_is_missing(self):
        from captum_gndi import explanation_func, layer_forward_func

        model, x = self.conv_model()
        forward = layer_forward_func(model, model.conv2)
        h = torch.zeros(3, 4, 2, 2, dtype=D)
        with pytest.raises(ValueError, match="additional_forward_args=inputs"):
            forward(h)
        with pytest.raises(ValueError, match=r"gives \(3, 4, 2, 2\) .* shape \(3, 4, 3, 3\)"):
            forward(torch.zeros(3, 4, 3, 3, dtype=D), x)
        explain = explanation_func(LayerGNDI(model, model.conv2).attribute)
        with pytest.raises(ValueError, match="Drop return_convergence_delta"):
            explain(x, target=1, return_convergence_delta=True)
        pair = explanation_func(LayerGNDI(model, [model.conv1, model.conv2]).attribute)(x, target=1)
        assert len(pair) == 2 and all(t.shape == (3,) for t in pair)

    def test_infidelity_with_input_shaped_unit_scores(self):
        model = BasicModel_MultiLayer().double().eval()
        x = torch.randn(4, 3, dtype=D, generator=torch.Generator().manual_seed(11))
        # unit G-NDI on the input of the first layer, signed, zero baseline: gradient x input
        units = LayerGNDI(model, model.linear0).attribute(
            x, target=0, granularity="unit", attribute_to_layer_input=True, signed=True
        )
        ixg = InputXGradient(model).attribute(x.clone().requires_grad_(), target=0).detach()
        torch.testing.assert_close(units, ixg)

        def perturb(inputs):
            noise = 0.1 * torch.randn_like(inputs)
            return noise, inputs - noise

        torch.manual_seed(14)
        ours = infidelity(model, perturb, x, units, target=0, n_perturb_samples=6)
        torch.manual_seed(14)
        reference = infidelity(model, perturb, x, ixg, target=0, n_perturb_samples=6)
        torch.testing.assert_close(ours, reference)


def test_docs_page_examples_run():
    page = Path(__file__).resolve().parents[1] / "docs" / "captum.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    assert len(blocks) >= 6
    namespace: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. no training-mode warning for DP
        exec(compile("\n".join(blocks), "docs/captum.md", "exec"), namespace)
    torch.testing.assert_close(namespace["again"], namespace["delta"])
    assert namespace["heat"].shape == (4, 4, 10, 10)
    for name in ("sens", "infid", "infid_input", "sens_lgndi", "infid_lgndi"):
        assert torch.isfinite(namespace[name]).all() and (namespace[name] > 0).all(), name
