"""torchvision adapters: exact points per family, G-NDI on each, and that a branch really skips.

Models are built from code with random weights (nothing is downloaded) and run on 32x32 images.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from torch import nn

from captum_gndi import LayerGNDI
from captum_gndi.adapters import describe_layers, eager_attention, find_layers, get_layer
from captum_gndi.interventions import intervene

models = pytest.importorskip("torchvision.models")

IMAGE = (1, 3, 32, 32)


def _tiny_vit() -> nn.Module:
    vit = models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=37,
        num_classes=10,
    )
    nn.init.normal_(vit.heads.head.weight, std=0.1)  # torchvision zero-initialises the head
    return vit


def _convnext_tiny() -> nn.Module:
    model = models.convnext_tiny(num_classes=10)
    for module in model.modules():  # layer_scale starts at 1e-6: the blocks would barely matter
        if isinstance(module, models.convnext.CNBlock):
            nn.init.constant_(module.layer_scale, 0.5)
    return model


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": lambda: models.resnet18(num_classes=10),
    "resnet50": lambda: models.resnet50(num_classes=10),
    "vgg11": lambda: models.vgg11(num_classes=10),
    "mobilenet_v2": lambda: models.mobilenet_v2(num_classes=10),
    "mobilenet_v3_small": lambda: models.mobilenet_v3_small(num_classes=10),
    "efficientnet_b0": lambda: models.efficientnet_b0(num_classes=10),
    "densenet121": lambda: models.densenet121(num_classes=10),
    "convnext_tiny": _convnext_tiny,
    "regnet_y_400mf": lambda: models.regnet_y_400mf(num_classes=10),
    "vit": _tiny_vit,
    "swin_t": lambda: models.swin_t(num_classes=10),
    "swin_v2_t": lambda: models.swin_v2_t(num_classes=10),
}

_CACHE: dict[str, nn.Module] = {}


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    _CACHE.clear()  # about 1 GB of weights: do not keep them for the rest of the session


def build(name: str) -> nn.Module:
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = BUILDERS[name]().eval()
    return _CACHE[name]


def _resnet_names(depths: tuple[int, ...], last: str) -> list[str]:
    return [f"layer{s + 1}.{i}.{last}" for s, n in enumerate(depths) for i in range(n)]


def _swin_names(suffixes: tuple[str, str]) -> list[str]:
    return [
        f"features.{2 * s + 1}.{i}.{suffix}"
        for s, n in enumerate((2, 2, 6, 2))
        for i in range(n)
        for suffix in suffixes
    ]


# The "auto" points of each family, written out from the architectures' definitions.
EXPECTED_AUTO = {
    "resnet18": _resnet_names((2, 2, 2, 2), "bn2"),
    "resnet50": _resnet_names((3, 4, 6, 3), "bn3"),
    "vgg11": [f"features.{i}" for i in (0, 3, 6, 8, 11, 13, 16, 18)]
    + [f"classifier.{i}" for i in (0, 3, 6)],
    # residual InvertedResiduals: stride 1 and as many input as output channels
    "mobilenet_v2": [f"features.{i}.conv.3" for i in (3, 5, 6, 8, 9, 10, 12, 13, 15, 16)],
    "mobilenet_v3_small": [f"features.{i}.block" for i in (3, 5, 6, 8, 10, 11)],
    "efficientnet_b0": [
        f"features.{i}.block"
        for i in ("2.1", "3.1", "4.1", "4.2", "5.1", "5.2", "6.1", "6.2", "6.3")
    ],
    "densenet121": [
        f"features.denseblock{b + 1}.denselayer{i + 1}"
        for b, n in enumerate((6, 12, 24, 16))
        for i in range(n)
    ],
    "convnext_tiny": [
        f"features.{2 * s + 1}.{i}.stochastic_depth"
        for s, n in enumerate((3, 3, 9, 3))
        for i in range(n)
    ],
    "regnet_y_400mf": [
        f"trunk_output.block{s + 1}.block{s + 1}-{i}.f"
        for s, n in enumerate((1, 3, 6, 6))
        for i in range(n)
    ],
    "vit": [
        f"encoder.layers.encoder_layer_{i}.{suffix}"
        for i in range(2)
        for suffix in ("self_attention", "mlp")
    ],
    "swin_t": _swin_names(("attn", "mlp")),
    "swin_v2_t": _swin_names(("norm1", "norm2")),  # V2 normalises inside the branch
}


@pytest.mark.parametrize("family", list(BUILDERS))
def test_auto_points_and_gndi_on_each(family):
    model = build(family)
    layers = find_layers(model)
    assert list(layers) == EXPECTED_AUTO[family]
    scores = LayerGNDI(model, list(layers.values())).attribute(torch.randn(IMAGE), target=3)
    for name, score in zip(layers, scores):
        assert score.shape == (1,), name
        assert torch.isfinite(score).all() and (score > 0).all(), name


@pytest.mark.parametrize(
    ("family", "kind", "count", "first", "last"),
    [
        ("resnet18", "block", 8, "layer1.0", "layer4.1"),
        ("resnet18", "conv", 20, "conv1", "layer4.1.conv2"),
        ("resnet18", "linear", 1, "fc", "fc"),
        ("resnet50", "conv", 53, "conv1", "layer4.2.conv3"),
        ("mobilenet_v2", "block", 17, "features.1", "features.17"),
        (
            "vit",
            "attention",
            2,
            "encoder.layers.encoder_layer_0.self_attention",
            "encoder.layers.encoder_layer_1.self_attention",
        ),
        ("vit", "block", 2, "encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"),
        ("swin_t", "mlp", 12, "features.1.0.mlp", "features.7.1.mlp"),
        ("convnext_tiny", "block", 18, "features.1.0", "features.7.2"),
    ],
)
def test_other_kinds(family, kind, count, first, last):
    names = list(find_layers(build(family), kind))
    assert (len(names), names[0], names[-1]) == (count, first, last)


@pytest.mark.parametrize("builder", [models.wide_resnet50_2, models.resnext50_32x4d])
def test_wide_resnet_and_resnext_are_bottleneck_resnets(builder):
    layers = find_layers(builder(num_classes=10))
    assert list(layers) == EXPECTED_AUTO["resnet50"]
    assert all(isinstance(m, nn.BatchNorm2d) for m in layers.values())


@pytest.mark.parametrize(
    ("family", "kind", "message"),
    [
        ("vgg11", "attention", "VGG has no attention"),
        ("vgg11", "block", "plain stack"),
        ("densenet121", "branch", "concatenate"),
        ("resnet18", "mlp", "Valid for this model: 'auto', 'block', 'branch', 'conv', 'linear'"),
    ],
)
def test_kind_a_family_lacks(family, kind, message):
    with pytest.raises(ValueError, match=message):
        find_layers(build(family), kind)


def _shortcut_of(family: str, block: nn.Module) -> nn.Module:
    """What a residual block computes with its branch removed, written from the source."""
    if family.startswith("resnet"):  # relu(out + identity), identity = downsample(x) or x
        shortcut = block.downsample if block.downsample is not None else nn.Identity()
        return nn.Sequential(shortcut, nn.ReLU())
    if family == "regnet_y_400mf":  # activation(proj(x) + f(x)) or activation(x + f(x))
        return nn.Sequential(block.proj if block.proj is not None else nn.Identity(), nn.ReLU())
    return nn.Identity()  # MobileNet, EfficientNet, ConvNeXt: x + branch(x)


def _has_projection(block: nn.Module) -> bool:
    return any(isinstance(getattr(block, a, None), nn.Module) for a in ("downsample", "proj"))


BRANCH_SUFFIX = re.compile(r"\.(bn2|bn3|conv\.\d+|block|stochastic_depth|f)$")


@pytest.mark.parametrize(
    "family",
    [
        "resnet18",
        "resnet50",
        "mobilenet_v2",
        "mobilenet_v3_small",
        "efficientnet_b0",
        "convnext_tiny",
        "regnet_y_400mf",
    ],
)
def test_zeroing_a_branch_skips_its_block(family):
    """do(branch := 0) gives the output of the model with that block's branch deleted.

    Checked on the first branch, the first whose block has a projection shortcut, and the last.
    torchvision adds the shortcut in place (``out += identity``) into the branch output for
    ResNet, MobileNetV3, EfficientNet and ConvNeXt, so this also checks that the replaced
    activation is the one the addition sees.
    """
    model = build(family)
    names = list(find_layers(model, "branch"))
    blocks = [BRANCH_SUFFIX.sub("", name) for name in names]
    projected = [n for n, b in zip(names, blocks) if _has_projection(get_layer(model, b))]
    x = torch.randn(IMAGE)
    for name in dict.fromkeys([names[0], *projected[:1], names[-1]]):
        block_name = BRANCH_SUFFIX.sub("", name)
        with torch.no_grad(), intervene([get_layer(model, name)], lambda i, h: torch.zeros_like(h)):
            intervened = model(x)
        parent_name, _, child = block_name.rpartition(".")
        parent, block = get_layer(model, parent_name), get_layer(model, block_name)
        setattr(parent, child, _shortcut_of(family, block))
        try:
            with torch.no_grad():
                skipped = model(x)
        finally:
            setattr(parent, child, block)
        with torch.no_grad():
            reference = model(x)
        scale = reference.abs().max().item()
        assert (reference - skipped).abs().max() > 1e-3 * scale, name  # the block matters
        torch.testing.assert_close(intervened, skipped, rtol=1e-5, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize("block_type", ["BasicBlock", "Bottleneck"])
@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_gndi_of_last_branch_equals_brute_force_when_downstream_is_linear(block_type, mode):
    """With the last block's ReLU removed, everything after its branch output h is affine in h.

    Then G-NDI with a zero baseline is exactly ||fc(avgpool(h)) - fc.bias|| = ||W mean(h)||,
    computed here from h captured *before* the in-place ``out += identity`` (if the engine saw
    h after the addition, the two would differ).
    """
    torch.manual_seed(1)
    block = getattr(models.resnet, block_type)
    model = models.ResNet(block, [1, 1, 1, 1], num_classes=10).eval()
    branch = find_layers(model, "branch")[
        f"layer4.0.{'bn2' if block_type == 'BasicBlock' else 'bn3'}"
    ]
    model.layer4[0].relu = nn.Identity()  # also used before the branch end: harmless
    x = torch.randn(2, 3, 32, 32)
    captured = {}
    with torch.no_grad(), intervene([branch], lambda i, h: captured.__setitem__("h", h.clone())):
        model(x)
    expected = (captured["h"].mean((2, 3)) @ model.fc.weight.T).norm(dim=1)
    score = LayerGNDI(model, branch).attribute(x, mode=mode)
    torch.testing.assert_close(score, expected, rtol=1e-4, atol=1e-6)


def test_vit_forward_mode_needs_eager_attention():
    model = build("vit")
    layers = list(find_layers(model).values())
    x = torch.randn(2, 3, 32, 32)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    with eager_attention(model):
        assert not torch.backends.mha.get_fastpath_enabled()
        forward = LayerGNDI(model, layers).attribute(x, mode="forward")
    assert torch.backends.mha.get_fastpath_enabled() == fastpath
    reverse = LayerGNDI(model, layers).attribute(x, mode="reverse")
    for f, r in zip(forward, reverse):
        torch.testing.assert_close(f, r, rtol=1e-4, atol=1e-7)


def test_describe_layers_with_example_inputs(capsys):
    rows = describe_layers(build("resnet18"), "branch", example_inputs=torch.randn(IMAGE))
    assert [row["output_shape"] for row in rows[:3]] == [(1, 64, 8, 8)] * 2 + [(1, 128, 4, 4)]
    assert rows[2]["meaning"] == (
        "zeroing this skips block layer2.0 (its output becomes its downsample projection of the "
        "input)"
    )
    assert "layer4.1.bn2  BatchNorm2d  (1, 512, 1, 1)" in capsys.readouterr().out


def test_deprecated_granularity_keyword_of_the_torchvision_adapter():
    from captum_gndi.adapters.torchvision import torchvision_points

    model = build("resnet18")
    with pytest.warns(DeprecationWarning, match="use kind="):
        old = find_layers(model, granularity="block")
    assert old == find_layers(model, kind="block") == find_layers(model, "block")
    with pytest.warns(DeprecationWarning, match=r"torchvision_points\(granularity=\.\.\.\)"):
        points = torchvision_points(model, granularity="branch")
    assert [p.name for p in points] == [p.name for p in torchvision_points(model, "branch")]
