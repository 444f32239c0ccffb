"""``verify_top_k`` under ``torch.distributed``: two CPU processes on the gloo backend, each
ablating its own shard of the data (a ``DistributedSampler``, or batches dealt out by rank),
find the single-process top k with the same ablations, and take every stopping-rule decision
identically on both ranks."""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from captum_gndi import verify_top_k

WORLD = 2


def model_and_data() -> tuple[nn.Module, TensorDataset]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 3),
    ).double()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 2, 4, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=generator)
    return model.eval(), TensorDataset(x, y)


def summary(result) -> dict:
    return {
        "units": result.units,
        "damages": result.damages.tolist(),
        "verified": sorted(result.verified.items()),
        "scores": sorted(result.scores.items()),
        "n_ablations": result.n_ablations,
        "stopped": result.stopped,
        "ratio": result.ratio,
        "n_examples": result.settings["n_examples"],
    }


def runs(rank: int | None) -> dict[str, dict]:
    """The same computations in every process; ``rank=None``: no process group."""
    model, data = model_and_data()
    layers = {"conv1": model[0], "conv2": model[2]}
    loader = DataLoader(data, batch_size=4)  # 4 batches: each rank takes 2
    if rank is None:
        sampled = loader
    else:  # each rank's loader holds its own 8 examples
        sampler = DistributedSampler(data, num_replicas=WORLD, rank=rank, shuffle=False)
        sampled = DataLoader(data, batch_size=4, sampler=sampler)
    options = dict(k=3, audit=2, units_per_pass=2, progress=False)
    return {
        "batches": summary(verify_top_k(model, loader, layers, **options)),
        "sampler": summary(verify_top_k(model, sampled, layers, baseline="mean", **options)),
    }


def worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        torch.save(runs(rank), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_verify_the_single_process_top_k(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    single = runs(None)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    assert ranks[0] == ranks[1]  # every decision identical on both ranks, bit for bit
    for case, expected in single.items():
        got = ranks[0][case]
        assert got["units"] == expected["units"], case
        assert got["n_ablations"] == expected["n_ablations"] < 14, case  # fewer than 14 units
        assert [u for u, _ in got["verified"]] == [u for u, _ in expected["verified"]], case
        assert got["stopped"] == expected["stopped"] and got["n_examples"] == 16, case
        torch.testing.assert_close(
            torch.tensor(got["damages"]), torch.tensor(expected["damages"]), rtol=1e-10, atol=0
        )
        torch.testing.assert_close(
            torch.tensor([s for _, s in got["scores"]]),
            torch.tensor([s for _, s in expected["scores"]]),
            rtol=1e-10,
            atol=0,
        )
