"""The measurements behind the engine's design choices, as multiples of one forward pass.

- forward mode: one ``forward_ad`` pass per layer, one vectorised pass (``torch.func.vmap`` of
  ``jvp``) over all layers, or the engine's ``~sqrt(L)`` vectorised passes over groups of
  consecutive layers (a group's tangents only flow from its first layer on);
- reverse mode: the engine's one backward pass per output dimension (``vjp_chunk=1``) or all
  output dimensions batched in one ``is_grads_batched`` pass (``vjp_chunk=K``).

All variants run in one process, interleaved, best of ``--repeats``; times are process CPU
seconds. Reuses the models of ``bench_engine.py``.

Usage::

    python benchmarks/bench_engine_choices.py --model resnet56 --batch 32
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import MODELS  # noqa: E402

from captum_gndi.engine import forward_effects, reverse_effects  # noqa: E402
from captum_gndi.forward_mode import _group_jvps, _one_jvp  # noqa: E402
from captum_gndi.job import Cell  # noqa: E402
from captum_gndi.units import UnitIndex  # noqa: E402

LAYER = UnitIndex("layer", None, 1, ())


def grouped(batch, n_groups: int) -> Callable[[], list]:
    """Forward mode with the layers split into ``n_groups`` groups of consecutive layers."""
    cells = [Cell(p, 0, 1.0, 1.0) for p in range(len(batch.layers))]
    units = [LAYER] * len(batch.layers)
    size = math.ceil(len(cells) / n_groups)
    return lambda: [
        _group_jvps(batch, units, cells[i : i + size], True) for i in range(0, len(cells), size)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-reverse", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup = MODELS[args.model](args.batch)
    batch = setup.batch()
    n_layers, n_outputs = len(batch.layers), int(setup.forward().shape[1])
    variants: dict[str, Callable[[], object]] = {
        "forward pass": setup.forward,
        "forward mode, one forward_ad pass per layer": lambda: [
            _one_jvp(batch, [LAYER] * n_layers, Cell(p, 0, 1.0, 1.0)) for p in range(n_layers)
        ],
        "forward mode, one vectorised pass": grouped(batch, 1),
        f"forward mode, {round(math.sqrt(n_layers))} groups (engine)": lambda: forward_effects(
            batch
        ),
    }
    if not args.skip_reverse:
        variants["reverse mode, one backward per output (engine)"] = lambda: reverse_effects(batch)
        variants[f"reverse mode, {n_outputs} VJPs batched (is_grads_batched)"] = lambda: (
            reverse_effects(batch, vjp_chunk=n_outputs)
        )
    seconds: dict[str, float] = {name: math.inf for name in variants}
    for fn in variants.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in variants.items():
            start = time.process_time()
            fn()
            seconds[name] = min(seconds[name], time.process_time() - start)
    forward = seconds["forward pass"]
    print(
        json.dumps(
            {
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "layers": n_layers,
                "outputs": n_outputs,
                "torch": torch.__version__,
                "threads": args.threads,
                "forward_cpu_s": forward,
                "x_forward": {name: round(s / forward, 2) for name, s in seconds.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
