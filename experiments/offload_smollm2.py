"""SmolLM2-135M scored with most of its layers offloaded to disk: the same scores as the model
held in memory, and the peak resident memory of each.

Two worker processes, one per way of loading, run the same computations and write their scores
and memory to a temporary file (the parent loads nothing: Linux keeps a process's peak resident
set across ``exec``, so a worker would otherwise inherit the parent's):

- ``full``: ``zoo.load_smollm2()``, the whole float32 model in memory;
- ``offload``: the safetensors folder ``zoo.load_smollm2()`` caches, loaded with accelerate
  (``init_empty_weights``, then ``load_checkpoint_and_dispatch`` with an offload folder and a
  ``device_map`` that keeps the embedding (tied to the output layer), the final norm and the
  first ``--layers-in-memory`` decoder layers in CPU memory and puts the other decoder layers on
  ``"disk"``); accelerate's hooks load each offloaded layer's weights when it runs.

Computations (the ``tasks.ioi`` prompts, ``--prompts`` pairs): the signed first-order G-NDI of
every head of every layer with the corrupted prompt's activations as baselines
(``compute_gndi(tasks.logit_diff(model), task, heads, granularity="channel", channel_dim=2)``,
reverse mode: one forward and one backward pass per batch), and the Fisher norm of the
next-token distribution from 8 random probes per head (``LayerGNDI.attribute(clean,
norm="fisher", n_probes=8)``). With ``--units mlps`` the patching G-NDI scores whole MLPs
(``granularity="layer"``: one tangent per MLP) of the layers ``--unit-layers`` names, in the
engine ``--mode`` names, and the Fisher probes are skipped. ``--mode forward`` keeps no autograd
graph, so each offloaded layer's weights are freed when accelerate's hook sets it back to the
meta device; it runs one forward-AD pass per tangent through the hooks. The JSON reports the
largest score difference between the two workers and, per worker and phase (before loading,
loading, scoring, one no-grad forward pass of the clean prompts), the peaks of its resident
anonymous memory (``RssAnon`` of ``/proc/self/status``, sampled every 5 ms: the tensors) and of
its whole resident set (``VmRSS``, which also counts the pages of memory-mapped weight files),
with both values at the start of the phase, against the size of the float32 weights.
accelerate's hooks are checked to be the same objects before and after.

Usage::

    OMP_NUM_THREADS=1 python experiments/offload_smollm2.py \\
        --out benchmarks/results/offload_smollm2.json
    MALLOC_MMAP_THRESHOLD_=131072 OMP_NUM_THREADS=1 python experiments/offload_smollm2.py \\
        --units mlps --mode forward --unit-layers 0,9,19,29 \\
        --out benchmarks/results/offload_smollm2_forward.json

``MALLOC_MMAP_THRESHOLD_`` (glibc) maps every block of 128 KiB or more separately, so freed
tensors leave the resident set and ``RssAnon`` follows the live tensors; without it glibc keeps
freed memory resident and a phase's peak can be an earlier phase's leftover.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

MIB = 2**20


class PeakMemory:
    """Samples this process's resident anonymous memory (``RssAnon``: the tensors) and whole
    resident set (``VmRSS``, which also counts pages of memory-mapped weight files) in a
    thread; :meth:`phase` returns the peaks since the last call and starts a new phase."""

    def __init__(self, interval: float = 0.005) -> None:
        self.peaks = {"RssAnon": 0, "VmRSS": 0}
        self.start = dict(self.peaks)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> dict[str, int]:
        values = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":")[0]
            if key in ("RssAnon", "VmRSS"):
                values[key] = int(line.split()[1]) * 1024
        return values

    def _sample(self) -> None:
        for key, value in self.now().items():
            self.peaks[key] = max(self.peaks[key], value)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def phase(self) -> dict[str, float]:
        """Peaks (MiB) since the previous phase and the use when it started; the next phase
        starts from the current use."""
        self._sample()
        peaks = {f"peak_{k}_mib": v / MIB for k, v in self.peaks.items()}
        peaks.update({f"start_{k}_mib": v / MIB for k, v in self.start.items()})
        self.peaks = dict(self.now())
        self.start = dict(self.peaks)
        return peaks

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def load(kind: str, in_memory: int, offload_dir: str):
    import accelerate
    import transformers

    from captum_gndi import zoo

    if kind == "full":
        model, tokenizer = zoo.load_smollm2()
        return model, tokenizer, None
    # the folder load_smollm2 caches (the parent process wrote it), read the way it reads it,
    # without ever holding the whole model
    folder = zoo.smollm2_cache_dir()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    config = transformers.AutoConfig.from_pretrained(folder, attn_implementation="eager")
    with accelerate.init_empty_weights():
        empty = transformers.AutoModelForCausalLM.from_config(config)
    empty.tie_weights()
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu"}
    for i in range(config.num_hidden_layers):
        device_map[f"model.layers.{i}"] = "cpu" if i < in_memory else "disk"
    device_map["lm_head"] = "cpu"  # tied to the embedding: the checkpoint stores it once
    model = accelerate.load_checkpoint_and_dispatch(
        empty, str(folder), device_map=device_map, offload_folder=offload_dir
    ).eval()
    return model, tokenizer, dict(device_map)


def hooks(model) -> dict[str, int]:
    return {n: id(m._hf_hook) for n, m in model.named_modules() if hasattr(m, "_hf_hook")}


def worker(
    kind: str, prompts: int, in_memory: int, units: str, mode: str, layers: str, out: Path
) -> None:
    from captum_gndi import LayerGNDI, compute_gndi, find_layers, tasks

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as offload_dir, PeakMemory() as memory:
        memory.phase()
        before = {f"{k}_mib": v / MIB for k, v in memory.now().items()}
        start = time.perf_counter()
        model, tokenizer, device_map = load(kind, in_memory, offload_dir)
        loaded_s = time.perf_counter() - start
        loading = memory.phase()
        hooks_before = hooks(model)
        task = tasks.ioi(tokenizer, n=prompts, seed=0)
        points = find_layers(model, "head" if units == "heads" else "mlp")
        if layers:
            chosen = {int(i) for i in layers.split(",")}
            points = {n: p for i, (n, p) in enumerate(points.items()) if i in chosen}
        options = (
            dict(granularity="channel", channel_dim=2)
            if units == "heads"
            else dict(granularity="layer")
        )
        start = time.perf_counter()
        f = tasks.logit_diff(model)
        patching = compute_gndi(f, task, points, mode=mode, progress=False, **options).stack()
        patching_s = time.perf_counter() - start
        fisher, fisher_s = None, None
        if units == "heads":
            start = time.perf_counter()
            heads = list(points.values())
            fisher = LayerGNDI(lambda ids: model(ids).logits[:, -1], heads).attribute(
                task.clean, norm="fisher", n_probes=8, granularity="channel", channel_dim=2
            )
            fisher, fisher_s = torch.stack(fisher), time.perf_counter() - start
        scoring = memory.phase()
        with torch.no_grad():  # a plain forward pass, for comparison: no graph holds weights
            model(task.clean)
        forward_only = memory.phase()
        unchanged = hooks(model) == hooks_before
        weights = sum(p.numel() * 4 for p in model.parameters())  # float32, meta included
    torch.save(
        {
            "patching": patching,
            "fisher": fisher,
            "units": list(points),
            "memory": {
                "before_load": before,
                "loading": loading,
                "scoring": scoring,
                "no_grad_forward": forward_only,
            },
            "device_map": device_map,
            "hooks_unchanged": unchanged,
            "seconds": {"load": loaded_s, "patching": patching_s, "fisher": fisher_s},
            "weights_mib": weights / MIB,
        },
        out,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8, help="IOI prompt pairs")
    parser.add_argument(
        "--layers-in-memory", type=int, default=2, help="decoder layers kept in memory"
    )
    parser.add_argument(
        "--units", choices=("heads", "mlps"), default="heads", help="what the patching scores"
    )
    parser.add_argument(
        "--mode", choices=("reverse", "forward"), default="reverse", help="G-NDI engine"
    )
    parser.add_argument(
        "--unit-layers", default="", help="comma-separated layer indices (default: all)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here")
    parser.add_argument("--worker", choices=("full", "offload"), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(
            args.worker,
            args.prompts,
            args.layers_in_memory,
            args.units,
            args.mode,
            args.unit_layers,
            args.result,
        )
        return
    results = {}  # the full worker runs first: its load_smollm2 writes the cache offload reads
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("full", "offload"):
            path = Path(tmp) / f"{kind}.pt"
            command = [sys.executable, __file__, "--worker", kind, "--result", str(path)]
            command += [
                "--prompts",
                str(args.prompts),
                "--layers-in-memory",
                str(args.layers_in_memory),
                "--units",
                args.units,
                "--mode",
                args.mode,
                "--unit-layers",
                args.unit_layers,
            ]
            subprocess.run(command, check=True)
            results[kind] = torch.load(path, weights_only=False)
    full, offload = results["full"], results["offload"]

    def difference(key: str) -> float | None:
        if full[key] is None:
            return None
        return float((full[key] - offload[key]).abs().max() / full[key].abs().max())

    places = {}
    for place in offload["device_map"].values():
        places[str(place)] = places.get(str(place), 0) + 1
    mmap = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    threshold = "" if mmap is None else f"MALLOC_MMAP_THRESHOLD_={mmap} "
    summary = {
        "command": threshold
        + "OMP_NUM_THREADS=1 python experiments/offload_smollm2.py "
        + " ".join(sys.argv[1:]),
        "prompts": args.prompts,
        "layers_in_memory": args.layers_in_memory,
        "units": full["units"],
        "mode": args.mode,
        "weights_mib": full["weights_mib"],
        "device_map_entries": places,
        "max_relative_difference": {
            "patching": difference("patching"),
            "fisher": difference("fisher"),
        },
        "hooks_unchanged": offload["hooks_unchanged"],
        "workers": {
            kind: {"memory": r["memory"], "seconds": r["seconds"]} for kind, r in results.items()
        },
        # glibc's allocator keeps freed memory resident unless large blocks are mapped
        # separately (MALLOC_MMAP_THRESHOLD_ set: then RssAnon follows the live tensors)
        "MALLOC_MMAP_THRESHOLD_": mmap,
        "torch": torch.__version__,
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
