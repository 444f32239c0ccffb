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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .runs import check_norm

__all__ = ["FISHER", "Readout", "make_readout"]

FISHER = "fisher"


@dataclass
class Readout:
    """One way of measuring the output change.

    Attributes:
        p: The norm order (``None`` for the Fisher norm).
        fisher: Use the Fisher norm of the softmax over the output's last dimension.
        n_probes: Random probes (``None``: exact).
        seed: Seed of the probes.
        output_shape: The per-example shape of the (target-selected) output, needed to find
            the class dimension of the Fisher norm; set from the clean run.
    """

    p: float | None = 2.0
    fisher: bool = False
    n_probes: int | None = None
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
            raise ValueError(
                f"norm='fisher' needs logits with a class dimension (the last one, of size >= 2), "
                f"but the output has per-example shape {tuple(shape)}. Use target=None with a "
                "logit output, or a p-norm."
            )
        logits = output.detach().reshape(output.shape[0], -1, shape[-1])
        return torch.softmax(logits.to(torch.float64), dim=-1).to(output.dtype)

    def rows_count(self, output: Tensor) -> int:
        """Vector-Jacobian products reverse mode needs: ``K``, or ``n_probes``."""
        return output.shape[1] if self.n_probes is None else self.n_probes

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
        rows = []
        for row in range(start, stop):
            generator = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + row)
            if self.fisher:
                pi = self._classes(output)  # (N, P, C)
                flat = pi.reshape(-1, pi.shape[-1]).to(torch.float64).cpu()
                drawn = torch.multinomial(flat, 1, generator=generator).reshape(pi.shape[:2])
                v = -pi.clone()
                v.scatter_add_(2, drawn.to(v.device)[..., None], torch.ones_like(v[..., :1]))
                rows.append(v.reshape(n, k_total))
            else:
                signs = torch.randint(0, 2, (n, k_total), generator=generator) * 2 - 1
                rows.append(signs.to(device=output.device, dtype=output.dtype))
        return torch.stack(rows) / math.sqrt(self.n_probes)

    def scores(self, effect: Tensor, output: Tensor | None = None) -> Tensor:
        """The score of every unit from its effect ``(K, N, *units)`` (or probe projections)."""
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

    def probe_stderr(self, effect: Tensor) -> Tensor | None:
        """Standard error of the squared-norm estimate (probes only), per example and unit."""
        if self.n_probes is None:
            return None
        squares = (effect * math.sqrt(self.n_probes)).pow(2)
        if self.n_probes < 2:
            return torch.full_like(squares[0], math.inf)
        return squares.std(0, unbiased=True) / math.sqrt(self.n_probes)


def make_readout(norm: float | str, n_probes: int | None = None, seed: int = 0) -> Readout:
    """Parse ``norm`` and ``n_probes`` into a :class:`Readout`, with clear errors.

    Args:
        norm: A p-norm order (``>= 1``, ``inf``, ``"l1"``, ``"l2"``, ``"linf"``) or
            ``"fisher"``.
        n_probes: Random probes for large outputs (L2 or Fisher norm only), or ``None``.
        seed: Seed of the probes.

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
    return Readout(p=p, fisher=fisher, n_probes=n_probes, seed=seed)
