"""Every head x position of the real SmolLM2-135M over its full vocabulary (49,152) on IOI
prompts: random probes (plain and ``probe_exact``) against exact reverse mode and brute-force
patching, with peak memory and the probes' accuracy on the real model's softmax.

Model: ``captum_gndi.zoo.load_smollm2()`` (float32, eval). Prompts: ``captum_gndi.tasks.ioi(tok,
--acc-prompts, seed=0)``; the speed methods use the first ``--prompts`` of them in one batch.
Output: the full-vocabulary logits at the **last position** ``(N, 49152)``
(``logits_to_keep=1``). Units: every position x head of the 30 layers, ``find_layers(model,
"head")`` (``channel_dim=(1, 2)``): 30 x T x 9 per prompt. Baseline: each unit's activation on the
corrupted prompt of its pair (``LayerGNDI.attribute(clean, baselines=corrupted)``), i.e. the
G-NDI estimate of activation patching, unsigned, measured as the L2 or Fisher norm of the change
of the next-token logits.

Methods, each in a fresh subprocess (model loaded, one warm-up forward, then the peak-RSS mark
reset through ``/proc/self/clear_refs`` and the method run once; workers use
``MALLOC_MMAP_THRESHOLD_=65536``, see ``bench_vocab_probes.py``):

- ``probes_<norm>_<m>`` and ``probes_<norm>_<m>_r<r>``: ``LayerGNDI(f, heads).attribute(clean,
  baselines=corrupted, norm=2 | "fisher", n_probes=m[, probe_exact=r], mode="reverse",
  granularity="channel", channel_dim=(1, 2))``;
- ``exact_sample``: the library's exact reverse mode (one one-hot VJP row per vocabulary entry)
  on the logits restricted to ``--exact-lo`` and ``--exact-hi`` sampled entries; the time
  difference gives the per-row cost, **extrapolated** linearly to K = 49,152 rows;
- ``exact_factored``: exact by the model's structure: the logits are ``lm_head(g)`` with ``g``
  the final-norm output at the last position (576 numbers, no bias), so the exact effects on
  ``g`` (576 VJP rows of the library's exact reverse mode on ``ids -> g``) give every unit's
  logit effect ``dz = W_U dg`` exactly: ``||dz||^2 = dg^T (W_U^T W_U) dg`` and the Fisher norm
  ``dg^T W_U^T (diag(pi) - pi pi^T) W_U dg``. Measured, not extrapolated; the accuracy
  reference (checked against ``exact_sample``'s library scores on the sampled columns);
- ``brute_sample``: true patching, ``--brute-sample`` patched forwards (no grad, full forward)
  of random head x position units set to their corrupted activation; **extrapolated** to all
  units. Each gives the L2 and Fisher change and ``KL(pi || pi_patched)``;
- ``forward`` and ``fwd_bwd_heads`` (one forward with autograd and one backward pass to the 30
  head inputs): time and memory references.

Accuracy (``accuracy``, in the driver, no timing): the exact scores of ``--acc-prompts`` prompts
from ``exact_factored``, and the probe estimates for ``--acc-seeds`` seeds computed from the same
exact effects: the library's probe rows (``Readout.rows``, the same seeds) projected through
``W_U`` onto ``dg``, which is what a probe VJP computes (``v . dz = (W_U^T v) . dg``); seed 0 is
checked against the real ``attribute`` runs of the speed methods (relative difference in the
JSON). Spearman (``scipy.stats.spearmanr``) over all head x position units of the data-set-level
scores (mean over the first p prompts, p = 1, 2, 4, ..., all) and per prompt.

Usage::

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/bench_vocab_smollm2.py \\
        --out benchmarks/results/vocab_probes_smollm2.json
    .venv/bin/python benchmarks/bench_vocab_smollm2.py --quick  # 1 prompt, few rows: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vocab_probes import (  # noqa: E402
    MALLOC_ENV,
    LastLogits,
    fisher_norm,
    peak_bytes,
    reset_peak,
    timed,
)

from captum_gndi import LayerGNDI, find_layers  # noqa: E402
from captum_gndi.engine import compute_effects  # noqa: E402
from captum_gndi.interventions import intervene  # noqa: E402
from captum_gndi.job import ScoringJob  # noqa: E402
from captum_gndi.readouts import make_readout  # noqa: E402
from captum_gndi.runs import make_runner  # noqa: E402

NORM_ARG = {"l2": 2, "fisher": "fisher"}
IDS = "ioi_ids.pt"


# --- model and data ----------------------------------------------------------------------------


def load():
    """SmolLM2 (eval), its tokenizer and its Heads points."""
    from captum_gndi.zoo import load_smollm2

    model, tok = load_smollm2()
    model.eval()
    points = list(find_layers(model, "head").values())
    return model, tok, points


def make_ids(tok, args: argparse.Namespace) -> Tensor:
    """The IOI pairs, made once by the driver and saved in the scratch folder."""
    from captum_gndi.tasks import ioi

    if args.reuse and (Path(args.scratch) / IDS).is_file():
        return task_ids(args, args.acc_prompts)[0]
    task = ioi(tok, args.acc_prompts, seed=0)
    torch.save({"clean": task.clean, "corrupted": task.corrupted}, Path(args.scratch) / IDS)
    return task.clean


def task_ids(args: argparse.Namespace, n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` IOI pairs as the driver made them (every process scores the same token
    ids, whatever tokenizer it loaded)."""
    ids = torch.load(Path(args.scratch) / IDS)
    return ids["clean"][:n], ids["corrupted"][:n]


def weights_checksum(lm: torch.nn.Module) -> float:
    """A fingerprint of the loaded weights (the driver checks every worker saw the same)."""
    with torch.no_grad():
        return float(sum(p.double().abs().sum() for p in lm.parameters()))


class FinalNorm(torch.nn.Module):
    """``ids -> g``: the final-norm hidden state at the last position, ``(N, d_model)``; the
    logits there are ``lm_head(g)``."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, ids: Tensor) -> Tensor:
        return self.lm.model(input_ids=ids).last_hidden_state[:, -1]


def corrupted_activations(f, points, corrupted: Tensor) -> list[Tensor]:
    """Every Heads point's activation ``(N, T, H, d)`` on the corrupted prompts."""
    store: dict[int, Tensor] = {}

    def keep(position: int, a: Tensor) -> None:
        store[position] = a.detach().clone()

    with torch.no_grad(), intervene(points, keep):
        f(corrupted)
    return [store[i] for i in range(len(points))]


def heads_attribute(f, points, clean, corrupted, **kwargs):
    gndi = LayerGNDI(f, points)
    scores = gndi.attribute(
        clean,
        baselines=corrupted,
        mode="reverse",
        granularity="channel",
        channel_dim=(1, 2),
        **kwargs,
    )
    stderr = gndi.probe_stderr
    return torch.stack([s.detach() for s in scores], 1), (
        None if stderr is None else torch.stack([s.detach() for s in stderr], 1)
    )


def factored_effects(lm, points, clean, corrupted) -> Tensor:
    """Exact effects on ``g`` by the library's exact reverse mode: ``(d_model, N, L, T, H)``."""
    f = FinalNorm(lm).eval()
    job = ScoringJob(
        run=make_runner(f, (clean,), None, None),
        layers=points,
        labels=[f"h{i}" for i in range(len(points))],
        baselines=corrupted_activations(f, points, corrupted),
        channel_dim=(1, 2),
    )
    effects, _ = compute_effects(job, "reverse", "channel")
    return torch.stack(effects, 2).detach()


def exact_from_factored(
    eg: Tensor, w: Tensor, logits: Tensor, columns: Tensor | None = None
) -> dict[str, Tensor]:
    """Exact L2 and Fisher scores ``(N, L, T, H)`` from the effects on ``g``: ``dz = W dg``."""
    d, n = eg.shape[:2]
    e = eg.reshape(d, n, -1).double()  # (d, N, U)
    w = w.double() if columns is None else w[columns].double()
    gram = w.T @ w
    l2 = torch.einsum("dnu,de,enu->nu", e, gram, e)
    out = {"l2": l2.clamp_min(0).sqrt().reshape(n, *eg.shape[2:])}
    if columns is None:
        pi = torch.softmax(logits.double(), -1)  # (N, V)
        fisher = []
        for i in range(n):
            a = (w * pi[i, :, None]).T @ w  # W^T diag(pi) W
            mean = w.T @ pi[i]  # W^T pi
            quad = torch.einsum("du,de,eu->u", e[:, i], a, e[:, i])
            fisher.append((quad - (mean @ e[:, i]) ** 2).clamp_min(0).sqrt())
        out["fisher"] = torch.stack(fisher).reshape(n, *eg.shape[2:])
    return out


def simulated_probes(
    eg: Tensor, w: Tensor, logits: Tensor, norm: str, m: int, r: int | None, seed: int
) -> tuple[Tensor, Tensor]:
    """The probe estimate of ``attribute(n_probes=m, probe_exact=r, probe_seed=seed)`` from the
    exact effects on ``g``: the library's rows ``v`` (``Readout.rows``), ``v . dz = (W^T v) .
    dg``. Returns the scores and the probe standard errors, ``(N, L, T, H)``."""
    readout = make_readout(NORM_ARG[norm], m, seed, r)
    readout.output_shape = (logits.shape[-1],)
    k = readout.rows_count(logits)
    d, n = eg.shape[:2]
    e = eg.reshape(d, n, -1).float()
    projections = []
    for start in range(0, k, 8):
        rows = readout.rows(start, min(k, start + 8), logits.float())  # (k, N, V)
        through = rows @ w.float()  # (k, N, d)
        projections.append(torch.einsum("knd,dnu->knu", through, e))
    proj = torch.cat(projections)
    shape = (n, *eg.shape[2:])
    return readout.scores(proj).reshape(shape), readout.probe_stderr(proj).reshape(shape)


def probe_methods(args: argparse.Namespace) -> list[str]:
    out = []
    for norm in ("l2", "fisher"):
        for m in args.probes:
            out.append(f"probes_{norm}_{m}")
            out += [f"probes_{norm}_{m}_r{r}" for r in args.exact]
    return out


def parse_probe(method: str) -> tuple[str, int, int | None]:
    parts = method.split("_")
    r = int(parts[3][1:]) if len(parts) > 3 else None
    return parts[1], int(parts[2]), r


# --- workers -----------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    method = args.worker
    lm, _, points = load()
    n = args.acc_prompts if method == "exact_factored_acc" else args.prompts
    clean, corrupted = task_ids(args, n)
    f = LastLogits(lm).eval()
    with torch.no_grad():
        f(clean)
    fwd = min((timed(lambda: f(clean).sum()) for _ in range(2)), key=lambda t: t[0])
    layers, tokens, heads = len(points), clean.shape[1], points[0].n_heads
    units = layers * tokens * heads
    record: dict[str, Any] = {
        "method": method,
        "prompts": n,
        "tokens": tokens,
        "units_per_prompt": units,
        "weights_checksum": weights_checksum(lm),
        "forward_cpu_s": fwd[0],
        "forward_wall_s": fwd[1],
    }
    scratch = Path(args.scratch)
    base = reset_peak()
    if method == "forward":
        with torch.no_grad():
            cpu, wall, _ = timed(lambda: f(clean))
        record.update(cpu_s=cpu, wall_s=wall, passes="1 forward")
    elif method == "fwd_bwd_heads":
        captured: list[Tensor] = []
        hooks = [
            p.module.register_forward_pre_hook(lambda m, a: captured.append(a[0])) for p in points
        ]

        def run() -> None:
            out = f(clean)
            torch.autograd.grad(out, captured, grad_outputs=torch.randn_like(out))

        cpu, wall, _ = timed(run)
        for h in hooks:
            h.remove()
        record.update(cpu_s=cpu, wall_s=wall, passes="1 forward + 1 backward (to head inputs)")
    elif method.startswith("probes_"):
        norm, m, r = parse_probe(method)
        kwargs = {"norm": NORM_ARG[norm], "n_probes": m, "probe_exact": r}
        cpu, wall, (scores, stderr) = timed(
            lambda: heads_attribute(f, points, clean, corrupted, **kwargs)
        )
        exact_rows = 0 if r is None else r + 1
        rel = stderr / scores.pow(2).clamp_min(1e-30)
        record.update(
            cpu_s=cpu,
            wall_s=wall,
            backward_rows=exact_rows + m,
            passes=f"2 forward (clean, corrupted) + {exact_rows + m} backward",
            median_rel_stderr_of_squared_score=float(rel.median()),
            scores=scores.tolist(),  # (N, L, T, H)
        )
    elif method in ("exact_factored", "exact_factored_acc"):
        cpu, wall, eg = timed(lambda: factored_effects(lm, points, clean, corrupted))
        torch.save(eg, scratch / f"{method}.pt")
        record.update(
            cpu_s=cpu,
            wall_s=wall,
            backward_rows=eg.shape[0],
            passes=f"2 forward + {eg.shape[0]} backward (rows of g = final norm, last position)",
        )
    elif method == "exact_sample":
        generator = torch.Generator().manual_seed(2)
        columns = torch.randperm(lm.config.vocab_size, generator=generator)
        runs = []
        for rows in (args.exact_lo, args.exact_hi):
            restricted = LastLogits(lm, columns[:rows]).eval()
            cpu, wall, (scores, _) = timed(
                lambda g=restricted: heads_attribute(g, points, clean, corrupted, norm=2)
            )
            runs.append({"rows": rows, "cpu_s": cpu, "wall_s": wall})
        lo, hi = runs
        vocab = lm.config.vocab_size
        per_row_cpu = (hi["cpu_s"] - lo["cpu_s"]) / (hi["rows"] - lo["rows"])
        per_row_wall = (hi["wall_s"] - lo["wall_s"]) / (hi["rows"] - lo["rows"])
        record.update(
            measured=runs,
            per_row_cpu_s=per_row_cpu,
            per_row_wall_s=per_row_wall,
            cpu_s=lo["cpu_s"] + (vocab - lo["rows"]) * per_row_cpu,
            wall_s=lo["wall_s"] + (vocab - lo["rows"]) * per_row_wall,
            extrapolated=f"t({lo['rows']} rows) + (K - {lo['rows']}) x per-row time, K = "
            f"{vocab}; per-row time = (t({hi['rows']}) - t({lo['rows']})) / "
            f"{hi['rows'] - lo['rows']}",
            effects_bytes_at_K=vocab * n * units * 4,
            effects_bytes_measured=hi["rows"] * n * units * 4,
            passes=f"2 forward + {vocab} backward",
            columns=columns[: args.exact_hi].tolist(),
            scores_hi=scores.tolist(),  # library exact L2 on the hi sampled columns
        )
    elif method == "brute_sample":
        generator = torch.Generator().manual_seed(3)
        picks = torch.randperm(units, generator=generator)[: args.brute_sample].tolist()
        chosen = [(u // (tokens * heads), (u // heads) % tokens, u % heads) for u in picks]
        sources = corrupted_activations(f, points, corrupted)

        def run() -> list[dict[str, Any]]:
            out = []
            with torch.no_grad():
                clean_logits = f(clean)
                log_pi = torch.log_softmax(clean_logits.double(), -1)
                for layer, t, h in chosen:

                    def edit(_: int, a: Tensor, layer=layer, t=t, h=h) -> Tensor:
                        a = a.clone()
                        a[:, t, h] = sources[layer][:, t, h]
                        return a

                    with intervene([points[layer]], edit):
                        patched = f(clean)
                    dz = patched - clean_logits
                    kl = (log_pi.exp() * (log_pi - torch.log_softmax(patched.double(), -1))).sum(-1)
                    out.append(
                        {
                            "layer": layer,
                            "position": t,
                            "head": h,
                            "l2": dz.norm(dim=-1).tolist(),
                            "fisher": fisher_norm(dz, clean_logits).tolist(),
                            "kl": kl.tolist(),
                        }
                    )
            return out

        cpu, wall, patched = timed(run)
        k = len(chosen)
        record.update(
            measured={"units": k, "cpu_s": cpu, "wall_s": wall},
            cpu_s=fwd[0] + (cpu - fwd[0]) * units / k,
            wall_s=fwd[1] + (wall - fwd[1]) * units / k,
            extrapolated=f"t(clean forward) + (t({k} patched) - t(clean forward)) x {units}/{k}",
            patched=patched,
            passes=f"{units} forward (+1 clean, +1 corrupted)",
        )
    else:
        raise ValueError(f"unknown method {method!r}")
    record.update(peak_mib=(peak_bytes() - base) / 2**20, loadavg=os.getloadavg())
    if method == "exact_sample":
        extra = record["effects_bytes_at_K"] - record["effects_bytes_measured"]
        record["peak_mib_extrapolated"] = record["peak_mib"] + extra / 2**20
    return record


# --- accuracy (driver) -------------------------------------------------------------------------


def rho(a: Tensor, b: Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic)


def accuracy(args: argparse.Namespace, methods: dict[str, Any]) -> dict[str, Any]:
    """Exact scores and simulated probe seeds on the accuracy prompts (see the docstring)."""
    lm, _, _ = load()
    clean, _ = task_ids(args, args.acc_prompts)
    name = "exact_factored_acc" if args.acc_prompts != args.prompts else "exact_factored"
    eg = torch.load(Path(args.scratch) / f"{name}.pt")
    w = lm.lm_head.weight.detach()
    with torch.no_grad():
        logits = LastLogits(lm)(clean)
    exact = exact_from_factored(eg, w, logits)
    pi = torch.softmax(logits.double(), -1)
    top = pi.sort(-1, descending=True).values.cumsum(-1)
    record: dict[str, Any] = {
        "prompts": args.acc_prompts,
        "reference": name,
        "softmax_top_mass": {str(r): top[:, r - 1].tolist() for r in (1, 4, 8, 16, 32)},
        "spearman_exact_l2_vs_exact_fisher_dataset": rho(
            exact["l2"].mean(0), exact["fisher"].mean(0)
        ),
        "checks": {},
        "results": [],
    }
    n_speed = args.prompts
    if "exact_sample" in methods:  # the factorisation against the library's exact reverse mode
        sample = methods["exact_sample"]
        cols = torch.tensor(sample["columns"])
        lib = torch.tensor(sample["scores_hi"])
        mine = exact_from_factored(eg[:, :n_speed], w, logits[:n_speed], cols)["l2"]
        record["checks"]["exact_factored_vs_library_exact_on_sampled_columns_rel_diff"] = float(
            (mine - lib.double()).abs().max() / lib.abs().max()
        )
    for method, rec in methods.items():  # simulated seed 0 against the real attribute run
        if method.startswith("probes_") and "scores" in rec:
            norm, m, r = parse_probe(method)
            sim, _ = simulated_probes(eg[:, :n_speed], w, logits[:n_speed], norm, m, r, 0)
            lib = torch.tensor(rec["scores"])
            record["checks"][f"{method}_simulated_vs_attribute_rel_diff"] = float(
                (sim.double() - lib.double()).abs().max() / lib.abs().max()
            )
    if "brute_sample" in methods:  # first-order G-NDI (exact norms) against true patching
        patched = methods["brute_sample"]["patched"]
        for norm in ("l2", "fisher"):
            est = [exact[norm][:n_speed, u["layer"], u["position"], u["head"]] for u in patched]
            truth = [torch.tensor(u[norm]) for u in patched]
            record["checks"][f"spearman_exact_gndi_{norm}_vs_patched_{norm}_sample"] = rho(
                torch.stack(est).mean(1), torch.stack(truth).mean(1)
            )
        kl = torch.stack([torch.tensor(u["kl"]) for u in patched]).mean(1)
        est = torch.stack(
            [exact["fisher"][:n_speed, u["layer"], u["position"], u["head"]] for u in patched]
        )
        record["checks"]["spearman_exact_gndi_fisher_vs_patched_kl_sample"] = rho(est.mean(1), kl)
    # units whose corrupted activation differs from the clean one in some prompt (the others,
    # e.g. every head at positions before the first name, score exactly 0 in both)
    moved = exact["l2"].amax(0) > 0
    record["units_nonzero"] = int(moved.sum())
    record["units"] = int(moved.numel())
    sizes = sorted({2**i for i in range(args.acc_prompts.bit_length())} | {args.acc_prompts})
    sizes = [p for p in sizes if p <= args.acc_prompts]
    for norm in ("l2", "fisher"):
        for m in args.acc_probes:
            for r in [None, *args.acc_exact]:
                per_seed = []
                for seed in range(args.acc_seeds):
                    est, se = simulated_probes(eg, w, logits, norm, m, r, seed)
                    ref = exact[norm]
                    per_seed.append(
                        {
                            "seed": seed,
                            "spearman_dataset_by_prompts": {
                                str(p): rho(est[:p].mean(0), ref[:p].mean(0)) for p in sizes
                            },
                            "spearman_dataset_nonzero_by_prompts": {
                                str(p): rho(est[:p].mean(0)[moved], ref[:p].mean(0)[moved])
                                for p in sizes
                            },
                            "spearman_per_prompt_mean": sum(
                                rho(est[i], ref[i]) for i in range(len(est))
                            )
                            / len(est),
                            "median_rel_stderr_of_squared_score": float(
                                (se / est.pow(2).clamp_min(1e-30)).median()
                            ),
                        }
                    )
                rows = m + (0 if r is None else r + 1)
                record["results"].append(
                    {"norm": norm, "n_probes": m, "probe_exact": r, "rows": rows, "seeds": per_seed}
                )
                for key in ("spearman_dataset_by_prompts", "spearman_dataset_nonzero_by_prompts"):
                    full = [s[key][str(args.acc_prompts)] for s in per_seed]
                    print(
                        f"accuracy {norm:>6} m={m:<3} r={r!s:<4} rows={rows:<4} {key} "
                        f"({args.acc_prompts} prompts) min {min(full):.4f} mean "
                        f"{sum(full) / len(full):.4f}",
                        flush=True,
                    )
    return record


# --- tables ------------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> str:
    """The markdown tables of docs/benchmarks.md from a results JSON (``--report``)."""
    m = results["methods"]
    ref = m["fwd_bwd_heads"]["peak_mib"]
    lines = [
        "| method | backward rows | CPU s | wall s | peak MiB above model | / fwd-bwd |",
        "|---|---|---|---|---|---|",
    ]
    for key in ("forward", "fwd_bwd_heads"):
        r = m[key]
        lines.append(
            f"| {key} | {r['passes']} | {r['cpu_s']:.2f} | {r['wall_s']:.2f} | "
            f"{r['peak_mib']:.0f} | {r['peak_mib'] / ref:.2f} |"
        )
    for key, r in m.items():
        if key.startswith("probes_"):
            lines.append(
                f"| {key} | {r['backward_rows']} | {r['cpu_s']:.1f} | {r['wall_s']:.1f} | "
                f"{r['peak_mib']:.0f} | {r['peak_mib'] / ref:.2f} |"
            )
    for key in ("exact_factored", "exact_sample", "brute_sample"):
        if key in m:
            r = m[key]
            peak = r.get("peak_mib_extrapolated", r["peak_mib"])
            note = " (extrapolated)" if "extrapolated" in r else " (measured)"
            lines.append(
                f"| {key}{note} | {r['passes']} | {r['cpu_s']:.0f} | {r['wall_s']:.0f} | "
                f"{r['peak_mib']:.0f} measured; {peak:.0f} at K | {peak / ref:.2f} |"
            )
    lines += [
        "",
        "| probes | rows | exact / probes (extrapolated) | exact factored / probes | "
        "brute / probes (extrapolated) |",
        "|---|---|---|---|---|",
    ]
    for row in results.get("summary", {}).get("rows", []):
        factored = row["exact_factored_over_probes"]
        lines.append(
            f"| {row['method']} | {row['backward_rows']} | {row['exact_over_probes']:.0f}x | "
            + (f"{factored:.1f}x" if factored else "")
            + f" | {row['brute_over_probes']:.0f}x |"
        )
    acc = results.get("accuracy")
    if acc:
        sizes = list(acc["results"][0]["seeds"][0]["spearman_dataset_by_prompts"])
        lines += [
            "",
            "| norm | m | probe_exact | rows | "
            + " | ".join(f"data set, {p} prompts" for p in sizes)
            + " | nonzero units, all prompts | per prompt | median rel. stderr |",
            "|---|---|---|---|" + "---|" * (len(sizes) + 3),
        ]
        for r in acc["results"]:
            seeds = r["seeds"]

            def span(values: list[float]) -> str:
                return f"{min(values):.4f}-{max(values):.4f}"

            cells = [span([s["spearman_dataset_by_prompts"][p] for s in seeds]) for p in sizes]
            nonzero = span([s["spearman_dataset_nonzero_by_prompts"][sizes[-1]] for s in seeds])
            per_prompt = span([s["spearman_per_prompt_mean"] for s in seeds])
            rel = sum(s["median_rel_stderr_of_squared_score"] for s in seeds) / len(seeds)
            lines.append(
                f"| {r['norm']} | {r['n_probes']} | {r['probe_exact']} | {r['rows']} | "
                + " | ".join(cells)
                + f" | {nonzero} | {per_prompt} | {rel:.3f} |"
            )
    return "\n".join(lines)


# --- driver ------------------------------------------------------------------------------------


def run_worker(args: argparse.Namespace, method: str, argv: list[str]) -> dict[str, Any]:
    out = Path(args.scratch) / f"{method}.json"
    command = [sys.executable, __file__, *argv, "--worker", method, "--record", str(out)]
    env = os.environ if args.default_malloc else {**os.environ, **MALLOC_ENV}
    subprocess.run(command, check=True, env=env)
    return json.loads(out.read_text())


def summarise(methods: dict[str, Any]) -> dict[str, Any]:
    if "exact_sample" not in methods or "brute_sample" not in methods:
        return {}
    ref = methods.get("fwd_bwd_heads", {}).get("peak_mib")
    rows = []
    for key, p in methods.items():
        if not key.startswith("probes_"):
            continue
        norm, m, r = parse_probe(key)
        rows.append(
            {
                "method": key,
                "norm": norm,
                "n_probes": m,
                "probe_exact": r,
                "backward_rows": p["backward_rows"],
                "cpu_s": p["cpu_s"],
                "exact_over_probes": methods["exact_sample"]["cpu_s"] / p["cpu_s"],
                "exact_factored_over_probes": (
                    methods["exact_factored"]["cpu_s"] / p["cpu_s"]
                    if "exact_factored" in methods
                    else None
                ),
                "brute_over_probes": methods["brute_sample"]["cpu_s"] / p["cpu_s"],
                "peak_mib": p["peak_mib"],
                "memory_over_fwd_bwd_heads": None if not ref else p["peak_mib"] / ref,
            }
        )
    return {"rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=4, help="IOI pairs of the speed methods")
    parser.add_argument("--probes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--exact", type=int, nargs="+", default=[8], help="probe_exact values")
    parser.add_argument("--exact-lo", type=int, default=16)
    parser.add_argument("--exact-hi", type=int, default=48)
    parser.add_argument("--brute-sample", type=int, default=64)
    parser.add_argument("--acc-prompts", type=int, default=16)
    parser.add_argument("--acc-probes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--acc-exact", type=int, nargs="+", default=[0, 4, 8, 16])
    parser.add_argument("--acc-seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", help="run only these workers")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--default-malloc", action="store_true")
    parser.add_argument("--scratch", default="/tmp/bench_vocab_smollm2")
    parser.add_argument(
        "--reuse", action="store_true", help="keep the scratch folder's ids and worker records"
    )
    parser.add_argument("--quick", action="store_true", help="1 prompt, few rows: a smoke run")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--report", type=Path, help="print the markdown tables of a results JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--record", type=Path, help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    args = parser.parse_args()
    if args.report:
        print(report(json.loads(args.report.read_text())))
        return
    if args.quick:
        quick = dict(prompts=1, acc_prompts=1, probes=[2], exact=[1], exact_lo=2, exact_hi=4)
        quick.update(brute_sample=2, acc_probes=[2], acc_exact=[1], acc_seeds=1)
        for key, value in quick.items():
            setattr(args, key, value)
    Path(args.scratch).mkdir(parents=True, exist_ok=True)
    if args.worker:
        args.record.write_text(json.dumps(worker(args)))
        return
    if "--out" in argv:
        i = argv.index("--out")
        argv = argv[:i] + argv[i + 2 :]
    methods = args.methods or [
        "forward",
        "fwd_bwd_heads",
        *probe_methods(args),
        "exact_factored",
        "exact_sample",
        "brute_sample",
    ]
    if not args.skip_accuracy and args.acc_prompts != args.prompts and not args.methods:
        methods.append("exact_factored_acc")
    lm, tok, _ = load()
    clean = make_ids(tok, args)
    checksum = weights_checksum(lm)
    del lm
    results: dict[str, Any] = {
        "prompts": [tok.decode(row) for row in clean],
        "weights_checksum": checksum,
        "command": " ".join(["python", "benchmarks/bench_vocab_smollm2.py", *sys.argv[1:]]),
        "machine": {
            "nproc": os.cpu_count(),
            "threads": args.threads,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
        },
        "config": {
            k: getattr(args, k)
            for k in ("prompts", "probes", "exact", "brute_sample", "acc_prompts", "acc_seeds")
        },
        "output": "full-vocabulary logits at the last position (N, 49152); baseline: the "
        "corrupted prompt's activation of each unit",
        "memory": "peak RSS above the RSS after load + warm-up (VmHWM reset via clear_refs)"
        + ("; default glibc malloc" if args.default_malloc else f"; workers with {MALLOC_ENV}"),
        "methods": {},
    }
    start = time.time()
    for method in methods:
        done = Path(args.scratch) / f"{method}.json"
        if args.reuse and done.is_file():
            record = json.loads(done.read_text())
        else:
            record = run_worker(args, method, argv)
        results["methods"][method] = record
        if record.get("weights_checksum", checksum) != checksum:
            raise RuntimeError(f"{method} loaded other weights than the driver")
        print(
            f"{method:>22}: {record['cpu_s']:10.2f} s CPU, {record['wall_s']:10.2f} s wall, "
            f"peak +{record['peak_mib']:7.0f} MiB  ({time.time() - start:.0f} s so far)",
            flush=True,
        )
    if not args.skip_accuracy:
        results["accuracy"] = accuracy(args, results["methods"])
        print(json.dumps(results["accuracy"]["checks"], indent=1), flush=True)
    results["summary"] = summarise(results["methods"])
    for record in results["methods"].values():
        record.pop("scores", None)
        record.pop("scores_hi", None)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
