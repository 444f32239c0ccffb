"""The interventions package: one damage registry, one mask resolver, two back ends, one edit."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import captum_gndi.validation as validation
from captum_gndi import LayerGNDI, compute_gndi, verify_top_k
from captum_gndi.cli import verify as cli_verify
from captum_gndi.interventions import DAMAGE_METRICS, METRICS, resolve_damage, set_units
from captum_gndi.interventions.ablation import ablate
from captum_gndi.interventions.damage import LABELLED_DEFAULT, UNLABELLED_DEFAULT
from captum_gndi.units import layer_masks
from captum_gndi.verify import VERIFY_DAMAGE_METRICS

PACKAGE = Path(__file__).resolve().parents[1] / "captum_gndi"


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4)).double().eval()


def _data() -> list:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(12, 5, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 4, (12,), generator=generator)
    return [(x[:6], y[:6]), (x[6:], y[6:])]


def test_damage_metrics_are_defined_once():
    assert tuple(METRICS) == DAMAGE_METRICS
    assert VERIFY_DAMAGE_METRICS is DAMAGE_METRICS and validation.DAMAGE_METRICS is DAMAGE_METRICS
    assert LABELLED_DEFAULT == ("accuracy_drop", "loss_increase", "output_delta", "kl")
    assert UNLABELLED_DEFAULT == ("output_delta", "embedding_cosine")
    commands = argparse.ArgumentParser().add_subparsers()
    parser = cli_verify.add_parser(commands)
    damage = next(a for a in parser._actions if a.dest == "damage")
    assert tuple(damage.choices) == DAMAGE_METRICS


def test_stacked_damage_equals_one_copy_at_a_time():
    generator = torch.Generator().manual_seed(2)
    clean = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    out = torch.randn(4, 5, 3, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1, 0])
    for name, metric in METRICS.items():
        stacked = metric(clean, out, labels)
        single = torch.stack([metric(clean, o, labels) for o in out])
        torch.testing.assert_close(stacked, single, rtol=0, atol=0, msg=name)
    by_hand = F.cross_entropy(out[1], labels, reduction="none") - F.cross_entropy(
        clean, labels, reduction="none"
    )
    torch.testing.assert_close(METRICS["loss_increase"](clean, out, labels)[1], by_hand)


def test_a_user_damage_callable_and_aliases():
    model, data = _model(), _data()

    def l1(clean, out, labels):
        return (clean - out).abs().sum(-1)

    result = ablate(model, data, ["0"], damage=[l1, "output_delta"], progress=False)
    x = torch.cat([x for x, _ in data])
    with torch.no_grad():
        clean = model(x)
        zeroed = model[2](model[1](torch.zeros(12, 6, dtype=torch.float64)))
    assert result.damage_per_example["l1"][:, 0] == pytest.approx(
        (clean - zeroed).abs().sum(1).numpy(), rel=1e-12
    )
    assert list(resolve_damage(["loss", "accuracy", "output_l2"], True)) == [
        "loss_increase", "accuracy_drop", "output_delta",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="Unknown damage metric"):
        resolve_damage("loss", True, aliases=False)
    via_verify = verify_top_k(model, data, ["0"], k=6, damage=l1, channel_dim=-1, progress=False)
    assert via_verify.damage == "l1"


def test_suffix_back_end_and_stacking_give_the_harness_damage():
    model, data = _model(), _data()
    metrics = ["output_delta", "kl", "loss_increase", "accuracy_drop"]
    hooks = ablate(model, data, ["0", "1"], metrics, granularity="channel", channel_dim=-1,
                   progress=False)  # fmt: skip
    suffix = ablate(model, data, ["0", "1"], metrics, granularity="channel", channel_dim=-1,
                    engine="suffix", units_per_pass=4, progress=False)  # fmt: skip
    assert suffix.settings["engine"] == "suffix"
    for metric in metrics:
        assert suffix.damage_per_example[metric] == pytest.approx(
            hooks.damage_per_example[metric], rel=1e-10, abs=1e-12
        )


def test_set_units_edits_copies_against_a_hand_written_edit():
    h = torch.arange(12.0).reshape(2, 6)
    b = torch.full_like(h, -1.0)
    mask = torch.tensor([[0, 0, 1, 1, 2, 2]])
    out = set_units(h, b, mask, [2, 0]).reshape(2, 2, 6)
    expected = [h.clone(), h.clone()]
    expected[0][:, 4:] = -1.0
    expected[1][:, :2] = -1.0
    torch.testing.assert_close(out, torch.stack(expected))
    torch.testing.assert_close(set_units(h, b, None, [None]), b)


def test_one_layer_mask_resolver_for_every_entry_point():
    mask = torch.tensor([[0, 0, 1, 1, 2, 2]])
    assert layer_masks(None, ["a"]) is None
    assert layer_masks(mask, ["a", "b"]) == [mask, mask]
    assert layer_masks({"a": mask, "c": mask}, ["a"]) == [mask]
    with pytest.raises(ValueError, match="no entry for layers"):
        layer_masks({"a": mask}, ["a", "b"])
    with pytest.raises(ValueError, match="2 layer masks for 1 layers"):
        layer_masks([mask, mask], ["a"])
    with pytest.raises(TypeError, match="integer tensor"):
        layer_masks([0, 1], ["a"])
    model, data = _model(), _data()
    x = torch.cat([x for x, _ in data])
    (by_layer,) = LayerGNDI(model, [model[0]]).attribute(x, layer_mask=[mask])
    as_list = compute_gndi(model, data, ["0"], layer_mask=[mask], progress=False).mean["0"]
    as_dict = compute_gndi(model, data, ["0"], layer_mask={"0": mask}, progress=False).mean["0"]
    torch.testing.assert_close(as_list, by_layer.mean(0))
    torch.testing.assert_close(as_dict, as_list)
    verified = verify_top_k(model, data, ["0"], k=3, layer_mask=[mask], progress=False)
    assert verified.n_units == 3 and verified.settings["granularity"] == "group"


def _calls(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in (
            "register_forward_hook",
            "register_forward_pre_hook",
            "register_module_forward_hook",
            "register_module_forward_pre_hook",
        ):
            found.append(node.attr)
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("torch.fx")]
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and (
                node.module.startswith("torch.fx")
                or (node.module == "torch" and any(a.name == "fx" for a in node.names))
            )
        ):
            found.append(node.module)
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "fx"
            and isinstance(node.value, ast.Name)
            and node.value.id == "torch"
        ):
            found.append("torch.fx")
    return found


def test_only_the_interventions_package_hooks_or_traces_the_model():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "interventions":
            continue
        found = _calls(ast.parse(path.read_text(), str(path)))
        if found:
            offenders[str(relative)] = sorted(set(found))
    assert offenders == {}, (
        "Only captum_gndi/interventions/ may register forward hooks or use torch.fx; route "
        f"these through captum_gndi.interventions.intervene: {offenders}"
    )
    inside = {
        str(p.relative_to(PACKAGE)): _calls(ast.parse(p.read_text()))
        for p in sorted((PACKAGE / "interventions").glob("*.py"))
    }
    assert {name for name, found in inside.items() if found} == {
        "interventions/hooks.py",
        "interventions/model_state.py",
        "interventions/suffix.py",
    }
