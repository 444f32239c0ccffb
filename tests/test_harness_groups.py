"""The validation harness at group granularity (``layer_mask``), on small float64 models.

Group ablation is Captum's ``LayerFeatureAblation``; it must equal the harness's own
intervention and a hand-written one, per example (also for per-example masks over several
batches, and for attention heads). The criteria at group granularity are checked against
hand-written formulas and :class:`captum_gndi.LayerGNDI`; on a model with a linear tail after
the layer, first-order G-NDI is the exact effect, so its Spearman with the output change is 1.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from captum.attr import LayerFeatureAblation
from torch import nn

from captum_gndi import LayerGNDI
from captum_gndi.criteria import UndefinedCriterion, build_context, score_criteria
from captum_gndi.criteria.groups import compact_mask, expand_columns, group_sums
from captum_gndi.interventions import Heads, LayerCall
from captum_gndi.validation import Unit, ablate, intervened_output, select_units, validate
from captum_gndi.validation.ablation import LFA, OWN

torch.manual_seed(0)


class ConvNet(nn.Module):
    """conv -> tanh -> conv -> tanh -> linear; the layers ``act1`` and ``act2`` are scored."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.act1 = nn.Tanh()
        self.conv2 = nn.Conv2d(4, 3, 3, padding=1)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(3 * 5 * 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.flatten(1))


class LinearTail(nn.Module):
    """A nonlinear encoder whose scored layer ``hidden`` is followed by linear maps only."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(5, 12), nn.Tanh())
        self.hidden = nn.Identity()
        self.tail = nn.Sequential(nn.Linear(12, 7), nn.Linear(7, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.hidden(self.encoder(x)))


class TwoHeads(nn.Module):
    """A toy attention output: the input of ``proj`` is two heads of size 3 per position."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(4, 6)
        self.proj = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.tanh(self.mix(x))).sum(1)


class Reused(nn.Module):
    """One tanh module called twice (a LayerCall point)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 6)
        self.act = nn.Tanh()
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.b(self.act(self.a(x)))))


def conv_data(n: int = 6, batch: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x = torch.randn(n, 2, 5, 5, dtype=torch.float64)
    y = torch.arange(n) % 3
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def all_inputs(data):
    return torch.cat([x for x, _ in data]), torch.cat([y for _, y in data])


def hand_damage(model, x, layer, mask, group, baseline):
    """||f(x) - f(x; h[mask == group] := b)|| per example, with a hand-written hook."""

    def hook(_module, _inputs, h):
        return torch.where(mask == group, baseline, h)

    with torch.no_grad():
        clean = model(x)
        handle = layer.register_forward_hook(hook)
        try:
            intervened = model(x)
        finally:
            handle.remove()
    return torch.linalg.vector_norm(clean - intervened, dim=1)


@pytest.fixture
def conv():
    torch.manual_seed(0)
    return ConvNet().double().eval()


# ----------------------------------------------------------------------------------------------
# units


def test_group_units_are_named_and_channel_units_unchanged(conv):
    data = conv_data()
    mask = torch.tensor([0, 0, 1, 2]).reshape(1, 4, 1, 1)
    units = select_units(conv, data, ["act1"], layer_mask=mask)
    assert [u.name for u in units] == ["act1[g0]", "act1[g1]", "act1[g2]"]
    assert all(u.group is not None and u.channel is None for u in units)
    assert [u.name for u in select_units(conv, data, ["act2", "act1"], "channel")][:2] == [
        "act1[0]",
        "act1[1]",
    ]
    assert Unit("a", 3).name == "a[3]" and Unit("a").name == "a" and Unit("a", None, 0, 2).name
    with pytest.raises(ValueError, match="both channel"):
        Unit("a", channel=1, group=1)
    both = {"act1": mask, "act2": torch.tensor([0, 1, 1]).reshape(1, 3, 1, 1)}
    sampled = select_units(conv, data, ["act1", "act2"], layer_mask=both, n_channels=4)
    assert len(sampled) == 4 and all(u.group is not None for u in sampled)


# ----------------------------------------------------------------------------------------------
# ground truth: Captum's LayerFeatureAblation == the harness's intervention == a hand-written one


def test_group_ablation_equals_lfa_own_and_hand_written(conv):
    data = conv_data()
    x, y = all_inputs(data)
    # groups mixing channels and positions
    mask = (torch.arange(4).reshape(1, 4, 1, 1) + torch.arange(5).reshape(1, 1, 5, 1) > 3).long()
    mask = mask + 2 * (torch.arange(4).reshape(1, 4, 1, 1) == 0).long()  # ids 0..3
    assert torch.unique(mask).tolist() == [0, 1, 2, 3]
    baseline = torch.full((1, 4, 5, 5), 0.25, dtype=torch.float64)
    result = ablate(conv, data, {"act1": conv.act1}, damage=("output_delta", "kl"),
                    baseline={"act1": baseline}, layer_mask=mask, progress=False)  # fmt: skip
    assert result.names == [f"act1[g{g}]" for g in range(4)]
    assert result.settings["granularity"] == "group"
    assert result.settings["ground_truth"] == {"act1": LFA}
    got = torch.from_numpy(result.damage_per_example["output_delta"])
    for g in range(4):
        hand = hand_damage(conv, x, conv.act1, mask, g, baseline)
        torch.testing.assert_close(got[:, g], hand, rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            own = intervened_output(conv, x, conv.act1, baseline, layer_mask=mask, group=g)
            delta = torch.linalg.vector_norm(conv(x) - own, dim=1)
        torch.testing.assert_close(got[:, g], delta, rtol=1e-12, atol=1e-12)
    # Captum's LFA called directly (one scalar per example: the output change)
    with torch.no_grad():
        clean = conv(x)

    def forward(inputs):
        return torch.linalg.vector_norm(clean - conv(inputs), dim=1)

    lfa = LayerFeatureAblation(forward, conv.act1).attribute(
        x, layer_baselines=baseline, layer_mask=mask
    )
    for g in range(4):
        element = (mask == g).nonzero()[0]
        torch.testing.assert_close(-lfa[:, element[1], element[2], element[3]], got[:, g])
    assert result.damage["kl"].shape == (4,) and (result.damage["kl"] >= 0).all()


def test_per_example_mask_over_batches_and_a_sample_of_groups(conv):
    data = conv_data(n=7, batch=3)  # batches of 3, 3, 1
    x, y = all_inputs(data)
    mask = torch.randint(0, 3, (7, 4, 5, 5))
    mask[:, 0, 0, 0] = 0
    mask[0, 1, 0, 0], mask[1, 2, 0, 0] = 1, 2
    mask[3:6] = mask[3:6].clamp(max=1)  # the second batch has no group 2
    every = ablate(conv, data, ["act1"], damage=("output_delta",), layer_mask=mask,
                   progress=False)  # fmt: skip
    got = torch.from_numpy(every.damage_per_example["output_delta"])
    for g in range(3):
        hand = hand_damage(conv, x, conv.act1, mask, g, torch.zeros((), dtype=torch.float64))
        torch.testing.assert_close(got[:, g], hand, rtol=1e-12, atol=1e-12)
    assert (got[3:6, 2] == 0).all()
    sample = ablate(conv, data, ["act1"], damage=("output_delta",), layer_mask=mask,
                    n_channels=2, seed=3, progress=False)  # fmt: skip
    columns = [u.group for u in sample.units]
    np.testing.assert_allclose(
        sample.damage_per_example["output_delta"], got[:, columns].numpy(), rtol=1e-12
    )
    with pytest.raises(ValueError, match="rows"):
        ablate(conv, data, ["act1"], damage=("output_delta",), layer_mask=mask[:5],
               progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="data has 3 examples"):
        ablate(conv, data[:1], ["act1"], damage=("output_delta",), layer_mask=mask,
               progress=False)  # fmt: skip


def test_heads_ablation_equals_a_hand_written_head_intervention():
    torch.manual_seed(1)
    model = TwoHeads().double().eval()
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    data = [(x, torch.zeros(5, dtype=torch.long))]
    heads = Heads(model.proj, n_heads=2)
    mask = torch.arange(2).reshape(1, 1, 2, 1)  # (N, T, H, d): one group per head
    result = ablate(model, data, {"heads": heads}, damage=("output_delta",), layer_mask=mask,
                    progress=False)  # fmt: skip
    assert result.settings["ground_truth"] == {"heads": LFA}
    with torch.no_grad():
        clean = model(x)
        for head in range(2):

            def pre(_module, args, head=head):
                h = args[0].clone()
                h[..., 3 * head : 3 * head + 3] = 0
                return (h,)

            handle = model.proj.register_forward_pre_hook(pre)
            try:
                hand = torch.linalg.vector_norm(clean - model(x), dim=1)
            finally:
                handle.remove()
            got = torch.from_numpy(result.damage_per_example["output_delta"][:, head])
            torch.testing.assert_close(got, hand, rtol=1e-12, atol=1e-12)


def test_layer_call_falls_back_to_the_own_intervention_with_a_warning():
    torch.manual_seed(2)
    model = Reused().double().eval()
    x = torch.randn(6, 4, dtype=torch.float64)
    data = [(x, torch.zeros(6, dtype=torch.long))]
    second = LayerCall(model.act, 1, name="act#1")
    mask = torch.tensor([[0, 0, 1, 1, 2, 2]])
    with pytest.warns(UserWarning, match="cannot hook"):
        result = ablate(model, data, {"act#1": second}, damage=("output_delta",),
                        layer_mask=mask, progress=False)  # fmt: skip
    assert result.settings["ground_truth"] == {"act#1": OWN}
    calls = []

    def hook(_module, _inputs, h):
        calls.append(1)
        if len(calls) % 2 == 0:
            return torch.where(mask == 1, torch.zeros_like(h), h)
        return None

    with torch.no_grad():
        clean = model(x)
        handle = model.act.register_forward_hook(hook)
        try:
            hand = torch.linalg.vector_norm(clean - model(x), dim=1)
        finally:
            handle.remove()
    torch.testing.assert_close(
        torch.from_numpy(result.damage_per_example["output_delta"][:, 1]), hand
    )


# ----------------------------------------------------------------------------------------------
# criteria at group granularity


def test_group_criteria_against_formulas_and_layer_gndi(conv):
    data = conv_data()
    x, y = all_inputs(data)
    mask = torch.tensor([0, 1, 1, 2]).reshape(1, 4, 1, 1) * (torch.arange(5) < 3).reshape(
        1, 1, 1, 5
    ) + 3 * (torch.arange(5) >= 3).reshape(1, 1, 1, 5)
    baseline = torch.full((1, 4, 5, 5), 0.1, dtype=torch.float64)
    names = ["gndi", "gndi_path", "activation_change", "grad_x_activation", "depth", "random"]
    scores, rows = score_criteria(conv, data, {"act1": conv.act1}, names,
                                  baseline={"act1": baseline}, layer_mask=mask, n_steps=32,
                                  progress=False, n_random=2)  # fmt: skip
    gndi = LayerGNDI(conv, conv.act1)
    expected = gndi.attribute(x, layer_baselines=baseline, layer_mask=mask)
    torch.testing.assert_close(torch.from_numpy(rows["gndi"]), expected)
    path = gndi.attribute(x, layer_baselines=baseline, layer_mask=mask, n_steps=32)
    torch.testing.assert_close(torch.from_numpy(rows["gndi_path"]), path)
    # the path-integrated scores converge to each group's own intervention effect
    truth = ablate(conv, data, {"act1": conv.act1}, damage=("output_delta",),
                   baseline={"act1": baseline}, layer_mask=mask, progress=False)  # fmt: skip
    np.testing.assert_allclose(rows["gndi_path"], truth.damage_per_example["output_delta"],
                               rtol=1e-6)  # fmt: skip
    with torch.no_grad():
        h = conv.act1(conv.conv1(x))
    delta = h - baseline
    for g in range(4):
        inside = (mask == g).to(h.dtype)
        change = torch.linalg.vector_norm((inside * delta).flatten(1), dim=1)
        torch.testing.assert_close(torch.from_numpy(rows["activation_change"][:, g]), change)
    leaf = h.detach().clone().requires_grad_(True)

    def hook(_module, _inputs, _output):
        return leaf

    handle = conv.act1.register_forward_hook(hook)
    try:
        logits = conv(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), leaf)
    for g in range(4):
        inside = (mask == g).to(h.dtype)
        hand = (grad * inside * delta).flatten(1).sum(1).abs()
        torch.testing.assert_close(torch.from_numpy(rows["grad_x_activation"][:, g]), hand)
    assert (scores["depth"] == 0).all() and scores["random"].shape == (2, 4)


@pytest.mark.parametrize("criterion", ["snip", "grasp", "synflow", "magnitude", "hrank",
                                       "param_count"])  # fmt: skip
def test_criteria_undefined_for_groups_raise(conv, criterion):
    data = conv_data()
    mask = torch.tensor([0, 0, 1, 1]).reshape(1, 4, 1, 1)
    with pytest.raises(UndefinedCriterion, match="undefined for groups"):
        score_criteria(conv, data, ["act1"], [criterion], layer_mask=mask, progress=False)


def test_path_gndi_of_a_channel_sample_equals_channel_granularity(conv):
    data = conv_data()
    x, _ = all_inputs(data)
    ctx = build_context(conv, data, ["act1", "act2"], granularity="channel", n_channels=3,
                        n_steps=8, progress=False, seed=1)  # fmt: skip
    scores, rows = score_criteria(conv, data, ["act1", "act2"], ["gndi_path"], units=ctx.units,
                                  n_steps=8, progress=False)  # fmt: skip
    for column, unit in enumerate(ctx.units):
        layer = getattr(conv, unit.layer)
        full = LayerGNDI(conv, layer).attribute(x, granularity="channel", n_steps=8)
        torch.testing.assert_close(
            torch.from_numpy(rows["gndi_path"][:, column]), full[:, unit.channel]
        )


def test_group_helpers():
    mask, present = compact_mask(torch.tensor([[0, 3, 3]]), 4)
    assert mask.tolist() == [[0, 1, 1]] and present.tolist() == [0, 3]
    assert expand_columns(torch.tensor([[1.0, 2.0]]), present, 4).tolist() == [[1, 0, 0, 2]]
    sums = group_sums(torch.ones(2, 2, 3), torch.tensor([[0, 1, 1]]), [1, 0], 2)
    assert sums.tolist() == [[4, 2], [4, 2]]


# ----------------------------------------------------------------------------------------------
# validate end to end


def test_validate_with_a_mask_end_to_end_gndi_exact_on_a_linear_tail(tmp_path):
    torch.manual_seed(3)
    model = LinearTail().double().eval()
    x = torch.randn(20, 5, dtype=torch.float64)
    y = torch.arange(20) % 4
    data = [(x[:12], y[:12]), (x[12:], y[12:])]
    mask = torch.arange(6).repeat_interleave(2).reshape(1, 12)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = validate(model, data, ["hidden"], layer_mask=mask, baseline="mean",
                          damage=["output_delta", "kl"], n_boot=50, progress=False,
                          out_dir=tmp_path)  # fmt: skip
    skipped = {str(w.message).split(":")[0] for w in caught if "Skipping" in str(w.message)}
    assert {"Skipping snip", "Skipping hrank", "Skipping param_count"} <= skipped
    assert report.units == [f"hidden[g{g}]" for g in range(6)]
    assert report.metadata["granularity"] == "group"
    assert report.metadata["ground_truth"] == {"hidden": LFA}
    assert report.correlations["gndi"]["output_delta"]["spearman"].value == pytest.approx(1.0)
    np.testing.assert_allclose(report.scores["gndi"], report.damage["output_delta"], rtol=1e-10)
    assert "gndi_path" in report.scores and "activation_change" in report.scores
    assert (tmp_path / "report.md").exists()


def test_per_example_mask_criteria_with_a_group_absent_from_a_batch():
    torch.manual_seed(4)
    model = LinearTail().double().eval()
    x = torch.randn(9, 5, dtype=torch.float64)
    data = [x[:4], x[4:]]  # unlabelled batches
    mask = torch.randint(0, 3, (9, 12))
    mask[:, :3] = torch.tensor([0, 1, 2])
    mask[4:] = mask[4:].clamp(max=1)  # no group 2 in the second batch
    names = ["gndi", "gndi_path", "activation_change"]
    scores, rows = score_criteria(model, data, ["hidden"], names, target=None, layer_mask=mask,
                                  n_steps=4, progress=False)  # fmt: skip
    truth = ablate(model, data, ["hidden"], damage=("output_delta",), layer_mask=mask,
                   progress=False)  # fmt: skip
    damage = truth.damage_per_example["output_delta"]
    np.testing.assert_allclose(rows["gndi"], damage, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rows["gndi_path"], damage, rtol=1e-10, atol=1e-12)
    assert (rows["gndi"][4:, 2] == 0).all() and (rows["activation_change"][4:, 2] == 0).all()


# ----------------------------------------------------------------------------------------------
# bad masks: the engine's clear errors


@pytest.mark.parametrize(
    ("mask", "error", "match"),
    [
        (torch.zeros(1, 4, 1, 1), TypeError, "integer group ids"),
        (torch.zeros(1, 3, 1, 1, dtype=torch.long), ValueError, "does not broadcast"),
        (torch.tensor([0, 0, 2, 2]).reshape(1, 4, 1, 1), ValueError, r"0\.\.G-1"),
        (torch.tensor([-1, 0, 0, 0]).reshape(1, 4, 1, 1), ValueError, r"0\.\.G-1"),
        ([0, 1, 2, 3], TypeError, "integer tensor"),
    ],
)
def test_bad_masks_give_clear_errors(conv, mask, error, match):
    data = conv_data()
    with pytest.raises(error, match=match):
        validate(conv, data, ["act1"], ["gndi"], layer_mask=mask, progress=False)


def test_mask_option_conflicts(conv):
    data = conv_data()
    mask = torch.tensor([0, 0, 1, 1]).reshape(1, 4, 1, 1)
    with pytest.raises(ValueError, match="cannot be combined"):
        select_units(conv, data, ["act1"], "channel", layer_mask=mask)
    with pytest.raises(ValueError, match="needs a layer_mask"):
        select_units(conv, data, ["act1"], "group")
    with pytest.raises(ValueError, match="no entry for layers"):
        ablate(conv, data, ["act1", "act2"], layer_mask={"act1": mask}, progress=False)
    units = select_units(conv, data, ["act1"], layer_mask=mask)
    with pytest.raises(ValueError, match="pass the same layer_mask"):
        ablate(conv, data, ["act1"], units=units, progress=False)
    with pytest.raises(ValueError, match="needs both layer_mask and group"):
        intervened_output(conv, data[0][0], conv.act1, group=1)


def test_cli_layer_mask_file(tmp_path):
    from captum_gndi.cli.parser import build_parser
    from captum_gndi.cli.validate import load_layer_mask

    mask = torch.tensor([[0, 1, 1]])
    torch.save({"fc": mask}, tmp_path / "mask.pt")
    assert torch.equal(load_layer_mask(str(tmp_path / "mask.pt"))["fc"], mask)
    assert load_layer_mask(None) is None
    torch.save([1, 2], tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="holds a list"):
        load_layer_mask(str(tmp_path / "bad.pt"))
    args = build_parser().parse_args(["validate", "--model", "x", "--layer-mask", "m.pt"])
    assert args.layer_mask == "m.pt"
