"""Validate G-NDI on the zoo's polarity LM against true activation patching (issue 15, item 6).

Two experiments on :func:`captum_gndi.zoo.load_polarity_lm` (4 layers x 4 heads, width 128),
held-out sentences only (the LM's fixed split, seed 0):

(a) **Mean ablation, next-token prediction.** Held-out sentences as ``BOS sentence EOS``, cut or
    right-padded to ``--length`` tokens with an attention mask. Units: every head (16), every
    position x head (``length x 16``), the 4 MLP outputs and the 4 block outputs (residual
    stream). Baseline: each unit's mean output over the real tokens of all held-out sentences
    (cut to the same length). Damage of setting the unit to its mean (a forward (pre-)hook
    written here, independent of captum_gndi): KL(clean || patched) of the next-token
    distributions averaged over real positions, and the increase of the next-token loss.
    Scores: G-NDI first order (L2 of the masked logits, Fisher norm), path-integrated
    (``--n-steps``), random probes (``--n-probes``, Fisher), gradient x (activation - baseline)
    (``|signed first-order change of the loss|``, from ``LayerGNDI(signed=True)`` on the loss),
    attribution patching (AtP, ``|(b - a) . dLoss/da|`` with its own hooks), and the controls
    ``||h - b||``, depth and random (10 seeds).

(b) **Clean vs corrupted prompts.** Template ``"{A} , {B} and"``: clean with two positive
    adjectives, corrupted with two negative ones (single-token words, all prompts 5 tokens, no
    padding). Metric: mean logit of `` good, great, best`` minus mean logit of `` bad,
    worst, awful`` at the last token (``logit(" good") - logit(" bad")`` alone separates the
    prompts less: mean gap 0.09 against 0.21). Signed G-NDI with
    ``baselines=`` the corrupted ids (first order: ``-AtP``; path-integrated) against true
    activation patching of each head / position x head (and MLP, block) from the corrupted run
    into the clean run.

Statistics: Spearman with 95% BCa bootstrap intervals (:mod:`captum_gndi.validation.stats`) over
units of data-set-level scores (the mean over examples of per-example scores, the library's
convention) against the data-set-level damage.

Usage (about 15 to 25 minutes on one shared CPU thread)::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python experiments/validate_polarity_lm.py \
        --out benchmarks/results/polarity_lm_validation.json

Per-part raw arrays are cached under ``--cache`` (default ``runs/lm_validation``): a rerun only
recomputes the statistics unless ``--recompute`` is given.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from captum_gndi import Heads, LayerGNDI  # noqa: E402
from captum_gndi.validation import stats  # noqa: E402

POSITIVE = [
    "funny",
    "moving",
    "smart",
    "charming",
    "beautiful",
    "gorgeous",
    "witty",
    "touching",
    "clever",
    "delightful",
    "engaging",
    "compelling",
    "fascinating",
    "wonderful",
    "brilliant",
    "powerful",
    "fresh",
    "entertaining",
    "sweet",
    "warm",
    "thoughtful",
    "solid",
    "enjoyable",
    "fun",
]
NEGATIVE = [
    "dull",
    "boring",
    "stupid",
    "tedious",
    "ugly",
    "flat",
    "lame",
    "pointless",
    "tired",
    "bland",
    "mediocre",
    "silly",
    "predictable",
    "pretentious",
    "awful",
    "terrible",
    "dreary",
    "shallow",
    "empty",
    "dumb",
    "forced",
    "weak",
    "tiresome",
    "cheap",
]
TEMPLATE = "{} , {} and"
PAIR_OFFSETS = (1, 5, 11, 17)
READOUT_POSITIVE = ("good", "great", "best")
READOUT_NEGATIVE = ("bad", "worst", "awful")
N_RANDOM = 10


# -- data ---------------------------------------------------------------------------------------


def encode(tokenizer, texts, length: int) -> tuple[Tensor, Tensor]:
    """``BOS text EOS`` ids cut or right-padded to ``length``, and the attention mask."""
    rows = tokenizer(list(texts))["input_ids"]
    ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        row = (list(row) + [tokenizer.eos_token_id])[:length]
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def polarity_prompts(tokenizer, seed: int = 0) -> tuple[Tensor, Tensor, list[str], list[str]]:
    """Clean (positive) and corrupted (negative) prompts of the template, same token length."""

    def single(word: str) -> bool:
        return len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1

    pos = [w for w in POSITIVE if single(w)]
    neg = [w for w in NEGATIVE if single(w)]
    n = min(len(pos), len(neg))
    pos = pos[:n]
    order = np.random.default_rng(seed).permutation(n)
    neg = [neg[i] for i in order]
    clean = [TEMPLATE.format(pos[i], pos[(i + k) % n]) for k in PAIR_OFFSETS for i in range(n)]
    corrupt = [TEMPLATE.format(neg[i], neg[(i + k) % n]) for k in PAIR_OFFSETS for i in range(n)]
    a = tokenizer(clean, return_tensors="pt", padding=True)
    b = tokenizer(corrupt, return_tensors="pt", padding=True)
    if not (bool(a["attention_mask"].all()) and bool(b["attention_mask"].all())):
        raise ValueError("prompts do not all have the same token length")
    if a["input_ids"].shape != b["input_ids"].shape:
        raise ValueError("clean and corrupted prompts differ in length")
    return a["input_ids"], b["input_ids"], clean, corrupt


# -- units and true patching (independent of captum_gndi) ----------------------------------------


@dataclass(frozen=True)
class Unit:
    """One intervention target: a head (optionally at one position), an MLP or a block output."""

    kind: str  # "head", "mlp", "block"
    layer: int
    head: int | None = None
    position: int | None = None

    @property
    def name(self) -> str:
        if self.kind == "head":
            where = "" if self.position is None else f"@{self.position}"
            return f"L{self.layer}H{self.head}{where}"
        return f"{self.kind}{self.layer}"


def head_point(lm: nn.Module, layer: int) -> nn.Module:
    return lm.transformer.h[layer].attn.c_proj


def unit_module(lm: nn.Module, unit: Unit) -> nn.Module:
    block = lm.transformer.h[unit.layer]
    return {"head": block.attn.c_proj, "mlp": block.mlp, "block": block}[unit.kind]


@contextmanager
def patched(lm: nn.Module, unit: Unit, value: Tensor, n_heads: int):
    """Set the unit to ``value`` during forward passes.

    ``value`` broadcasts to the unit's activation: ``(N, T, H, d_head)`` for heads (the input
    of ``c_proj`` split into heads), ``(N, T, D)`` for MLP and block outputs.
    """
    module = unit_module(lm, unit)
    if unit.kind == "head":

        def pre_hook(_module, args):
            x = args[0]
            heads = x.unflatten(-1, (n_heads, x.shape[-1] // n_heads)).clone()
            full = value.to(x.dtype).expand_as(heads)
            t = slice(None) if unit.position is None else unit.position
            heads[:, t, unit.head] = full[:, t, unit.head]
            return (heads.flatten(-2), *args[1:])

        handle = module.register_forward_pre_hook(pre_hook)
    else:

        def hook(_module, _args, output):
            h = output[0] if isinstance(output, tuple) else output
            new = value.to(h.dtype).expand_as(h).clone()
            return (new, *output[1:]) if isinstance(output, tuple) else new

        handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def captured(lm: nn.Module, n_layers: int, n_heads: int, keep_grad: bool = False):
    """Record every layer's head inputs ``(N, T, H, d)``, MLP outputs and block outputs.

    With ``keep_grad`` a zero tensor ``eps`` requiring grad is added at every point (``a + eps``
    leaves the forward pass unchanged and keeps every path between points), so after a backward
    pass ``store[("grad", kind, layer)]`` holds ``d out / d a`` (same layout as the activation).
    """
    store: dict[tuple, Tensor] = {}
    eps: dict[tuple, Tensor] = {}
    handles = []

    def keep(key, t):
        store[key] = t.detach()
        if keep_grad:
            e = torch.zeros_like(t, requires_grad=True)
            eps[key] = e
            return t + e
        return t

    for i in range(n_layers):
        block = lm.transformer.h[i]

        def pre(_m, args, i=i):
            return (keep(("head", i), args[0]), *args[1:])

        def mlp(_m, _a, out, i=i):
            return keep(("mlp", i), out)

        def blk(_m, _a, out, i=i):
            if isinstance(out, tuple):
                return (keep(("block", i), out[0]), *out[1:])
            return keep(("block", i), out)

        handles += [
            block.attn.c_proj.register_forward_pre_hook(pre),
            block.mlp.register_forward_hook(mlp),
            block.register_forward_hook(blk),
        ]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()
    for key, e in eps.items():
        if e.grad is not None:
            store[("grad", *key)] = e.grad
    for key, t in list(store.items()):
        if key[-2] == "head":
            store[key] = t.unflatten(-1, (n_heads, t.shape[-1] // n_heads))


@torch.no_grad()
def real_token_means(lm, ids: Tensor, mask: Tensor, batch_size: int = 128) -> dict:
    """Each head's (H, d), MLP's (D,) and block's (D,) mean output over real tokens."""
    n_layers, n_heads = lm.config.n_layer, lm.config.n_head
    sums: dict = {}
    count = 0
    for s in range(0, len(ids), batch_size):
        m = mask[s : s + batch_size]
        with captured(lm, n_layers, n_heads) as store:
            lm(input_ids=ids[s : s + batch_size], attention_mask=m)
        w = m.bool()
        for key, t in store.items():
            sums[key] = sums.get(key, 0) + t[w].double().sum(0)
        count += int(w.sum())
    return {key: (v / count).float() for key, v in sums.items()}


def loss_terms(logits: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
    """Per-token next-token NLL ``(N, T-1)``, zero where the target is padding."""
    target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), target, reduction="none", ignore_index=-100
    )


@torch.no_grad()
def next_token_damage(lm, ids, mask, clean_logits, unit, value, n_heads) -> dict:
    """True damage of patching ``unit`` to ``value`` on a padded batch.

    Returns ``kl`` (KL(clean || patched) averaged over real positions), ``loss_increase``
    (mean next-token NLL over real targets, patched minus clean), and per example ``kl_sum``
    (summed over its real positions) and ``l2`` (norm of the logit change over real positions).
    """
    with patched(lm, unit, value, n_heads):
        logits = lm(input_ids=ids, attention_mask=mask).logits
    w = mask.bool()
    logp, logq = clean_logits.log_softmax(-1), logits.log_softmax(-1)
    kl = (logp.exp() * (logp - logq)).sum(-1) * w  # (N, T)
    n_targets = (mask[:, 1:] == 1).sum()
    dloss = (loss_terms(logits, ids, mask) - loss_terms(clean_logits, ids, mask)).sum()
    dz = (logits - clean_logits) * w[..., None]
    return dict(
        kl=float(kl.sum() / w.sum()),
        loss_increase=float(dloss / n_targets),
        kl_sum=kl.sum(1),
        l2=dz.flatten(1).norm(dim=1),
    )


def attribution_patching(lm, ids, mask, units, values, n_heads, metric) -> dict:
    """AtP with own hooks: ``(b - a) . d metric / d a`` for each unit (signed; summed over the
    unit's elements and the batch), ``values[unit]`` broadcasting to the activation."""
    n_layers = lm.config.n_layer
    with torch.enable_grad(), captured(lm, n_layers, n_heads, keep_grad=True) as store:
        metric(lm(input_ids=ids, attention_mask=mask).logits).backward()
    result = {}
    for unit in units:
        a = store[(unit.kind, unit.layer)]
        grad = store[("grad", unit.kind, unit.layer)]
        term = (values[unit].expand_as(a) - a) * grad
        if unit.kind == "head":
            t = slice(None) if unit.position is None else unit.position
            term = term[:, t, unit.head]
        result[unit] = float(term.sum())
    return result


def attention_saturation(lm, ids, mask) -> Tensor:
    """Per example, position and head the largest attention weight ``(N, L, T, H)`` (query
    positions >= 1 carry information; position 0 attends only to itself)."""
    with torch.no_grad():
        att = lm(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    return torch.stack([a.amax(-1).transpose(1, 2) for a in att], dim=1)


# -- G-NDI scores (captum_gndi) -------------------------------------------------------------------


def masked_logits(lm):
    def f(input_ids, attention_mask=None):
        return lm(input_ids=input_ids, attention_mask=attention_mask).logits * attention_mask[
            ..., None
        ].to(torch.float32)

    return f


def summed_nll(lm):
    def f(input_ids, attention_mask=None):
        logits = lm(input_ids=input_ids, attention_mask=attention_mask).logits
        return loss_terms(logits, input_ids, attention_mask).sum(1)

    return f


def point(lm, kind: str, layer: int):
    if kind == "head":
        return Heads(head_point(lm, layer), lm.config.n_head)
    return unit_module(lm, Unit(kind, layer))


def gndi(f, layer, ids, mask, kind: str, per_position: bool, **kwargs) -> Tensor:
    """Per-example G-NDI: heads ``(N, H)`` or ``(N, T, H)``, MLP / block ``(N,)``."""
    if kind == "head":
        kwargs.update(granularity="channel", channel_dim=(1, 2) if per_position else 2)
    fw = {} if mask is None else {"forward_kwargs": {"attention_mask": mask}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LayerGNDI(f, layer).attribute(ids, **fw, **kwargs).detach()


# -- statistics ---------------------------------------------------------------------------------


def estimate(scores, damage, n_boot: int, kind="spearman") -> dict:
    return stats.correlation(
        np.asarray(scores, float), np.asarray(damage, float), kind, n_boot=n_boot, seed=0
    ).to_dict()


def fmt(e: dict) -> str:
    if e.get("value") is None:
        return f"n/a ({e.get('note')})"
    if e.get("ci_low") is None:
        return f"{e['value']:.3f}"
    return f"{e['value']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]"


def correlation_table(scores: dict, damages: dict, control: str | None, n_boot: int) -> dict:
    """Spearman [CI] of every score against every damage, and the paired difference from a
    control (on the first damage)."""
    table = {}
    first = next(iter(damages))
    for name, s in scores.items():
        row = {d: estimate(s, v, n_boot) for d, v in damages.items()}
        if control is not None and name != control:
            diff = stats.spearman_difference(
                np.asarray(s, float),
                np.asarray(scores[control], float),
                np.asarray(damages[first], float),
                n_boot=n_boot,
                seed=0,
            )
            row[f"minus_{control}"] = diff.to_dict() | {"verdict": stats.verdict(diff)}
        table[name] = row
    return table


def ratio_summary(pred: Tensor, true: Tensor, floor: float = 1e-6) -> dict:
    """Median and 10/90% quantiles of pred / true over (example, unit) pairs where true > floor."""
    p, t = pred.flatten().double(), true.flatten().double()
    keep = t > floor * t.max()
    r = (p[keep] / t[keep]).numpy()
    q10, q50, q90 = np.percentile(r, [10, 50, 90])
    return dict(median=float(q50), q10=float(q10), q90=float(q90), n=int(keep.sum()))


# -- experiment (a) -------------------------------------------------------------------------------


def part_a(lm, tok, args, per_position: bool, log) -> dict:
    """Raw per-unit damage and per-example scores of experiment (a)."""
    heldout = load_heldout(args)
    n = args.n_pos_sentences if per_position else args.n_sentences
    ids_all, mask_all = encode(tok, heldout, args.length)
    means = real_token_means(lm, ids_all, mask_all)
    ids, mask = ids_all[:n], mask_all[:n]
    L, H, T = lm.config.n_layer, lm.config.n_head, args.length
    units = [
        Unit("head", i, h, t)
        for i in range(L)
        for t in (range(T) if per_position else [None])
        for h in range(H)
    ]
    if not per_position:
        units += [Unit("mlp", i) for i in range(L)] + [Unit("block", i) for i in range(L)]
    values = {u: means[(u.kind, u.layer)] for u in units}
    times = {}
    out: dict = dict(units=[u.name for u in units], n_sentences=n, length=T)

    t0 = time.perf_counter()
    with torch.no_grad():
        clean = lm(input_ids=ids, attention_mask=mask).logits
    damage = [next_token_damage(lm, ids, mask, clean, u, values[u], H) for u in units]
    out["kl"] = [d["kl"] for d in damage]
    out["loss_increase"] = [d["loss_increase"] for d in damage]
    out["kl_sum"] = torch.stack([d["kl_sum"] for d in damage], 1)  # (N, U)
    out["true_l2"] = torch.stack([d["l2"] for d in damage], 1)
    times["true_patching"] = time.perf_counter() - t0
    log(f"  true patching of {len(units)} units: {times['true_patching']:.1f} s")

    n_targets = int((mask[:, 1:] == 1).sum())

    def mean_loss(logits):
        return loss_terms(logits, ids, mask).sum() / n_targets

    t0 = time.perf_counter()
    atp = attribution_patching(lm, ids, mask, units, values, H, mean_loss)
    out["atp_signed"] = [atp[u] for u in units]
    times["atp"] = time.perf_counter() - t0

    f, floss = masked_logits(lm), summed_nll(lm)
    configs = {
        "gndi_l2": dict(norm=2),
        "gndi_fisher": dict(norm="fisher"),
        f"gndi_probes{args.n_probes}_fisher": dict(norm="fisher", n_probes=args.n_probes),
        f"gndi_path{args.n_steps}_fisher": dict(norm="fisher", n_steps=args.n_steps),
    }
    if not per_position:
        configs[f"gndi_path{args.n_steps}_l2"] = dict(norm=2, n_steps=args.n_steps)
    configs["grad_x_delta_signed"] = dict(signed=True)
    scores: dict[str, list[Tensor]] = {k: [] for k in configs}
    kinds = ["head"] if per_position else ["head", "mlp", "block"]
    for name, cfg in configs.items():
        t0 = time.perf_counter()
        fn = floss if name.startswith("grad_x_delta") else f
        for kind in kinds:
            for i in range(L):
                s = gndi(
                    fn,
                    point(lm, kind, i),
                    ids,
                    mask,
                    kind,
                    per_position,
                    layer_baselines=means[(kind, i)],
                    **cfg,
                )
                scores[name].append(s.reshape(n, -1))  # (N, units of this layer)
        times[name] = time.perf_counter() - t0
        log(f"  {name}: {times[name]:.1f} s")
    # layer order of the units: heads layer by layer, (positions x heads), then MLPs, blocks
    out["scores"] = {k: torch.cat(v, 1) for k, v in scores.items()}
    out["grad_x_delta_dataset"] = (
        -out["scores"]["grad_x_delta_signed"].sum(0) / n_targets
    ).tolist()  # predicted loss increase (signed), to compare with AtP

    # ||h - b|| over real positions, per example
    with torch.no_grad(), captured(lm, L, H) as store:
        lm(input_ids=ids, attention_mask=mask)
    w = mask[..., None].float()
    norms = []
    for u in units:
        a = store[(u.kind, u.layer)]
        d = a - values[u]
        if u.kind == "head":
            d = d[:, :, u.head] * w
            if u.position is not None:
                d = d[:, u.position]
        else:
            d = d * w
        norms.append(d.flatten(1).norm(dim=1))
    out["act_change"] = torch.stack(norms, 1)
    out["depth"] = [
        u.layer + (0.5 if u.kind == "mlp" else 0.9 if u.kind == "block" else 0) for u in units
    ]
    sat = attention_saturation(lm, ids, mask)  # (N, L, T, H)
    out["saturation"] = sat
    out["mask"] = mask
    out["times"] = times
    return out


def load_heldout(args):
    from captum_gndi.zoo.polarity_lm import load_polarity_sentences

    return load_polarity_sentences(args.corpus, split="heldout", seed=0)


def analyse_a(raw: dict, n_boot: int, per_position: bool) -> dict:
    units = raw["units"]
    kinds = np.array([u.rstrip("0123456789") if not u.startswith("L") else "head" for u in units])
    head = kinds == "head"
    sc = {k: v for k, v in raw["scores"].items() if k != "grad_x_delta_signed"}
    agg = {k: v.mean(0).numpy() for k, v in sc.items()}  # library convention: mean over examples
    rms = {k: v.pow(2).mean(0).sqrt().numpy() for k, v in sc.items()}
    atp = np.abs(np.array(raw["atp_signed"]))
    gxd = np.abs(np.array(raw["grad_x_delta_dataset"]))
    agg["grad_x_delta"] = gxd
    agg["atp"] = atp
    agg["act_change"] = raw["act_change"].mean(0).numpy()
    agg["depth"] = np.array(raw["depth"], float)
    rng = np.random.default_rng(0)
    agg["random"] = rng.random((N_RANDOM, len(units)))
    kl, dl = np.array(raw["kl"]), np.array(raw["loss_increase"])
    res: dict = dict(
        n_sentences=raw["n_sentences"],
        length=raw["length"],
        atp_vs_grad_x_delta_max_abs_diff=float(np.max(np.abs(atp - gxd))),
        atp_max=float(atp.max()),
    )

    def table(sel):
        return correlation_table(
            {k: (v[..., sel] if v.ndim == 2 else v[sel]) for k, v in agg.items()},
            {"kl": kl[sel], "loss_increase": dl[sel]},
            "act_change",
            n_boot,
        )

    sel_heads = np.flatnonzero(head)
    if per_position:
        # units at positions no sentence reaches or where nothing changes carry no information
        alive = np.flatnonzero(kl > 1e-12)
        res["n_units"] = int(len(alive))
        res["n_units_total"] = len(units)
        res["pos_x_head"] = table(alive)
    else:
        res["heads"] = table(sel_heads)
        res["heads_signed_loss"] = dict(
            atp_signed_vs_loss_increase=estimate(raw["atp_signed"], dl, n_boot)
            | {"sign_agreement": float(np.mean(np.sign(raw["atp_signed"]) == np.sign(dl)))},
        )
        res["all_24_units"] = table(np.arange(len(units)))
        res["rms_aggregation_heads"] = {
            k: estimate(v[sel_heads], kl[sel_heads], n_boot) for k, v in rms.items()
        }
        res["mlp_block_units"] = {
            units[j]: dict(
                kl=float(kl[j]),
                loss_increase=float(dl[j]),
                **{k: float(agg[k][j]) for k in agg if k != "random"},
            )
            for j in np.flatnonzero(~head)
        }
    # Taylor ratios: first-order / true, per (example, unit)
    true_fisher = (2 * raw["kl_sum"]).sqrt()
    ratios = {}
    groups = (
        {"pos_x_head": np.arange(len(units))}
        if per_position
        else {
            "heads": sel_heads,
            "mlps": np.flatnonzero(kinds == "mlp"),
            "blocks": np.flatnonzero(kinds == "block"),
        }
    )
    for g, sel in groups.items():
        row = {}
        for k, v in sc.items():
            truth = raw["true_l2"] if k.endswith("l2") else true_fisher
            row[k] = ratio_summary(v[:, sel], truth[:, sel])
        ratios[g] = row
    res["ratio_to_true"] = ratios
    # per-example agreement across units (rank of units within each example)
    sel = np.flatnonzero(head)
    res["per_example_agreement"] = {
        k: stats.per_example_agreement(v[:, sel].numpy(), raw["kl_sum"][:, sel].numpy()).to_dict()
        for k, v in sc.items()
    }
    # saturated attention: does the first-order error grow with the largest attention weight?
    sat = raw["saturation"]  # (N, L, T, H)
    fo = raw["scores"]["gndi_fisher"][:, sel]
    err = (fo.double() / true_fisher[:, sel].double()).log().abs()
    if per_position:
        w = raw["mask"].float()[:, None, :, None]
        m = ((sat * w).sum(0) / w.sum(0).clamp_min(1)).reshape(-1).numpy()  # L*T*H unit order
        valid = (true_fisher[:, sel] > 1e-6) & torch.isfinite(err)
        e = np.array(
            [
                float(err[:, j][valid[:, j]].median()) if valid[:, j].any() else np.nan
                for j in range(err.shape[1])
            ]
        )
        ok = np.isfinite(e) & (kl[sel] > 1e-12)
        res["saturation_vs_first_order_error"] = estimate(m[ok], e[ok], n_boot)
    else:
        w = raw["mask"].float()[:, None, 1:, None]  # real query positions >= 1
        s = ((sat[:, :, 1:] * w).sum((0, 2)) / w.sum((0, 2))).reshape(-1).numpy()
        e = err.median(0).values.numpy()
        res["saturation_vs_first_order_error"] = estimate(s, e, n_boot)
        res["head_saturation"] = dict(zip([units[j] for j in sel], s.round(3).tolist()))
        res["head_first_order_log_error"] = dict(zip([units[j] for j in sel], e.round(3).tolist()))
    res["times_s"] = {k: round(v, 1) for k, v in raw["times"].items()}
    return res


# -- experiment (b) -------------------------------------------------------------------------------


def part_b(lm, tok, args, log) -> dict:
    clean, corrupt, clean_text, corrupt_text = polarity_prompts(tok, seed=0)
    good = [tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in READOUT_POSITIVE]
    bad = [tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in READOUT_NEGATIVE]
    L, H = lm.config.n_layer, lm.config.n_head
    n, T = clean.shape
    mask = torch.ones_like(clean)

    def metric_of_logits(logits):
        return logits[:, -1, good].mean(-1) - logits[:, -1, bad].mean(-1)

    def f(input_ids, attention_mask=None):
        return metric_of_logits(lm(input_ids=input_ids, attention_mask=attention_mask).logits)

    times = {}
    t0 = time.perf_counter()
    with torch.no_grad(), captured(lm, L, H) as corr_store:
        m_corr = f(corrupt, mask)
    with torch.no_grad():
        m_clean = f(clean, mask)
    units = (
        [Unit("head", i, h) for i in range(L) for h in range(H)]
        + [Unit("head", i, h, t) for i in range(L) for t in range(1, T) for h in range(H)]
        + [Unit("mlp", i) for i in range(L)]
        + [Unit("block", i) for i in range(L)]
    )
    true = []
    with torch.no_grad():
        for u in units:
            with patched(lm, u, corr_store[(u.kind, u.layer)], H):
                true.append(m_clean - f(clean, mask))  # (N,) clean minus patched
    true = torch.stack(true, 1)
    times["true_patching"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    values = {u: corr_store[(u.kind, u.layer)] for u in units}
    atp = attribution_patching(
        lm, clean, mask, units, values, H, lambda z: metric_of_logits(z).sum()
    )
    times["atp"] = time.perf_counter() - t0
    scores = {}
    for name, steps in (("signed_gndi", 1), (f"signed_gndi_path{args.n_steps_b}", args.n_steps_b)):
        t0 = time.perf_counter()
        cols = {"head": [], "pos": [], "mlp": [], "block": []}
        for i in range(L):
            heads = point(lm, "head", i)
            cols["head"].append(
                gndi(
                    f,
                    heads,
                    clean,
                    None,
                    "head",
                    False,
                    baselines=corrupt,
                    signed=True,
                    n_steps=steps,
                )
            )
            s = gndi(
                f, heads, clean, None, "head", True, baselines=corrupt, signed=True, n_steps=steps
            )
            cols["pos"].append(s[:, 1:].reshape(n, -1))
            for kind in ("mlp", "block"):
                s = gndi(
                    f,
                    point(lm, kind, i),
                    clean,
                    None,
                    kind,
                    False,
                    baselines=corrupt,
                    signed=True,
                    n_steps=steps,
                )
                cols[kind].append(s.reshape(n, 1))
        scores[name] = torch.cat(
            [torch.cat(cols[k], 1) for k in ("head", "pos", "mlp", "block")], 1
        )
        times[name] = time.perf_counter() - t0
        log(f"  {name}: {times[name]:.1f} s")
    return dict(
        units=[u.name for u in units],
        clean_examples=clean_text[:3],
        corrupt_examples=corrupt_text[:3],
        n_prompts=n,
        length=T,
        metric_clean=m_clean,
        metric_corrupt=m_corr,
        true=true,
        atp_signed=[atp[u] for u in units],
        scores=scores,
        times=times,
    )


def analyse_b(raw: dict, n_boot: int) -> dict:
    units = raw["units"]
    n = raw["n_prompts"]
    true = raw["true"]
    dtrue = true.mean(0).numpy()
    groups = {
        "heads": [j for j, u in enumerate(units) if u.startswith("L") and "@" not in u],
        "pos_x_head": [j for j, u in enumerate(units) if "@" in u],
        "mlp_block": [j for j, u in enumerate(units) if not u.startswith("L")],
    }
    atp_dataset = np.array(raw["atp_signed"]) / n  # mean over prompts of (b - a) . grad
    gap = raw["metric_clean"] - raw["metric_corrupt"]
    res: dict = dict(
        template=TEMPLATE,
        clean_examples=raw["clean_examples"],
        corrupt_examples=raw["corrupt_examples"],
        n_prompts=n,
        length=raw["length"],
        metric="mean logit of ' good',' great',' best' minus mean logit of ' bad',' worst',"
        "' awful' at the last token",
        metric_clean_mean=float(raw["metric_clean"].mean()),
        metric_corrupt_mean=float(raw["metric_corrupt"].mean()),
        gap_mean=float(gap.mean()),
        gap_positive_fraction=float((gap > 0).float().mean()),
        atp_equals_minus_signed_gndi_max_abs_diff=float(
            np.max(np.abs(atp_dataset + raw["scores"]["signed_gndi"].mean(0).numpy()))
        ),
    )
    for g, sel in groups.items():
        sel = np.array(sel)
        row = {}
        for name, s in raw["scores"].items():
            pred = s[:, sel]
            d = pred.mean(0).numpy()
            t = dtrue[sel]
            live = true[:, sel].abs() > 1e-6
            row[name] = dict(
                spearman_signed=estimate(d, t, n_boot) if len(sel) > 3 else None,
                spearman_abs=estimate(np.abs(d), np.abs(t), n_boot) if len(sel) > 3 else None,
                pearson_signed=estimate(d, t, n_boot, "pearson") if len(sel) > 3 else None,
                sign_agreement_units=float(np.mean(np.sign(d) == np.sign(t))),
                sign_agreement_examples=float(
                    (torch.sign(pred) == torch.sign(true[:, sel]))[live].float().mean()
                ),
                slope=float(np.dot(d, t) / np.dot(t, t)),
            )
        res[g] = row
        if g == "mlp_block":
            res["mlp_block_units"] = {
                units[j]: dict(
                    true=float(dtrue[j]),
                    **{k: float(v[:, j].mean()) for k, v in raw["scores"].items()},
                )
                for j in sel
            }
    res["times_s"] = {k: round(v, 1) for k, v in raw["times"].items()}
    return res


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default=None, help="sentence_polarity.zip (default: shared data)")
    p.add_argument("--n-sentences", type=int, default=128, help="held-out sentences, head level")
    p.add_argument(
        "--n-pos-sentences", type=int, default=32, help="held-out sentences, position x head"
    )
    p.add_argument("--length", type=int, default=16, help="tokens per sentence (cut / padded)")
    p.add_argument("--n-steps", type=int, default=4, help="path-integration steps in (a)")
    p.add_argument("--n-steps-b", type=int, default=8, help="path-integration steps in (b)")
    p.add_argument("--n-probes", type=int, default=64)
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--parts", nargs="+", default=["a_heads", "b", "a_pos"])
    p.add_argument("--cache", default="runs/lm_validation")
    p.add_argument("--recompute", action="store_true")
    p.add_argument("--out", default="benchmarks/results/polarity_lm_validation.json")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from captum_gndi.zoo import load_polarity_lm

    lm, tok = load_polarity_lm()
    for prm in lm.parameters():
        prm.requires_grad_(False)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    out_path = Path(args.out)
    report = json.loads(out_path.read_text()) if out_path.is_file() else {}
    report["command"] = "python " + shlex.join(
        ["experiments/validate_polarity_lm.py", *sys.argv[1:]]
    )
    report["settings"] = {k: v for k, v in vars(args).items() if k not in ("recompute",)}
    started = time.perf_counter()
    for part in args.parts:
        raw_file = cache / f"{part}.pt"
        t0 = time.perf_counter()
        if raw_file.is_file() and not args.recompute:
            raw = torch.load(raw_file, weights_only=False)
            print(f"{part}: cached ({raw_file})", flush=True)
        else:
            print(f"{part}: computing", flush=True)
            if part == "b":
                raw = part_b(lm, tok, args, lambda s: print(s, flush=True))
            else:
                raw = part_a(lm, tok, args, part == "a_pos", lambda s: print(s, flush=True))
            raw["wall_s"] = time.perf_counter() - t0
            torch.save(raw, raw_file)
        res = (
            analyse_b(raw, args.n_boot)
            if part == "b"
            else analyse_a(raw, args.n_boot, part == "a_pos")
        )
        res["wall_s"] = round(raw["wall_s"], 1)
        report[part] = res
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=1) + "\n")
        print(f"{part}: done ({raw['wall_s']:.0f} s compute)", flush=True)
    print(f"total {time.perf_counter() - started:.0f} s -> {out_path}")
    return report


if __name__ == "__main__":
    main()
