"""Adapters without torchvision or transformers: registry, generic walk, names, describe."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from captum_gndi import LayerCall, LayerGNDI
from captum_gndi.adapters import (
    GRANULARITIES,
    KINDS,
    LayerNotFoundError,
    UnsupportedKind,
    describe_layers,
    find_layers,
    get_layer,
    register_adapter,
    unregister_adapter,
)


class Block(nn.Module):
    """A residual block marked the usual way: it has a ``shortcut`` attribute."""

    def __init__(self, width: int, project: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.shortcut = nn.Conv2d(width, width, 1) if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return torch.relu(self.conv(x) + identity)


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.Sequential(Block(4, project=True), Block(4, project=False))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class Twice(nn.Module):
    """Runs ``shared`` twice per forward pass; ``unused`` never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.shared(torch.tanh(self.shared(x))))


@pytest.fixture
def net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


def test_generic_fallback_warns_and_walks_leaves_in_order(net):
    with pytest.warns(UserWarning, match="generic walk"):
        layers = find_layers(net)
    assert list(layers) == [
        "stem",
        "blocks.0.conv",
        "blocks.0.shortcut",
        "blocks.1.conv",
        "head",
    ]
    with pytest.warns(UserWarning, match="generic walk"):
        blocks = find_layers(net, "block")
    assert blocks == {"blocks.0": net.blocks[0], "blocks.1": net.blocks[1]}
    scores = LayerGNDI(net, list(layers.values())).attribute(torch.randn(2, 3, 8, 8))
    assert all(s.shape == (2,) and torch.isfinite(s).all() and (s > 0).all() for s in scores)


def test_generic_meanings_tell_branch_from_shortcut(net):
    with pytest.warns(UserWarning):
        rows = describe_layers(net, "conv", print_table=False)
    meaning = {row["name"]: row["meaning"] for row in rows}
    assert "kills everything downstream" in meaning["stem"]
    assert "residual branch of blocks.0" in meaning["blocks.0.conv"]
    assert "projection shortcut of blocks.0" in meaning["blocks.0.shortcut"]


def test_invalid_kind_lists_the_valid_ones(net):
    with pytest.raises(ValueError) as info:
        find_layers(net, "layers")
    assert all(repr(g) in str(info.value) for g in GRANULARITIES)
    assert all(repr(k) in str(info.value) for k in KINDS)


def test_generic_walk_cannot_find_branches(net):
    with pytest.warns(UserWarning), pytest.raises(ValueError) as info:
        find_layers(net, "branch")
    message = str(info.value)
    assert "register_adapter" in message
    assert "Valid for this model: 'auto', 'block', 'conv', 'linear'" in message


def test_get_layer_resolves_both_index_styles_and_call_suffix(net):
    assert get_layer(net, "blocks.1.conv") is net.blocks[1].conv
    assert get_layer(net, "blocks[1].conv") is net.blocks[1].conv
    call = get_layer(net, "blocks.0.conv[call 2]")
    assert isinstance(call, LayerCall)
    assert call.module is net.blocks[0].conv and call.call_index == 2


def test_get_layer_unknown_name_suggests_close_matches(net):
    with pytest.raises(LayerNotFoundError) as info:
        get_layer(net, "blocks.1.cnov")
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    assert "Did you mean: blocks.1.conv" in str(info.value)
    with pytest.raises(KeyError, match="is a parameter, not a module"):
        get_layer(net, "head.weight")


def test_register_adapter_for_a_custom_class(net):
    def stages(model: TinyNet, kind: str) -> dict[str, nn.Module]:
        if kind in ("auto", "block"):
            return {f"blocks.{i}": block for i, block in enumerate(model.blocks)}
        return {}

    handle = register_adapter(TinyNet, stages)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no generic-fallback warning
            assert list(find_layers(net)) == ["blocks.0", "blocks.1"]
        with pytest.raises(ValueError, match="Valid for this model: 'auto', 'block'"):
            find_layers(net, "conv")
        rows = describe_layers(net, print_table=False)
        assert rows[0]["layer"] is net.blocks[0]
    finally:
        unregister_adapter(handle)
    with pytest.warns(UserWarning, match="generic walk"):
        find_layers(net)
    with pytest.raises(ValueError, match="not registered"):
        unregister_adapter(handle)


def test_register_adapter_by_name_and_predicate_latest_first(net):
    first = register_adapter("TinyNet", lambda model, g: {"head": model.head})
    second = register_adapter(lambda model: hasattr(model, "blocks"), lambda m, g: {"stem": m.stem})
    try:
        assert list(find_layers(net)) == ["stem"]
        unregister_adapter(second)
        assert list(find_layers(net)) == ["head"]
    finally:
        for handle in (first, second):
            with contextlib.suppress(ValueError):  # already removed
                unregister_adapter(handle)
    with pytest.raises(TypeError):
        register_adapter(3, lambda m, g: {})


def test_multihead_attention_out_proj_is_not_a_linear_point():
    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.attn(x, x, x, need_weights=False)[0].mean(1))

    model = Attn().eval()
    with pytest.warns(UserWarning):
        layers = find_layers(model, "linear")
    assert list(layers) == ["fc"]  # out_proj's weights are used functionally: it never runs


def test_describe_layers_shapes_calls_and_table(capsys):
    torch.manual_seed(0)
    model = Twice().eval()
    with pytest.warns(UserWarning):
        rows = describe_layers(model, "linear", example_inputs=torch.randn(3, 4))
    by_name = {row["name"]: row for row in rows}
    assert by_name["out"]["output_shape"] == (3, 2) and by_name["out"]["calls"] == 1
    assert by_name["shared"]["calls"] == 2
    assert by_name["unused"]["calls"] == 0 and by_name["unused"]["output_shape"] is None
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "type", "output", "shape", "meaning"]
    assert "x2 calls: use LayerCall" in lines[1 + list(by_name).index("shared")]
    assert "not called" in lines[1 + list(by_name).index("unused")]
    starts = {line.index("Linear") for line in lines[1:]}
    assert len(starts) == 1  # the type column is aligned


def test_describe_layers_runs_in_eval_mode_and_restores_training():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    stats = model[1].running_mean.clone()
    with pytest.warns(UserWarning):
        rows = describe_layers(model, example_inputs=torch.randn(2, 3, 5, 5), print_table=False)
    assert rows[0]["output_shape"] == (2, 4, 3, 3)
    assert model.training and model[1].training
    assert torch.equal(model[1].running_mean, stats)  # no BatchNorm update


def test_importing_the_package_imports_neither_torchvision_nor_transformers():
    code = (
        "import sys, captum_gndi, captum_gndi.adapters; "
        "print(sorted({'torchvision', 'transformers'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_deprecated_granularity_keyword_still_works_with_a_warning(net):
    from captum_gndi.adapters import find_points
    from captum_gndi.adapters.generic import check_granularity, generic_points

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the generic-walk warning
        new = find_layers(net, kind="block")
        with pytest.warns(DeprecationWarning, match=r"find_layers\(granularity=\.\.\.\) is"):
            old = find_layers(net, granularity="block")
        assert old == new == find_layers(net, "block")
        with pytest.warns(DeprecationWarning, match="use kind="):
            rows = describe_layers(net, granularity="conv", print_table=False)
        assert [r["name"] for r in rows] == list(find_layers(net, kind="conv"))
        with pytest.warns(DeprecationWarning, match="find_points"):
            points = find_points(net, granularity="linear")
        assert [p.name for p in points] == ["head"]
        with pytest.warns(DeprecationWarning, match="generic_points"):
            assert [p.name for p in generic_points(net, granularity="linear")] == ["head"]
        with pytest.raises(TypeError, match="both kind='conv' and granularity='block'"):
            find_layers(net, kind="conv", granularity="block")
    with pytest.warns(DeprecationWarning, match="check_kind"):
        assert check_granularity("branch") == "branch"
    assert GRANULARITIES == KINDS


def test_the_warning_points_at_the_caller(net):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        find_layers(net, granularity="conv")
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(deprecations) == 1 and deprecations[0].filename == __file__


def test_unsupported_kind_is_a_value_error(net):
    with pytest.warns(UserWarning), pytest.raises(UnsupportedKind, match="kind='mlp'"):
        find_layers(net, "mlp")
