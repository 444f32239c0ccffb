"""validate() end to end on tiny models: ablation + criteria + report, written to a folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_gndi.validation.ablation import ablate
from captum_gndi.validation.harness import validate


class TinyResNet(nn.Module):
    """Stem conv, three residual branches (conv + bn each), pooling, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)) for _ in range(3)
        )
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        for branch in self.branches:
            h = torch.relu(h + branch(h))
        return self.head(h.mean((2, 3)))


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.randn(24, 1, 6, 6)
    y = torch.arange(24) % 3
    return model, DataLoader(TensorDataset(x, y), batch_size=8)


LAYERS = [f"branches.{i}.1" for i in range(3)]


def test_validate_writes_the_report_and_matches_its_parts(setup, tmp_path):
    model, loader = setup
    methods = ["gndi", "snip", "hrank", "depth", "random", "activation_change"]
    report = validate(model, loader, LAYERS, criteria=methods, n_boot=50, progress=False,
                      out_dir=tmp_path, n_random=3, metadata={"model": "tiny"})  # fmt: skip
    names = {p.name for p in tmp_path.iterdir()}
    assert {"report.md", "report.json", "correlations.csv", "units.csv"} <= names
    assert any(n.startswith("scatter_") and n.endswith(".png") for n in names)
    assert report.units == LAYERS
    assert list(report.damage) == ["accuracy_drop", "loss_increase", "output_delta", "kl"]
    exact = ablate(model, loader, LAYERS, list(report.damage), progress=False)
    for metric, values in exact.damage.items():
        assert report.damage[metric] == pytest.approx(values)
    assert report.scores["random"].shape == (3, 3)
    assert report.scores["depth"].tolist() == [2.0, 1.0, 0.0]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert "tiny" in json.dumps(saved)
    assert report.metadata["n_examples"] == 24 and report.metadata["skipped"] == {}


def test_validate_channel_sample_with_mean_baseline(setup):
    model, loader = setup
    report = validate(model, loader, LAYERS, criteria=["gndi", "magnitude", "depth"],
                      damage=["output_delta"], baseline="mean", granularity="channel",
                      n_channels=5, seed=1, n_boot=50, progress=False)  # fmt: skip
    assert len(report.units) == 5 and all("[" in u for u in report.units)
    assert np.all(np.diff(report.depth) >= 0)
    assert report.metadata["baseline"] == "mean"


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(6, 8)
        self.second = nn.Linear(8, 8)
        self.out = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.second(torch.tanh(self.first(x)))))


def test_validate_an_embedding_model_skips_label_criteria():
    torch.manual_seed(0)
    model = Encoder().eval()
    loader = DataLoader(torch.randn(16, 6), batch_size=8)  # no labels
    with pytest.warns(UserWarning, match="Skipping snip"):
        report = validate(model, loader, ["first", "second", "out"],
                          criteria=["gndi", "snip", "hrank", "depth"], target=None,
                          n_boot=50, progress=False)  # fmt: skip
    assert list(report.damage) == ["output_delta", "embedding_cosine"]
    assert set(report.metadata["skipped"]) == {"snip", "hrank"}
    assert "labelled data" in report.metadata["skipped"]["snip"]
    with pytest.raises(ValueError, match="need labelled data"):
        validate(model, loader, ["first"], criteria=["gndi"], damage=["kl"], progress=False)
