"""How the change of the model output is measured: p-norms, the Fisher norm, random probes.

The engines return *effects* ``dz = J (h - b)`` in output coordinates, ``(K, N, *unit_shape)``.
A :class:`Readout` turns them into scores:

- ``norm=p`` (any ``p >= 1``, ``inf``, ``"l1"``, ``"l2"``, ``"linf"``): ``||dz||_p``;
- ``norm="fisher"``: ``sqrt(dz^T (diag(pi) - pi pi^T) dz)`` per softmax over the output's last
  dimension (summed over the other output dimensions, e.g. positions), with ``pi`` the softmax of
  the clean output: ``sqrt(2 KL(pi || pi_do))`` to second order, blind to the logit shifts
  softmax ignores. Exact: ``dz`` is mapped to ``u_k = sqrt(pi_k) (dz_k - pi . dz)`` and
  ``||u||_2`` taken;
- ``n_probes=m``: reverse mode projects ``dz`` on ``m`` random rows ``v_j`` instead of the ``K``
  unit rows, with ``E[(v_j . dz)^2]`` equal to the squared norm: Rademacher rows for the L2
  norm, and for the Fisher norm ``v_j = e_y - pi`` with a class ``y ~ pi`` drawn per example and
  position (the Monte-Carlo Fisher; draws at different positions are independent, so cross terms
  vanish in expectation). The estimate of the squared norm, ``mean_j (v_j . dz)^2``, is unbiased;
  its standard error is ``std_j((v_j . dz)^2) / sqrt(m)``. Cost: ``m`` backward passes whatever
  ``K`` and however many units.
- ``n_probes=m, probe_exact=r``: a lower-variance unbiased estimate for peaked softmaxes (full
  vocabularies). Per example and output position, the ``r`` largest entries of the clean output
  (for logits: the ``r`` most probable classes, set ``S``) and the mean of the rest ``R`` are
  read out exactly, and the ``m`` probes only estimate the spread of ``dz`` over ``R`` around
  that mean. L2: ``||dz||^2 = sum_S dz_k^2 + |R| mean_R(dz)^2 + ||dz_R - mean_R(dz)||^2``, the
  last term from Rademacher rows on ``R`` centred on ``R``. Fisher, with ``mu = pi . dz``,
  ``pi_R = sum_R pi_k`` and ``q = pi / pi_R`` on ``R``: ``sum_S pi_k (dz_k - mu)^2 + pi_R
  (q . dz - mu)^2 + pi_R Var_q(dz)``, the last term from rows ``sqrt(pi_R) (e_y - q)`` with
  ``y ~ q``. Every term is a squared projection, so the score is still the root of the sum of
  squares; the first two are exact (rows ``e_k``, ``1_R / sqrt(|R|)``; ``sqrt(pi_k) (e_k -
  pi)``, ``sqrt(pi_R) (q - pi)``), and :meth:`Readout.probe_stderr` is the standard error of
  the probe part alone, which shrinks with ``pi_R^2`` (Fisher) or with the share of ``dz``
  outside ``S`` and off the common shift of ``R`` (L2). Cost: ``(r + 1) x P + m`` backward
  passes for ``P`` output positions; ``r`` at least the class count makes the estimate exact
  (the probe rows are then zero).

Half-precision models (float16, bfloat16) keep their own dtype in the forward and backward
passes; effects, the Fisher softmax and every reduction are float32
(:func:`accumulation_dtype`), and :func:`check_precision` warns where a half-precision effect
underflowed to zero (overflow, inf or NaN, is an error).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .runs import check_norm

__all__ = ["FISHER", "HALF", "Readout", "accumulation_dtype", "check_precision", "make_readout"]

FISHER = "fisher"

HALF = (torch.float16, torch.bfloat16)
"""Half-precision dtypes: their effects, softmax and reductions are computed in float32."""


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of effects, scores and their reductions for a model computing in ``dtype``:
    float32 for float16 / bfloat16 (whose 8- or 11-bit mantissas lose a sum over many
    elements), else ``dtype`` itself."""
    return torch.float32 if dtype in HALF else dtype


def check_precision(
    effects: list[Tensor], dtype: torch.dtype, labels: list[str] | None = None
) -> None:
    """Warn where an effect of a half-precision (``dtype``) pass underflowed to zero.

    An effect that is exactly zero everywhere underflowed (float16 flushes values below 6e-8 to
    zero) unless the layer truly does not reach the output. Overflow (inf or NaN) is an error
    of :meth:`captum_gndi.job.ScoringJob.check_effects`. Float32 and float64 passes are not
    checked.
    """
    if dtype not in HALF:
        return
    for i, effect in enumerate(effects):
        if effect.numel() and not effect.any():
            where = f"'{labels[i]}'" if labels is not None else f"{i} (in the order given)"
            warnings.warn(
                f"The G-NDI effects of layer {where}, computed in {dtype}, are all zero: the "
                "tangents or gradients underflowed (or the layer does not reach the output). "
                "Score a float32 copy of the model (model.float()) or use bfloat16 (float32's "
                "range) instead of float16.",
                RuntimeWarning,
                stacklevel=3,
            )


@dataclass
class Readout:
    """One way of measuring the output change.

    Attributes:
        p: The norm order (``None`` for the Fisher norm).
        fisher: Use the Fisher norm of the softmax over the output's last dimension.
        n_probes: Random probes (``None``: exact).
        probe_exact: With probes, the largest classes of the clean output read out exactly
            per example and position, with the mean of the rest (``None``: plain probes).
        seed: Seed of the probes.
        output_shape: The per-example shape of the (target-selected) output, needed to find
            the class dimension of the Fisher norm; set from the clean run.
    """

    p: float | None = 2.0
    fisher: bool = False
    n_probes: int | None = None
    probe_exact: int | None = None
    seed: int = 0
    output_shape: tuple[int, ...] | None = None

    @property
    def name(self) -> str:
        """The norm's name in settings and tables."""
        return FISHER if self.fisher else str(self.p)

    def _classes(self, output: Tensor) -> Tensor:
        """Clean softmax probabilities ``(N, P, C)`` (P: the other output positions)."""
        shape = self.output_shape or tuple(output.shape[1:])
        if len(shape) < 1 or shape[-1] < 2:
            what = "norm='fisher'" if self.fisher else "probe_exact"
            raise ValueError(
                f"{what} needs logits with a class dimension (the last one, of size >= 2), "
                f"but the output has per-example shape {tuple(shape)}. Use target=None with a "
                "logit output, or a p-norm (without probe_exact)."
            )
        logits = output.detach().reshape(output.shape[0], -1, shape[-1])
        return torch.softmax(logits.to(torch.float64), dim=-1).to(accumulation_dtype(output.dtype))

    def exact_rows(self, output: Tensor) -> int:
        """Rows read out exactly before the probes: ``(probe_exact + 1) x P`` (else 0)."""
        if self.n_probes is None or self.probe_exact is None:
            return 0
        shape = self.output_shape or tuple(output.shape[1:])
        return (self.probe_exact + 1) * math.prod(shape[:-1])

    def rows_count(self, output: Tensor) -> int:
        """Vector-Jacobian products reverse mode needs: ``K``, or the exact rows and
        ``n_probes``."""
        if self.n_probes is None:
            return output.shape[1]
        return self.exact_rows(output) + self.n_probes

    def rows(self, start: int, stop: int, output: Tensor) -> Tensor:
        """Rows ``start..stop-1`` of the projection, as ``(k, N, K)`` grad_outputs.

        Exact readouts use unit rows (never a K x K matrix); probes are drawn from a generator
        seeded by ``(seed, row)``, so chunking does not change them.
        """
        n, k_total = output.shape
        count = stop - start
        if self.n_probes is None:
            rows = output.new_zeros(count, n, k_total)
            rows[torch.arange(count), :, torch.arange(start, stop)] = 1.0
            return rows
        if self.probe_exact is not None:
            return self._split_rows(start, stop, output)
        rows = []
        for row in range(start, stop):
            generator = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + row)
            if self.fisher:
                pi = self._classes(output)  # (N, P, C)
                flat = pi.reshape(-1, pi.shape[-1]).to(torch.float64).cpu()
                drawn = torch.multinomial(flat, 1, generator=generator).reshape(pi.shape[:2])
                v = -pi.clone()
                v.scatter_add_(2, drawn.to(v.device)[..., None], torch.ones_like(v[..., :1]))
                rows.append(v.reshape(n, k_total).to(output.dtype))
            else:
                signs = torch.randint(0, 2, (n, k_total), generator=generator) * 2 - 1
                rows.append(signs.to(device=output.device, dtype=output.dtype))
        return torch.stack(rows) / math.sqrt(self.n_probes)

    def _split_rows(self, start: int, stop: int, output: Tensor) -> Tensor:
        """Rows ``start..stop-1`` of ``probe_exact``: exact rows first (per position: one per
        largest class, then the rest's mean), then the probes on the rest (module docstring)."""
        n, k_total = output.shape
        pi = self._classes(output).to(torch.float64)  # (N, P, C)
        positions, classes = pi.shape[1:]
        r = min(self.probe_exact or 0, classes)
        top = pi.topk(r, dim=-1).indices  # (N, P, r): the largest outputs, ties by index
        rest = torch.ones_like(pi, dtype=torch.bool).scatter(2, top, False)
        exact = (r + 1) * positions if self.probe_exact is not None else 0
        if self.fisher:
            mass = (pi * rest).sum(-1, keepdim=True)  # pi_R, (N, P, 1)
            uniform = rest / rest.sum(-1, keepdim=True).clamp_min(1)
            q = torch.where(mass > 0, pi * rest / mass.clamp_min(1e-300), uniform)
        else:
            mass = rest.sum(-1, keepdim=True).to(pi.dtype)  # |R|
            q = rest / mass.clamp_min(1)
        rows = []
        for row in range(start, stop):
            v = torch.zeros_like(pi)
            if row < exact:
                p, i = divmod(row, r + 1)
                if i < r:  # one of the largest classes
                    k = top[:, p, i : i + 1]
                    if self.fisher:  # sqrt(pi_k) (e_k - pi)
                        v[:, p] = -pi[:, p]
                        v[:, p].scatter_add_(1, k, torch.ones_like(k, dtype=pi.dtype))
                        v[:, p] *= pi[:, p].gather(1, k).sqrt()
                    else:  # e_k
                        v[:, p].scatter_(1, k, 1.0)
                elif self.fisher:  # sqrt(pi_R) (q - pi)
                    v[:, p] = mass[:, p].sqrt() * (q[:, p] - pi[:, p])
                else:  # 1_R / sqrt(|R|)
                    v[:, p] = q[:, p] * mass[:, p].sqrt()
            else:  # a probe of the rest, seeded by its own index as plain probes are
                seed = self.seed * 1_000_003 + row - exact
                generator = torch.Generator(device="cpu").manual_seed(seed)
                if self.fisher:  # sqrt(pi_R) (e_y - q), y ~ q
                    flat = q.reshape(-1, classes).cpu()
                    flat = torch.where(flat.sum(-1, keepdim=True) > 0, flat, 1.0)  # R empty
                    drawn = torch.multinomial(flat, 1, generator=generator).reshape(n, positions)
                    v = -q
                    v = v.scatter_add(2, drawn.to(v.device)[..., None], torch.ones_like(v[..., :1]))
                    v = v * mass.sqrt()
                else:  # Rademacher on R, centred on R
                    signs = torch.randint(0, 2, pi.shape, generator=generator) * 2 - 1
                    signs = signs.to(device=pi.device, dtype=pi.dtype) * rest
                    v = signs - (signs.sum(-1, keepdim=True) * q)
                v = v / math.sqrt(self.n_probes or 1)
            rows.append(v.reshape(n, k_total).to(output.dtype))
        return torch.stack(rows)

    def scores(self, effect: Tensor, output: Tensor | None = None) -> Tensor:
        """The score of every unit from its effect ``(K, N, *units)`` (or probe projections)."""
        effect = effect.to(accumulation_dtype(effect.dtype))
        if self.n_probes is not None:
            return torch.linalg.vector_norm(effect, ord=2, dim=0)
        if not self.fisher:
            return torch.linalg.vector_norm(effect, ord=self.p, dim=0)
        if output is None:
            raise ValueError("The Fisher norm needs the clean output.")
        pi = self._classes(output)  # (N, P, C)
        dz = effect.reshape(pi.shape[1], pi.shape[2], *effect.shape[1:])  # (P, C, N, *units)
        extra = effect.dim() - 2
        weights = pi.permute(1, 2, 0).reshape(*pi.shape[1:], pi.shape[0], *([1] * extra))
        mean = (weights * dz).sum(1, keepdim=True)
        u = weights.sqrt() * (dz - mean)
        return torch.linalg.vector_norm(u.flatten(0, 1), ord=2, dim=0)

    def clean_output(self, run: Callable[[], Tensor]) -> Tensor | None:
        """The clean output :meth:`scores` needs, or ``None`` where it needs none.

        Only the exact Fisher norm reads it (the softmax of the clean logits); the run's
        per-example output shape (``run.output_shape``, where the run records one) is kept in
        :attr:`output_shape` to find the class dimension.

        Args:
            run: The engine job's zero-argument run of the model on the batch.
        """
        if not self.fisher or self.n_probes is not None:
            return None
        with torch.no_grad():
            output = run()
        self.output_shape = getattr(run, "output_shape", None)
        return output

    def probe_stderr(self, effect: Tensor) -> Tensor | None:
        """Standard error of the squared-norm estimate (probes only), per example and unit."""
        if self.n_probes is None:
            return None
        effect = effect[effect.shape[0] - self.n_probes :]  # the probes (after exact rows)
        squares = (effect * math.sqrt(self.n_probes)).pow(2)
        if self.n_probes < 2:
            return torch.full_like(squares[0], math.inf)
        return squares.std(0, unbiased=True) / math.sqrt(self.n_probes)


def make_readout(
    norm: float | str, n_probes: int | None = None, seed: int = 0, probe_exact: int | None = None
) -> Readout:
    """Parse ``norm``, ``n_probes`` and ``probe_exact`` into a :class:`Readout`, with clear
    errors.

    Args:
        norm: A p-norm order (``>= 1``, ``inf``, ``"l1"``, ``"l2"``, ``"linf"``) or
            ``"fisher"``.
        n_probes: Random probes for large outputs (L2 or Fisher norm only), or ``None``.
        seed: Seed of the probes.
        probe_exact: With ``n_probes``: the largest classes of the clean output (per example
            and position) read out exactly, with the mean of the rest; the probes cover the
            rest (see the module docstring). ``None``: plain probes.

    Returns:
        The readout.

    Examples:
        >>> make_readout("fisher", n_probes=64).name
        'fisher'
    """
    fisher = isinstance(norm, str) and norm.lower() == FISHER
    p = None if fisher else check_norm(norm)
    if n_probes is not None:
        if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
            raise ValueError(f"n_probes must be an integer >= 1, got {n_probes!r}.")
        if not fisher and p != 2.0:
            raise ValueError(
                f"Random probes estimate the L2 or the Fisher norm, not norm={norm!r}; use "
                "norm=2 or norm='fisher' with n_probes, or drop n_probes for an exact p-norm."
            )
    if probe_exact is not None:
        if n_probes is None:
            raise ValueError(
                f"probe_exact={probe_exact!r} reads the largest classes exactly next to random "
                "probes of the rest; pass n_probes too (e.g. n_probes=16), or drop probe_exact "
                "for the exact norm."
            )
        if isinstance(probe_exact, bool) or not isinstance(probe_exact, int) or probe_exact < 0:
            raise ValueError(f"probe_exact must be an integer >= 0, got {probe_exact!r}.")
    return Readout(p=p, fisher=fisher, n_probes=n_probes, probe_exact=probe_exact, seed=seed)
