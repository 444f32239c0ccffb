"""``compute_gndi`` under ``torch.distributed``: two CPU processes on the gloo backend give the
single-process numbers, whether the loader is sharded by batches or by a DistributedSampler."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from captum_gndi import compute_gndi

WORLD = 2
SETTINGS = dict(target="label", granularity="channel", progress=False)


def model_and_data() -> tuple[nn.Module, TensorDataset]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    ).double()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(20, 2, 4, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=generator)
    return model.eval(), TensorDataset(x, y)


def runs(rank: int | None) -> dict[str, dict]:
    """The same four computations in every process; ``rank=None``: no process group."""
    model, data = model_and_data()
    layers = {"conv1": model[0], "conv2": model[2]}
    loader = DataLoader(data, batch_size=4)  # 5 batches: ranks take 3 and 2
    if rank is None:
        sampled = loader
    else:  # each rank's loader holds its own 10 examples
        sampler = DistributedSampler(data, num_replicas=WORLD, rank=rank, shuffle=False)
        sampled = DataLoader(data, batch_size=4, sampler=sampler)
    one_batch = [next(iter(loader))]  # rank 1 gets no batch at all
    return {
        "batches": compute_gndi(model, loader, layers, **SETTINGS).to_dict(),
        "sampler": compute_gndi(model, sampled, layers, **SETTINGS).to_dict(),
        "one_batch": compute_gndi(model, one_batch, layers, **SETTINGS).to_dict(),
        "mean_baseline": compute_gndi(
            model, loader, layers, baseline="mean", max_batches=3, **SETTINGS
        ).to_dict(),
    }


def worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.save(runs(rank), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    single = runs(None)
    for rank in range(WORLD):
        distributed = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for case, expected in single.items():
            got = distributed[case]
            assert got["n_examples"] == expected["n_examples"], (case, rank)
            for name, values in expected["layers"].items():
                for key in ("mean", "stderr"):
                    torch.testing.assert_close(
                        torch.tensor(got["layers"][name][key]),
                        torch.tensor(values[key]),
                        rtol=1e-10,
                        atol=1e-14,
                    )
    assert single["batches"]["n_examples"] == single["sampler"]["n_examples"] == 20
    assert single["one_batch"]["n_examples"] == 4
    assert single["mean_baseline"]["n_examples"] == 12
