"""One prepared check for a CUDA machine: every engine against the CPU, and the timings that
matter, in one JSON, in under 8 minutes on one H100.

Part A, checks (a small random Llama, float32, seed 0; eager and SDPA attention): each engine
on the GPU against the same computation on the CPU, as the largest difference over the largest
CPU value (float32 must agree to 1e-4; bfloat16 forward and reverse head scores to the documented
tolerance, 3% of the largest score, docs/benchmarks.md "Half precision against float32"):

- ``forward`` / ``reverse``: ``LayerGNDI`` of every position x head of every layer;
- ``probes``: 8 Rademacher probes (drawn on the CPU, so both devices project on the same rows);
- ``input_path``: ``path="input"`` (EAP-IG, 4 points) on clean / corrupted prompts;
- ``patching``: ``compute_gndi`` on a ``PatchingTask`` (signed first-order G-NDI per head);
- ``verify``: ``verify_top_k`` on the same task (units and their exact damages);
- ``dispatched``: the model split by accelerate between the GPU and CPU offload
  (``dispatch_model``), reverse and forward mode, against the plain CPU model.

With SDPA attention, forward mode is run too: where CUDA (or the CPU) has no forward-AD formula
the JSON records ``"unsupported"`` with the error (the package then names ``mode="reverse"``),
not a failure.

Part B, timings (seconds, and ratios to one forward + backward of the same batch, measured in
the same run; peak GPU memory where CUDA is used):

- SmolLM2-135M (``zoo.load_smollm2()``, or a random Llama of its shape when the weights are not
  installed: 30 layers, width 576, 9 heads, 3 key/value heads, vocabulary 49,152) and a
  GPT-2-small-sized model (12 layers, width 768, 12 heads, vocabulary 50,257), one prompt of
  128 tokens, every head x position against the full-vocabulary next-token logits: random
  probes (L2, m = 16 and 64; Fisher, m = 16; bfloat16, m = 16), exact reverse mode
  **extrapolated** from 16 and 48 sampled vocabulary rows, brute-force patching
  **extrapolated** from 64 patched forwards;
- ResNet-50 (random weights), 32 images of 224 x 224, every channel of its 16 bottleneck
  branches with the label as target, against brute-force channel ablation **extrapolated**
  from 64 ablated forwards;
- ``verify_top_k`` (k = 10) on the first two ResNet-50 branches (512 channels) against
  brute-force ablation of all of them (``interventions.ablation.ablate``): times, top-k recall.

Every check and timing runs in its own ``try``: a failure is recorded with its error and the
rest goes on. ``--budget-s`` (default 420) skips the timings that would start after it.

Usage (on the GPU machine, from the repository root)::

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json

``--dry-run`` runs the same code on the CPU with tiny sizes (a test runs it so it cannot rot).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import platform
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from captum_gndi import LayerGNDI, compute_gndi, find_layers, tasks, verify_top_k
from captum_gndi.interventions import intervene
from captum_gndi.interventions.ablation import ablate

FLOAT32_TOLERANCE = 1e-4
BFLOAT16_TOLERANCE = 0.03  # docs/benchmarks.md, "Half precision against float32"

SIZES: dict[str, dict[str, Any]] = {
    "full": dict(
        check=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, vocab_size=256),
        check_tokens=12, check_batch=4,
        smollm2=dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, vocab_size=49152),
        gpt2=dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257),
        tokens=128, probes=(16, 64), exact_rows=(16, 48), brute_sample=64,
        resnet="resnet50", images=32, image_size=224, verify_layers=2,
        verify_k=10, units_per_pass=16,
    ),
    "dry": dict(
        check=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                   num_attention_heads=2, num_key_value_heads=1, vocab_size=32),
        check_tokens=5, check_batch=2,
        smollm2=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=1, vocab_size=64),
        gpt2=dict(n_layer=2, n_head=2, n_embd=16, vocab_size=64),
        tokens=6, probes=(2, 3), exact_rows=(2, 4), brute_sample=2,
        resnet="resnet18", images=1, image_size=32, verify_layers=1,
        verify_k=2, units_per_pass=4,
    ),
}  # fmt: skip


class Report:
    """The JSON being written: meta data, checks, timings, errors."""

    def __init__(self, device: torch.device, dry_run: bool, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s
        self.data: dict[str, Any] = {
            "meta": {
                "device": str(device),
                "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                "python": platform.python_version(),
                "dry_run": dry_run,
            },
            "checks": [],
            "timings": [],
            "errors": [],
        }

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Record an exception as an error of ``what`` and go on."""
        try:
            yield
        except Exception as error:  # one failure must not lose the other numbers
            self.data["errors"].append(
                {
                    "what": what,
                    "error": f"{type(error).__name__}: {error}"[:2000],
                    "traceback": traceback.format_exc()[-3000:],
                }  # fmt: skip
            )
            print(f"ERROR {what}: {type(error).__name__}: {str(error)[:300]}", flush=True)

    def check(self, name: str, difference: float, tolerance: float, **extra: Any) -> None:
        ok = bool(difference <= tolerance)
        self.data["checks"].append(
            {"name": name, "difference": difference, "tolerance": tolerance, "ok": ok, **extra}
        )
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {difference:.3g} (<= {tolerance:g})", flush=True)

    def timing(self, name: str, **fields: Any) -> None:
        self.data["timings"].append({"name": name, **fields})
        shown = {k: v for k, v in fields.items() if isinstance(v, (int, float))}
        print(f"time {name}: {json.dumps(shown)}", flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any, float | None]:
    """``(seconds, result, peak GPU MiB above the start)`` of one call."""
    synchronize(device)
    base = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = None
    if base is not None:
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return seconds, result, peak


def relative(a: Tensor, b: Tensor) -> float:
    """``max |a - b| / max |b|`` (``b`` the CPU float32 reference)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ---------------------------------------------------------------------------------------------
# Part A: every engine against the CPU
# ---------------------------------------------------------------------------------------------


def llama(config: dict[str, Any], attention: str) -> nn.Module:
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(**config, attn_implementation=attention)
    )
    return model.eval()


def patching_task(vocab: int, batch: int, tokens: int) -> tasks.PatchingTask:
    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(0, vocab, (batch, tokens), generator=generator)
    corrupted = clean.clone()
    corrupted[:, 1] = torch.randint(0, vocab, (batch,), generator=generator)
    answers = torch.randint(0, vocab, (batch, 2), generator=generator)
    return tasks.PatchingTask(clean, corrupted, answers, name="random")


def heads_of(model: nn.Module) -> list:
    return list(find_layers(model, "head").values())


def next_token(model: nn.Module) -> Callable[[Tensor], Tensor]:
    return lambda ids: model(ids).logits[:, -1]


ENGINES: dict[str, Callable[[nn.Module, tasks.PatchingTask], Any]] = {
    "forward": lambda m, t: torch.stack(
        LayerGNDI(next_token(m), heads_of(m)).attribute(
            t.clean, mode="forward", granularity="channel", channel_dim=(1, 2)
        )
    ),
    "reverse": lambda m, t: torch.stack(
        LayerGNDI(next_token(m), heads_of(m)).attribute(
            t.clean, mode="reverse", granularity="channel", channel_dim=(1, 2)
        )
    ),
    "probes": lambda m, t: torch.stack(
        LayerGNDI(next_token(m), heads_of(m)).attribute(
            t.clean, norm=2, n_probes=8, granularity="channel", channel_dim=(1, 2)
        )
    ),
    "input_path": lambda m, t: torch.stack(
        LayerGNDI(tasks.logit_diff(m), heads_of(m)).attribute(
            t.clean,
            baselines=t.corrupted,
            additional_forward_args=(t.answers,),
            path="input",
            n_steps=4,
            signed=True,
            input_layer=m.get_input_embeddings(),
            granularity="channel",
            channel_dim=2,
        )
    ),
    "patching": lambda m, t: compute_gndi(
        tasks.logit_diff(m),
        t,
        find_layers(m, "head"),
        granularity="channel",
        channel_dim=2,
        progress=False,
    ).stack(),  # fmt: skip
    "verify": lambda m, t: verify_top_k(
        tasks.logit_diff(m), t, find_layers(m, "head"), k=3, channel_dim=2, progress=False
    ),
}


def compare(report: Report, name: str, got: Any, expected: Any, tolerance: float) -> None:
    if hasattr(expected, "units"):  # a VerifyResult
        same = got.units == expected.units
        difference = relative(torch.as_tensor(got.damages), torch.as_tensor(expected.damages))
        report.check(name, difference if same else math.inf, tolerance, units_equal=same)
    else:
        report.check(name, relative(got, expected), tolerance)


def part_a(report: Report, device: torch.device, size: dict[str, Any]) -> None:
    task = patching_task(size["check"]["vocab_size"], size["check_batch"], size["check_tokens"])
    for attention in ("eager", "sdpa"):
        cpu_model = llama(size["check"], attention)
        gpu_model = copy.deepcopy(cpu_model).to(device)
        half_model = copy.deepcopy(cpu_model).to(device=device, dtype=torch.bfloat16)
        gpu_task = task.to(device)
        for engine, run in ENGINES.items():
            name = f"{attention}/{engine}"
            with report.guard(f"check {name}"):
                try:
                    expected = run(cpu_model, task)
                except NotImplementedError as error:
                    report.data["checks"].append(
                        {"name": f"{name} (cpu)", "ok": None, "unsupported": str(error)[:500]}
                    )
                    continue
                try:
                    got = run(gpu_model, gpu_task)
                except NotImplementedError as error:
                    report.data["checks"].append(
                        {"name": f"{name} ({device})", "ok": None, "unsupported": str(error)[:500]}
                    )
                    continue
                compare(report, f"{name} float32 {device} vs cpu", got, expected, FLOAT32_TOLERANCE)
                if engine in ("forward", "reverse"):  # the scores of the documented tolerance
                    half = run(half_model, gpu_task)
                    compare(report, f"{name} bfloat16 {device} vs cpu float32", half, expected,
                            BFLOAT16_TOLERANCE)  # fmt: skip
    with report.guard("check dispatched"):
        dispatched_check(report, device, size, task)


def dispatched_check(
    report: Report, device: torch.device, size: dict[str, Any], task: tasks.PatchingTask
) -> None:
    """The check model dispatched by accelerate: the GPU and CPU offload (or, on a CPU, CPU and
    disk offload), against the plain CPU model; accelerate's hooks left as they were."""
    import accelerate

    cpu_model = llama(size["check"], "eager")
    layers = size["check"]["num_hidden_layers"]
    with tempfile.TemporaryDirectory() as folder:
        if device.type == "cuda":
            main, offloaded = device.index or 0, "cpu"
        else:
            main, offloaded = "cpu", "disk"
        device_map = {"model.embed_tokens": main, "model.rotary_emb": main, "model.norm": main,
                      "lm_head": main}  # fmt: skip
        for i in range(layers):
            device_map[f"model.layers.{i}"] = main if i < layers // 2 else offloaded
        model = accelerate.dispatch_model(
            copy.deepcopy(cpu_model), device_map, main_device=main, offload_dir=folder
        )
        hooks = {n: id(m._hf_hook) for n, m in model.named_modules() if hasattr(m, "_hf_hook")}
        ids = task.clean.to(device)
        for engine in ("reverse", "forward"):
            expected = ENGINES[engine](cpu_model, task)
            got = ENGINES[engine](model, tasks.PatchingTask(ids, ids, task.answers.to(device)))
            same = hooks == {
                n: id(m._hf_hook) for n, m in model.named_modules() if hasattr(m, "_hf_hook")
            }
            report.check(f"dispatched/{engine} ({main} + {offloaded}) vs cpu", relative(got,
                         expected), FLOAT32_TOLERANCE, hooks_unchanged=same)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Part B: timings
# ---------------------------------------------------------------------------------------------


def smollm2(size: dict[str, Any], dry_run: bool) -> tuple[nn.Module, str]:
    if not dry_run:
        try:
            from captum_gndi import zoo

            model, _ = zoo.load_smollm2()
            return model.eval(), "SmolLM2-135M-Instruct (zoo.load_smollm2)"
        except (ImportError, FileNotFoundError) as error:
            print(f"SmolLM2 weights not available ({error}); a random Llama of its shape")
    return llama(size["smollm2"], "eager"), "random Llama of SmolLM2's shape"


def gpt2(size: dict[str, Any]) -> nn.Module:
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        **size["gpt2"], n_positions=max(size["tokens"], 8), attn_implementation="eager"
    )
    return transformers.GPT2LMHeadModel(config).eval()


def fwd_bwd(model: nn.Module, run: Callable[[], Tensor]) -> None:
    """One training-style forward and backward pass into the parameters."""
    model.zero_grad(set_to_none=True)
    run().float().logsumexp(-1).sum().backward()
    model.zero_grad(set_to_none=True)


def lm_timings(
    report: Report, name: str, model: nn.Module, device: torch.device, size: dict[str, Any]
) -> None:
    """Every head x position of ``model`` against its full-vocabulary next-token logits."""
    model = model.to(device)
    vocab = model.get_output_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, size["tokens"]), generator=generator).to(device)
    heads = heads_of(model)
    logits = next_token(model)
    with torch.no_grad():
        logits(ids)  # warm-up: kernels, allocator
    forward_s, _, _ = timed(lambda: torch.no_grad()(logits)(ids), device)
    fwd_bwd(model, lambda: logits(ids))  # warm-up
    reference_s, _, reference_mib = timed(lambda: fwd_bwd(model, lambda: logits(ids)), device)
    n_heads = heads[0].n_heads
    units = len(heads) * size["tokens"] * n_heads
    common = dict(model=name, tokens=size["tokens"], vocab=vocab, units=units)
    common.update(forward_s=forward_s, fwd_bwd_s=reference_s, fwd_bwd_mib=reference_mib)
    gndi = LayerGNDI(logits, heads)
    options = dict(granularity="channel", channel_dim=(1, 2), mode="reverse")
    runs = [(f"probes L2 m={m}", gndi, dict(norm=2, n_probes=m)) for m in size["probes"]]
    runs.append((f"probes Fisher m={size['probes'][0]}", gndi,
                 dict(norm="fisher", n_probes=size["probes"][0])))  # fmt: skip
    for label, method, extra in runs:
        if report.left() < 0:
            report.timing(f"{name}: {label}", skipped="budget", **common)
            continue
        with report.guard(f"time {name}: {label}"):
            seconds, _, mib = timed(
                lambda method=method, extra=extra: method.attribute(ids, **options, **extra), device
            )
            report.timing(f"{name}: {label}", seconds=seconds, ratio_to_fwd_bwd=seconds /
                          reference_s, peak_mib=mib, **common)  # fmt: skip
    with report.guard(f"time {name}: bfloat16 probes"):
        m = size["probes"][0]
        seconds, mib = bfloat16_probes(model, ids, m, options, device)
        report.timing(f"{name}: bfloat16 probes L2 m={m}", seconds=seconds,
                      ratio_to_fwd_bwd=seconds / reference_s, peak_mib=mib, **common)  # fmt: skip
    with report.guard(f"time {name}: exact (sampled rows)"):
        lo, hi = size["exact_rows"]
        rows = torch.randperm(vocab, generator=generator)[:hi].to(device)
        times = []
        for count in (lo, hi):
            subset = rows[:count]
            exact = LayerGNDI(lambda x, subset=subset: logits(x)[:, subset], heads)
            seconds, _, _ = timed(lambda exact=exact: exact.attribute(ids, **options), device)
            times.append(seconds)
        per_row = (times[1] - times[0]) / (hi - lo)
        report.timing(f"{name}: exact reverse, all {vocab} rows (extrapolated)",
                      seconds=times[0] + (vocab - lo) * per_row, extrapolated=True,
                      measured_rows={lo: times[0], hi: times[1]},
                      ratio_to_fwd_bwd=(times[0] + (vocab - lo) * per_row) / reference_s,
                      **common)  # fmt: skip
    with report.guard(f"time {name}: brute force (sampled units)"):
        sample = size["brute_sample"]
        picks = torch.randint(0, units, (sample,), generator=generator).tolist()

        def patched() -> None:
            for unit in picks:
                layer, rest = divmod(unit, size["tokens"] * n_heads)
                position, head = divmod(rest, n_heads)

                def edit(_: int, h: Tensor, position=position, head=head) -> Tensor:
                    h = h.clone()
                    h[:, position, head] = 0
                    return h

                with torch.no_grad(), intervene([heads[layer]], edit):
                    logits(ids)

        seconds, _, _ = timed(patched, device)
        total = forward_s + seconds * units / sample
        report.timing(f"{name}: brute-force patching, all {units} units (extrapolated)",
                      seconds=total, extrapolated=True, measured={sample: seconds},
                      ratio_to_fwd_bwd=total / reference_s, **common)  # fmt: skip
    model.to("cpu")


def bfloat16_probes(
    model: nn.Module, ids: Tensor, m: int, options: dict[str, Any], device: torch.device
) -> tuple[float, float | None]:
    """Seconds and peak MiB of L2 probes on a bfloat16 copy of ``model`` (freed after)."""
    half = copy.deepcopy(model).to(torch.bfloat16)
    gndi = LayerGNDI(next_token(half), heads_of(half))
    seconds, _, mib = timed(lambda: gndi.attribute(ids, norm=2, n_probes=m, **options), device)
    return seconds, mib


def resnet_timings(report: Report, device: torch.device, size: dict[str, Any]) -> None:
    """Every channel of the bottleneck branches of a ResNet, the label as target."""
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, size["resnet"])(weights=None).eval().to(device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(size["images"], 3, size["image_size"], size["image_size"], generator=generator)
    x = x.to(device)
    y = torch.randint(0, 1000, (size["images"],), generator=generator).to(device)
    layers = find_layers(model, "branch")
    with torch.no_grad():
        model(x)
    forward_s, _, _ = timed(lambda: torch.no_grad()(model)(x), device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up
    reference_s, _, reference_mib = timed(step, device)
    gndi = LayerGNDI(model, list(layers.values()))
    seconds, scores, mib = timed(lambda: gndi.attribute(x, target=y, granularity="channel"), device)
    channels = sum(s.shape[1] for s in scores)
    common = dict(model=size["resnet"], images=size["images"], channels=channels)
    common.update(forward_s=forward_s, fwd_bwd_s=reference_s, fwd_bwd_mib=reference_mib)
    report.timing(f"{size['resnet']}: G-NDI of every channel (target = label)", seconds=seconds,
                  ratio_to_fwd_bwd=seconds / reference_s, peak_mib=mib, **common)  # fmt: skip
    with report.guard("time resnet: brute force (sampled channels)"):
        specs = list(layers.values())
        sizes = [s.shape[1] for s in scores]
        picks = torch.randint(0, channels, (size["brute_sample"],), generator=generator).tolist()

        def ablated() -> None:
            for unit in picks:
                layer = 0
                while unit >= sizes[layer]:
                    unit -= sizes[layer]
                    layer += 1

                def edit(_: int, h: Tensor, channel=unit) -> Tensor:
                    h = h.clone()
                    h[:, channel] = 0
                    return h

                with torch.no_grad(), intervene([specs[layer]], edit):
                    model(x)

        brute_s, _, _ = timed(ablated, device)
        total = forward_s + brute_s * channels / len(picks)
        report.timing(f"{size['resnet']}: brute-force ablation of every channel (extrapolated)",
                      seconds=total, extrapolated=True, measured={len(picks): brute_s},
                      ratio_to_fwd_bwd=total / reference_s, **common)  # fmt: skip
    if report.left() < 0:
        report.timing("verify_top_k vs brute force", skipped="budget")
        return
    with report.guard("time verify_top_k vs brute force"):
        chosen = dict(list(layers.items())[: size["verify_layers"]])
        data = [(x, y)]
        k, per_pass = size["verify_k"], size["units_per_pass"]
        verify_s, result, verify_mib = timed(
            lambda: verify_top_k(
                model, data, chosen, k=k, units_per_pass=per_pass, progress=False
            ),  # fmt: skip
            device,
        )
        brute_s, brute, brute_mib = timed(
            lambda: ablate(
                model,
                data,
                chosen,
                damage="output_delta",
                granularity="channel",
                engine="auto",
                units_per_pass=per_pass,
                progress=False,
            ),  # fmt: skip
            device,
        )
        damage = brute.damage["output_delta"]
        order = sorted(range(len(damage)), key=lambda i: -damage[i])[:k]
        truth = {brute.units[i].key for i in order}
        recall = len(truth & set(result.units)) / k
        report.timing("verify_top_k vs brute force", model=size["resnet"], layers=list(chosen),
                      units=result.n_units, k=k, verify_s=verify_s, verify_mib=verify_mib,
                      n_ablations=result.n_ablations, brute_s=brute_s, brute_mib=brute_mib,
                      speedup=brute_s / verify_s, recall=recall)  # fmt: skip
    model.to("cpu")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --dry-run)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip timings after it")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; run with --dry-run on a CPU")
    size = SIZES["dry" if args.dry_run else "full"]
    report = Report(device, args.dry_run, args.budget_s)
    warnings.simplefilter("ignore")  # the JSON records what matters; keep the log readable
    with report.guard("part A"):
        part_a(report, device, size)
    model, label = smollm2(size, args.dry_run)
    with report.guard("time smollm2"):
        lm_timings(report, label, model, device, size)
    del model
    with report.guard("time gpt2"):
        lm_timings(report, "GPT-2-small-sized (random)", gpt2(size), device, size)
    with report.guard("time resnet"):
        resnet_timings(report, device, size)
    report.data["meta"]["wall_s"] = time.perf_counter() - report.start
    failed = [c["name"] for c in report.data["checks"] if c.get("ok") is False]
    report.data["meta"]["summary"] = {
        "checks": len(report.data["checks"]),
        "failed": failed,
        "errors": [e["what"] for e in report.data["errors"]],
    }
    text = json.dumps(report.data, indent=2, default=str)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(json.dumps(report.data["meta"], indent=2, default=str))
    return report.data


if __name__ == "__main__":
    main()
