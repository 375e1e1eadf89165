"""Each optimizer's preconditioner P at a checkpoint, from its saved state, as an operator.

An optimizer step is ``θ ← θ − η P(g)``; where P is linear and symmetric positive definite, the
optimizer behaves locally like gradient descent on the preconditioned Hessian PH, whose eigenvalues are
those of the symmetric ``P^{1/2} H P^{1/2}`` (Liu et al. section 2.3 and appendix A). Scalar factors
(learning rate, bias corrections, ScheduleFree's averaging weight) are dropped: κ does not see them.

* Adam, AdamW, RAdam, ScheduleFree-AdamW (and the Adam part of Muon, SOAP, SOAP-Muon):
  ``P = diag(1 / (√v̂ + ε))`` from the second moment in the state.
* SOAP: per matrix block, ``P = Q diag(1 / (√v + ε)) Qᵀ`` with ``Q = Q_R ⊗ Q_L`` (one eigenbasis per
  mode for 3-D blocks) and v the second moment in the rotated space — block-diagonal, not diagonal.
* Muon: Newton–Schulz returns the polar factor of the momentum, ``NS(M) = M (MᵀM)^{-1/2}``: the update is
  not linear in the gradient. Linearised at the momentum it is right-multiplication by
  ``(MᵀM + δI)^{-1/2}`` times Muon's scale, which is what P is here (δ = 1e-6 of the largest
  eigenvalue keeps it defined on the null space of M).
* SOAP-Muon: its singular-value power and RMS normalisation act on the whole update and are not linear
  either; P is its SOAP part (the report says so).
* L-BFGS: the inverse-Hessian approximation of the saved curvature pairs, ``H_k = γ(I − QQᵀ) + Q M Qᵀ``
  exactly, with Q an orthonormal basis of the pairs' span and ``M = Qᵀ H_k Q`` from the two-loop
  recursion — so its square root is exact too.
* SGD: P = I. LAMB (layer-wise trust ratio of the current update) and Ranger (gradient centralisation,
  Lookahead): P is not formed; their H is still analysed.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..optim import _layout
from ..optim.muon import muon_scale
from ..optim.registry import optimizer_spec
from ..optim.soap import project
from .hessian import FlatParameters


class Preconditioner:
    """``sqrt_apply(x) = P^{1/2} x`` over the flat parameter vector of :class:`FlatParameters`."""

    def __init__(self, flat: FlatParameters, label: str, note: str = "") -> None:
        self.flat = flat
        self.label = label
        self.note = note
        # P^{1/2} on the elements updated diagonally (1 where P = I)
        self._diag = torch.ones(flat.size, dtype=flat.params[0].dtype, device=flat.params[0].device)
        self._blocks: list[tuple[slice, Any]] = []  # (positions, function x_block -> P^{1/2} x_block)
        self._global: Any = None

    def sqrt_apply(self, x: torch.Tensor) -> torch.Tensor:
        if self._global is not None:
            return self._global(x)
        out = x * self._diag
        for positions, fn in self._blocks:
            out[positions] = fn(x[positions])
        return out


def _index(flat: FlatParameters, p: torch.Tensor) -> int:
    for i, q in enumerate(flat.params):
        if q is p:
            return i
    raise KeyError("a parameter of the optimizer is not among the analysed parameters")


def _adam_diag(v: torch.Tensor, eps: float, bias2: float = 1.0) -> torch.Tensor:
    return 1.0 / ((v.clamp_min(0) / bias2).sqrt() + eps)


def from_optimizer(name: str, optimizer: torch.optim.Optimizer, flat: FlatParameters) -> Preconditioner:
    """The preconditioner of a loaded ``optimizer`` (built by ``build_optimizer(name, ...)``), formed the
    way its registry entry's ``preconditioner`` view says (mlipopt.optim.registry)."""
    entry = optimizer_spec(name)
    view = entry.preconditioner
    if view == "none":
        raise NotImplementedError(
            entry.preconditioner_note or f"no preconditioner model for optimizer {name!r}"
        )
    pre = Preconditioner(flat, entry.name, entry.preconditioner_note)
    if view == "identity":
        return pre
    if view in ("diagonal", "diagonal_uncorrected"):
        _adam(optimizer, flat, pre, bias_corrected=view == "diagonal")
    elif view == "eigenbasis":
        _soap(optimizer, flat, pre)
    elif view == "polar":
        _muon(optimizer, flat, pre)
    return pre


def _adam(
    optimizer: torch.optim.Optimizer, flat: FlatParameters, pre: Preconditioner, bias_corrected: bool
) -> None:
    for group in optimizer.param_groups:
        beta2 = group["betas"][1]
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "exp_avg_sq" not in state:
                continue
            step = float(state.get("step", group.get("k", 1)) or 1)
            bias2 = 1 - beta2**step if bias_corrected else 1.0
            diag = _adam_diag(state["exp_avg_sq"], group["eps"], bias2).reshape(-1)
            pre._diag[flat.slice(_index(flat, p))] = diag.sqrt()


def _soap(optimizer: torch.optim.Optimizer, flat: FlatParameters, pre: Preconditioner) -> None:
    for group in optimizer.param_groups:
        eps = group["eps"]
        for i, p in enumerate(group["params"]):
            state = optimizer.state.get(p, {})
            if "exp_avg_sq" not in state:
                continue
            where = flat.slice(_index(flat, p))
            v = state["exp_avg_sq"].reshape(-1)
            pre._diag[where] = _adam_diag(v, eps).sqrt()  # elements outside blocks: Adam
            layout = _layout.resolve_layout(group, i, p, "by_modes")
            for b, (start, stop, shape) in enumerate(layout.blocks):
                bases = [None if q is None else q for q in (state.get("Q") or [[None] * len(shape)])[b]]
                d = _adam_diag(v[start:stop], eps).reshape(1, *shape).sqrt()
                positions = slice(where.start + start, where.start + stop)

                def block_sqrt(x: torch.Tensor, bases=bases, d=d, shape=shape) -> torch.Tensor:
                    stacked = [None if q is None else q.unsqueeze(0) for q in bases]
                    rotated = project(x.reshape(1, *shape), stacked)
                    return project(rotated * d, stacked, back=True).reshape(-1)

                pre._blocks.append((positions, block_sqrt))


def _muon(optimizer: torch.optim.Optimizer, flat: FlatParameters, pre: Preconditioner) -> None:
    for group in optimizer.param_groups:
        beta2 = group["adam_betas"][1]
        for i, p in enumerate(group["params"]):
            state = optimizer.state.get(p, {})
            if "momentum_buffer" not in state:
                continue
            where = flat.slice(_index(flat, p))
            if "exp_avg_sq" in state:
                step = float(group.get("step", 1) or 1)
                diag = _adam_diag(state["exp_avg_sq"].reshape(-1), group["eps"], 1 - beta2**step)
                pre._diag[where] = diag.sqrt()
            layout = _layout.resolve_layout(group, i, p, "as_matrix")
            momentum = state["momentum_buffer"].reshape(-1)
            for start, stop, shape in layout.blocks:
                m = momentum[start:stop].reshape(-1, shape[-1])
                gram = m.T @ m
                values, vectors = torch.linalg.eigh(gram)
                floor = 1e-6 * float(values.max().clamp_min(1e-300))
                root = (vectors * (values.clamp_min(0) + floor).pow(-0.25)) @ vectors.T  # (MᵀM+δ)^{-1/4}
                scale = math.sqrt(muon_scale(shape, group["scale"], layout.fan))
                positions = slice(where.start + start, where.start + stop)

                def block_sqrt(x: torch.Tensor, root=root, scale=scale, rows=m.shape[0]) -> torch.Tensor:
                    return (scale * x.reshape(rows, -1) @ root).reshape(-1)

                pre._blocks.append((positions, block_sqrt))


def from_lbfgs_history(s: list[torch.Tensor], y: list[torch.Tensor], flat: FlatParameters) -> Preconditioner:
    """P = H_k of L-BFGS from its curvature pairs (oldest first), with an exact square root."""
    pre = Preconditioner(flat, "lbfgs", "L-BFGS: inverse-Hessian approximation of its saved pairs")
    if not s:
        return pre
    dtype, device = pre._diag.dtype, pre._diag.device
    s = [t.to(dtype=dtype, device=device) for t in s]
    y = [t.to(dtype=dtype, device=device) for t in y]
    gamma = float(torch.dot(s[-1], y[-1]) / torch.dot(y[-1], y[-1]))

    def two_loop(v: torch.Tensor) -> torch.Tensor:
        q, alphas = v.clone(), []
        for si, yi in zip(reversed(s), reversed(y)):
            a = torch.dot(si, q) / torch.dot(yi, si)
            q -= a * yi
            alphas.append(a)
        q *= gamma
        for (si, yi), a in zip(zip(s, y), reversed(alphas)):
            q += (a - torch.dot(yi, q) / torch.dot(yi, si)) * si
        return q

    basis, _ = torch.linalg.qr(torch.stack(s + y, dim=1))
    small = torch.stack([two_loop(basis[:, j]) for j in range(basis.shape[1])], dim=1)
    small = basis.T @ small
    small = 0.5 * (small + small.T)
    values, vectors = torch.linalg.eigh(small)
    small_root = (vectors * values.clamp_min(0).sqrt()) @ vectors.T

    def sqrt_apply(x: torch.Tensor) -> torch.Tensor:
        inside = basis.T @ x
        return math.sqrt(gamma) * (x - basis @ inside) + basis @ (small_root @ inside)

    pre._global = sqrt_apply
    return pre
