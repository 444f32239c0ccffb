"""Every head x position of a GPT-2-small-sized model over the full vocabulary: random probes
against exact reverse mode and brute-force patching, with peak memory and probe accuracy.

Model: ``GPT2LMHeadModel`` built from ``GPT2Config(n_layer, n_head, n_embd, vocab_size,
n_positions=tokens, attn_implementation="eager")`` with random weights (seed 0), float32, eval.
Input: one prompt of ``--tokens`` random token ids (batch 1). Output: the full-vocabulary logits
at the **last position**, ``(1, vocab)``, for every method (per-position logits would make
K = tokens x vocab = 6.4M rows for exact reverse mode). Units: every position x head of every
layer, ``captum_gndi.Heads(block.attn.c_proj, n_head)`` with ``channel_dim=(1, 2)``, zero
baseline (LayerGNDI's default), all layers in one ``LayerGNDI`` (one shared forward pass).

Methods, each in a fresh subprocess (model rebuilt, one warm-up forward, then the peak-RSS mark
is reset through ``/proc/self/clear_refs`` and the method runs once):

- ``probes_<norm>_<m>``: ``LayerGNDI(f, heads).attribute(ids, norm=2 or "fisher", n_probes=m,
  mode="reverse", granularity="channel", channel_dim=(1, 2))``: 1 forward + m backward passes;
- ``exact_sample``: exact reverse mode (one one-hot VJP row per vocabulary entry, the library's
  default of one backward pass per row) on the logits restricted to ``--exact-lo`` and to
  ``--exact-hi`` sampled vocabulary entries (same graph, same per-row cost); the difference of
  the two times is the cost of ``hi - lo`` rows, **extrapolated** linearly to K = vocab rows
  (exact L2 and exact Fisher use the same K VJPs; only the final reduction differs);
- ``brute_sample``: true patching, ``--brute-sample`` patched forwards (no grad, each a full
  forward from the token ids, nothing reused) of randomly drawn head x position units, one
  ``captum_gndi.interventions.intervene`` each; **extrapolated** to all layers x tokens x heads
  units (one patched forward gives both the L2 and the Fisher change);
- ``forward``, ``fwd_bwd_heads`` (one forward with autograd and one backward pass to the 12
  attention-head inputs, parameter gradients not taken: the graph G-NDI itself uses) and
  ``fwd_bwd_params`` (one training-style forward-backward: cross-entropy of the last position,
  ``.backward()`` into the parameters): memory references.

Times are process CPU seconds (one torch thread) and wall seconds. Memory: ``VmHWM - VmRSS``
of the worker after the reset (``resource.getrusage().ru_maxrss`` reads the same mark). Workers
run with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors leave the resident set (with
glibc's adaptive threshold the warm-up's freed buffers stay in the heap and hide later peaks:
one forward-backward then read +27 MiB instead of +151 MiB). It costs CPU time (page faults),
not by the same factor for every method: per pass +34% for probes, +32% for patched forwards,
+69% for exact VJP rows in the recorded runs. ``--default-malloc`` times without it (peak
memory then unreliable).

Accuracy (``accuracy`` worker): a smaller model of the same architecture (``--acc-layers``,
``--acc-vocab``, ``--acc-tokens``, ``--acc-prompts`` random prompts in one batch) where exact
reverse mode is affordable: exact effects once (``captum_gndi.engine.compute_effects``, exactly
what ``LayerGNDI.attribute`` runs), read out as L2 and Fisher, against
``LayerGNDI.attribute(..., n_probes=m)`` for every probe count and ``--acc-seeds`` probe seeds.
Spearman (``scipy.stats.spearmanr``) over all head x position units: of the data-set-level
scores (mean over prompts) and per prompt (mean over prompts).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_vocab_probes.py \\
        --out benchmarks/results/vocab_probes_gpt2small.json
    OMP_NUM_THREADS=1 python benchmarks/bench_vocab_probes.py --default-malloc --acc-prompts 4 \\
        --out benchmarks/results/vocab_probes_gpt2small_default_malloc.json
    python benchmarks/bench_vocab_probes.py --quick   # smoke run, tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from captum_gndi import Heads, LayerGNDI
from captum_gndi.engine import compute_effects
from captum_gndi.interventions import intervene
from captum_gndi.job import ScoringJob
from captum_gndi.readouts import make_readout
from captum_gndi.runs import make_runner

PROBE_NORMS = ("l2", "fisher")
NORM_ARG = {"l2": 2, "fisher": "fisher"}


# --- model -------------------------------------------------------------------------------------


class LastLogits(nn.Module):
    """``ids -> logits[:, -1, columns]`` (all columns by default); only the last position goes
    through the LM head (``logits_to_keep=1``)."""

    def __init__(self, lm: nn.Module, columns: Tensor | None = None) -> None:
        super().__init__()
        self.lm = lm
        self.columns = columns

    def forward(self, ids: Tensor) -> Tensor:
        logits = self.lm(input_ids=ids, logits_to_keep=1).logits[:, -1]
        return logits if self.columns is None else logits[:, self.columns]


def build(layers: int, heads: int, width: int, vocab: int, tokens: int, seed: int = 0):
    """The random-weight GPT-2 model (eval, float32) and its ``Heads`` points."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=layers,
        n_head=heads,
        n_embd=width,
        vocab_size=vocab,
        n_positions=tokens,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    lm = GPT2LMHeadModel(config).eval()
    points = [Heads(block.attn.c_proj, heads) for block in lm.transformer.h]
    return lm, points


def prompts(count: int, tokens: int, vocab: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (count, tokens), generator=generator)


# --- measurement -------------------------------------------------------------------------------


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> int:
    """Reset the peak-RSS mark (Linux >= 4.0); return the current RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def peak_bytes() -> int:
    return _status("VmHWM")


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    c0, w0 = time.process_time(), time.perf_counter()
    result = fn()
    return time.process_time() - c0, time.perf_counter() - w0, result


def fisher_norm(dz: Tensor, logits: Tensor) -> Tensor:
    """``sqrt(dz^T (diag(pi) - pi pi^T) dz)`` per row, ``pi = softmax(logits)``."""
    pi = torch.softmax(logits.double(), -1)
    dz = dz.double()
    return ((pi * dz.pow(2)).sum(-1) - (pi * dz).sum(-1).pow(2)).clamp_min(0).sqrt()


def heads_attribute(f: nn.Module, points, ids: Tensor, **kwargs) -> list[Tensor]:
    gndi = LayerGNDI(f, points)
    scores = gndi.attribute(
        ids, mode="reverse", granularity="channel", channel_dim=(1, 2), **kwargs
    )
    if kwargs.get("n_probes") is not None:
        return [s.detach() for s in scores], [e.detach() for e in gndi.probe_stderr]
    return [s.detach() for s in scores], None


def exact_both(f: nn.Module, points, ids: Tensor) -> dict[str, Tensor]:
    """Exact L2 and Fisher scores ``(N, L, T, H)`` from one set of K VJPs (the computation
    ``LayerGNDI.attribute(mode="reverse", granularity="channel")`` runs, read out twice)."""
    job = ScoringJob(
        run=make_runner(f, (ids,), None, None),
        layers=points,
        labels=[f"h{i}" for i in range(len(points))],
        baselines=[None] * len(points),
        channel_dim=(1, 2),
    )
    effects, _ = compute_effects(job, "reverse", "channel")
    with torch.no_grad():
        reference = job.run()
    out = {}
    for name in PROBE_NORMS:
        readout = make_readout(NORM_ARG[name])
        out[name] = torch.stack([readout.scores(e, reference) for e in effects], 1)
    return out


# --- workers -----------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    method = args.worker
    if method == "accuracy":
        return accuracy(args)
    lm, points = build(args.layers, args.heads, args.width, args.vocab, args.tokens)
    f = LastLogits(lm).eval()
    ids = prompts(1, args.tokens, args.vocab, seed=1)
    with torch.no_grad():  # warm-up, then the plain forward (best of 2)
        f(ids)
    fwd = min((timed(lambda: f(ids).sum()) for _ in range(2)), key=lambda t: t[0])
    record: dict[str, Any] = {"method": method, "forward_cpu_s": fwd[0], "forward_wall_s": fwd[1]}
    base = reset_peak()
    if method == "forward":
        with torch.no_grad():
            cpu, wall, _ = timed(lambda: f(ids))
        record.update(cpu_s=cpu, wall_s=wall, passes="1 forward")
    elif method == "fwd_bwd_heads":
        captured: list[Tensor] = []
        hooks = [
            p.module.register_forward_pre_hook(lambda m, a: captured.append(a[0])) for p in points
        ]

        def run() -> None:
            out = f(ids)
            v = torch.randn_like(out)
            torch.autograd.grad(out, captured, grad_outputs=v)

        cpu, wall, _ = timed(run)
        for h in hooks:
            h.remove()
        record.update(cpu_s=cpu, wall_s=wall, passes="1 forward + 1 backward (to head inputs)")
    elif method == "fwd_bwd_params":

        def run() -> None:
            out = f(ids)
            nn.functional.cross_entropy(out, ids[:, -1]).backward()

        cpu, wall, _ = timed(run)
        record.update(cpu_s=cpu, wall_s=wall, passes="1 forward + 1 backward (to parameters)")
    elif method.startswith("probes_"):
        _, norm, m = method.split("_")
        cpu, wall, (scores, stderr) = timed(
            lambda: heads_attribute(f, points, ids, norm=NORM_ARG[norm], n_probes=int(m))
        )
        squares = torch.stack(scores, 1).pow(2)
        rel = torch.stack(stderr, 1) / squares.clamp_min(1e-30)
        record.update(
            cpu_s=cpu,
            wall_s=wall,
            passes=f"1 forward + {m} backward"
            + (" + 1 forward (softmax)" if norm == "fisher" else ""),
            median_rel_stderr_of_squared_score=float(rel.median()),
            scores=torch.stack(scores, 1)[0].tolist(),  # (L, T, H)
        )
    elif method == "exact_sample":
        generator = torch.Generator().manual_seed(2)
        columns = torch.randperm(args.vocab, generator=generator)
        runs = []
        for rows in (args.exact_lo, args.exact_hi):
            restricted = LastLogits(lm, columns[:rows]).eval()
            cpu, wall, _ = timed(lambda g=restricted: heads_attribute(g, points, ids, norm=2))
            runs.append({"rows": rows, "cpu_s": cpu, "wall_s": wall})
        lo, hi = runs
        per_row_cpu = (hi["cpu_s"] - lo["cpu_s"]) / (hi["rows"] - lo["rows"])
        per_row_wall = (hi["wall_s"] - lo["wall_s"]) / (hi["rows"] - lo["rows"])
        units = args.layers * args.tokens * args.heads
        record.update(
            measured=runs,
            per_row_cpu_s=per_row_cpu,
            per_row_wall_s=per_row_wall,
            cpu_s=lo["cpu_s"] + (args.vocab - lo["rows"]) * per_row_cpu,
            wall_s=lo["wall_s"] + (args.vocab - lo["rows"]) * per_row_wall,
            extrapolated=f"t({lo['rows']} rows) + (K - {lo['rows']}) x per-row time, K = "
            f"{args.vocab}; per-row time = (t({hi['rows']}) - t({lo['rows']})) / "
            f"{hi['rows'] - lo['rows']}",
            # the effects LayerGNDI keeps: (K, N, T, H) float32 per layer, allocated up front
            effects_bytes_at_K=args.vocab * units * 4,
            effects_bytes_measured=hi["rows"] * units * 4,
            passes=f"1 forward + {args.vocab} backward",
        )
    elif method == "brute_sample":
        generator = torch.Generator().manual_seed(3)
        total = args.layers * args.tokens * args.heads
        picks = torch.randperm(total, generator=generator)[: args.brute_sample].tolist()
        units = [
            (u // (args.tokens * args.heads), (u // args.heads) % args.tokens, u % args.heads)
            for u in picks
        ]

        def run() -> list[dict[str, Any]]:
            out = []
            with torch.no_grad():
                clean = f(ids)
                for layer, t, h in units:

                    def edit(_: int, a: Tensor, t: int = t, h: int = h) -> Tensor:
                        a = a.clone()
                        a[:, t, h] = 0.0
                        return a

                    with intervene([points[layer]], edit):
                        patched = f(ids)
                    dz = patched - clean
                    out.append(
                        {
                            "layer": layer,
                            "position": t,
                            "head": h,
                            "l2": float(dz.norm()),
                            "fisher": float(fisher_norm(dz, clean)[0]),
                        }
                    )
            return out

        cpu, wall, patched = timed(run)
        n = len(units)
        # one clean forward plus one patched forward per unit: extrapolate the per-unit part
        record.update(
            measured={"units": n, "cpu_s": cpu, "wall_s": wall},
            cpu_s=fwd[0] + (cpu - fwd[0]) * total / n,
            wall_s=fwd[1] + (wall - fwd[1]) * total / n,
            extrapolated=f"t(clean forward) + (t({n} patched) - t(clean forward)) x {total}/{n}",
            patched=patched,
            passes=f"{total} forward (+1 clean)",
        )
    else:
        raise ValueError(f"unknown method {method!r}")
    peak = peak_bytes()
    record.update(peak_mib=(peak - base) / 2**20, loadavg=os.getloadavg())
    if method == "exact_sample":
        extra = record["effects_bytes_at_K"] - record["effects_bytes_measured"]
        record["peak_mib_extrapolated"] = record["peak_mib"] + extra / 2**20
    return record


def accuracy(args: argparse.Namespace) -> dict[str, Any]:
    from scipy.stats import spearmanr

    lm, points = build(args.acc_layers, args.heads, args.width, args.acc_vocab, args.acc_tokens)
    f = LastLogits(lm).eval()
    ids = prompts(args.acc_prompts, args.acc_tokens, args.acc_vocab, seed=4)
    cpu, wall, exact = timed(lambda: exact_both(f, points, ids))
    record: dict[str, Any] = {
        "method": "accuracy",
        "config": {
            "layers": args.acc_layers,
            "heads": args.heads,
            "width": args.width,
            "vocab": args.acc_vocab,
            "tokens": args.acc_tokens,
            "prompts": args.acc_prompts,
            "units_per_prompt": args.acc_layers * args.acc_tokens * args.heads,
        },
        "exact_cpu_s": cpu,
        "exact_wall_s": wall,
        "results": [],
    }
    if args.check_exact:  # the engine call above is what the public API computes
        for name in PROBE_NORMS:
            public, _ = heads_attribute(f, points, ids, norm=NORM_ARG[name])
            diff = (torch.stack(public, 1) - exact[name]).abs().max() / exact[name].abs().max()
            record[f"exact_{name}_vs_public_rel_diff"] = float(diff)
    record["spearman_exact_l2_vs_exact_fisher_dataset"] = float(
        spearmanr(exact["l2"].mean(0).flatten(), exact["fisher"].mean(0).flatten()).statistic
    )
    for name in PROBE_NORMS:
        for m in args.probes:
            per_seed = []
            for seed in range(args.acc_seeds):
                c, w, (scores, _) = timed(
                    lambda kw={"norm": NORM_ARG[name], "n_probes": m, "probe_seed": seed}: (
                        heads_attribute(f, points, ids, **kw)
                    )
                )
                est = torch.stack(scores, 1)  # (N, L, T, H)
                ref = exact[name]
                dataset = spearmanr(est.mean(0).flatten(), ref.mean(0).flatten()).statistic
                # data-set-level scores over the first p prompts, p = 1, 2, 4, ...
                by_prompts = {
                    str(p): float(
                        spearmanr(est[:p].mean(0).flatten(), ref[:p].mean(0).flatten()).statistic
                    )
                    for p in sorted({2**i for i in range(len(ids).bit_length())} | {len(ids)})
                    if p <= len(ids)
                }
                prompt_rhos = [
                    spearmanr(est[i].flatten(), ref[i].flatten()).statistic for i in range(len(ids))
                ]
                per_seed.append(
                    {
                        "seed": seed,
                        "spearman_dataset": float(dataset),
                        "spearman_dataset_by_prompts": by_prompts,
                        "spearman_per_prompt_mean": float(sum(prompt_rhos) / len(prompt_rhos)),
                        "spearman_per_prompt_min": float(min(prompt_rhos)),
                        "cpu_s": c,
                        "wall_s": w,
                    }
                )
            record["results"].append({"norm": name, "n_probes": m, "seeds": per_seed})
    record["loadavg"] = os.getloadavg()
    return record


# --- driver ------------------------------------------------------------------------------------


def methods_for(args: argparse.Namespace) -> list[str]:
    if args.methods:
        return list(args.methods)
    methods = []
    if not args.skip_speed:
        methods += ["forward", "fwd_bwd_heads", "fwd_bwd_params"]
        methods += [f"probes_{n}_{m}" for n in PROBE_NORMS for m in args.probes]
        methods += ["exact_sample", "brute_sample"]
    if not args.skip_accuracy:
        methods.append("accuracy")
    return methods


MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
"""Workers' glibc setting: every allocation of 64 KiB or more is its own mapping, returned to
the OS when freed (a fixed threshold turns off glibc's adaptive one, which otherwise keeps freed
tensors in the heap), so the resident set follows live tensor memory."""


def run_worker(args: argparse.Namespace, method: str, argv: list[str]) -> dict[str, Any]:
    if args.inline:
        return worker(argparse.Namespace(**{**vars(args), "worker": method}))
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "record.json"
        command = [sys.executable, __file__, *argv, "--worker", method, "--record", str(out)]
        env = os.environ if args.default_malloc else {**os.environ, **MALLOC_ENV}
        subprocess.run(command, check=True, env=env)
        return json.loads(out.read_text())


def summarise(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Ratios, pass-count limits and targets, from the records of one run."""
    m = results["methods"]
    if "exact_sample" not in m:
        return {}
    units = args.layers * args.tokens * args.heads
    k = args.vocab
    ref_heads = m["fwd_bwd_heads"]["peak_mib"]
    ref_params = m["fwd_bwd_params"]["peak_mib"]
    rows = []
    for norm in PROBE_NORMS:
        for n_probes in args.probes:
            p = m[f"probes_{norm}_{n_probes}"]
            exact_ratio = m["exact_sample"]["cpu_s"] / p["cpu_s"]
            brute_ratio = m["brute_sample"]["cpu_s"] / p["cpu_s"]
            rows.append(
                {
                    "norm": norm,
                    "n_probes": n_probes,
                    "probes_cpu_s": p["cpu_s"],
                    "exact_over_probes": exact_ratio,
                    "exact_limit": (1 + k) / (1 + n_probes),
                    "brute_over_probes": brute_ratio,
                    "brute_limit": units / (1 + n_probes),
                    "peak_mib": p["peak_mib"],
                    "memory_over_fwd_bwd_heads": p["peak_mib"] / ref_heads,
                    "memory_over_fwd_bwd_params": p["peak_mib"] / ref_params,
                }
            )
    return {"units": units, "K": k, "rows": rows, **versus_patching(m)}


def versus_patching(m: dict[str, Any]) -> dict[str, Any]:
    """Spearman of the probe scores against true patching on the brute-force sample (a sanity
    check of first-order G-NDI on this random model, not the accuracy target)."""
    from scipy.stats import spearmanr

    patched = m["brute_sample"]["patched"]
    out = {}
    for key, record in m.items():
        if key.startswith("probes_") and "scores" in record:
            norm = key.split("_")[1]
            scores = [record["scores"][u["layer"]][u["position"]][u["head"]] for u in patched]
            truth = [u[norm] for u in patched]
            out[key] = float(spearmanr(scores, truth).statistic)
    return {"spearman_probes_vs_true_patching_on_sample": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--probes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--exact-lo", type=int, default=16, help="VJP rows of the first sample")
    parser.add_argument("--exact-hi", type=int, default=48, help="VJP rows of the second sample")
    parser.add_argument("--brute-sample", type=int, default=64, help="patched forwards timed")
    parser.add_argument("--acc-layers", type=int, default=2)
    parser.add_argument("--acc-vocab", type=int, default=2000)
    parser.add_argument("--acc-tokens", type=int, default=32)
    parser.add_argument("--acc-prompts", type=int, default=8)
    parser.add_argument("--acc-seeds", type=int, default=3)
    parser.add_argument("--check-exact", action="store_true", help="also run exact via attribute")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", help="run only these workers (see the docstring)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="workers without MALLOC_MMAP_THRESHOLD_ (faster; peak memory then unreliable)",
    )
    parser.add_argument("--inline", action="store_true", help="no subprocesses (memory unreliable)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, inline, exact checked: a smoke run"
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--record", type=Path, help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    args = parser.parse_args()
    if args.quick:
        tiny = dict(layers=2, heads=2, width=32, vocab=300, tokens=8, probes=[4, 8], exact_lo=4)
        tiny.update(exact_hi=8, brute_sample=4, acc_layers=1, acc_vocab=100, acc_tokens=8)
        tiny.update(acc_prompts=2, acc_seeds=1, inline=True, check_exact=True)
        for key, value in tiny.items():
            setattr(args, key, value)
    if args.worker:
        args.record.write_text(json.dumps(worker(args)))
        return
    if "--out" in argv:  # the workers never need --out
        i = argv.index("--out")
        argv = argv[:i] + argv[i + 2 :]
    results: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/bench_vocab_probes.py", *sys.argv[1:]]),
        "machine": {
            "nproc": os.cpu_count(),
            "threads": args.threads,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "gpu": "none lent to this session: no GPU timings",
        },
        "config": {
            k: getattr(args, k)
            for k in ("layers", "heads", "width", "vocab", "tokens", "probes", "brute_sample")
        },
        "output": "full-vocabulary logits at the last position, (1, vocab); batch 1",
        "memory": "peak RSS above the RSS after build + warm-up (VmHWM reset via clear_refs)"
        + ("; default glibc malloc" if args.default_malloc else f"; workers with {MALLOC_ENV}"),
        "methods": {},
    }
    for method in methods_for(args):
        record = run_worker(args, method, argv)
        results["methods"][method] = record
        if method == "accuracy":
            for r in record["results"]:
                rhos = [s["spearman_dataset"] for s in r["seeds"]]
                print(f"accuracy {r['norm']:>6} m={r['n_probes']:<3} spearman {rhos}", flush=True)
        else:
            print(
                f"{method:>17}: {record['cpu_s']:10.2f} s CPU, {record['wall_s']:10.2f} s wall, "
                f"peak +{record['peak_mib']:7.0f} MiB",
                flush=True,
            )
    results["summary"] = summarise(results, args)
    for record in results["methods"].values():
        record.pop("scores", None)  # 18,432 floats per method; the JSON keeps the summaries
    text = json.dumps(results, indent=2)
    for row in results["summary"].get("rows", []):
        print(
            f"{row['norm']:>6} m={row['n_probes']:<3} exact/probes {row['exact_over_probes']:7.0f}x"
            f" (limit {row['exact_limit']:.0f}x)  brute/probes {row['brute_over_probes']:6.0f}x"
            f" (limit {row['brute_limit']:.0f}x)  memory {row['memory_over_fwd_bwd_heads']:.2f}x"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
