"""Reference implementations: one block at a time, straight from the algorithms.

Like ``schedulefree``'s ``*_reference.py`` files these are not for training — they are slow and
obvious, and the tests use them as oracles for the batched optimizers in :mod:`mlipopt.optim`
(step-by-step agreement, float64). They keep official SOAP's conventions literally: the first
moment lives in parameter space and is projected every step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._layout import resolve_layout
from ._linalg import NS_COEFFICIENTS, NS_EPS
from .muon import muon_scale


def newton_schulz_single(g: Tensor, steps: int = 5) -> Tensor:
    """Quintic Newton–Schulz on one matrix, float32 (Jordan et al. 2024)."""
    a, b, c = NS_COEFFICIENTS
    x = g.float()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (x.norm() + NS_EPS)
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return (x.T if tall else x).to(g.dtype)


def _views(p: Tensor, layout) -> list[Tensor]:
    flat = p.reshape(-1)
    return [flat[s:e].view(shape) for s, e, shape in layout.blocks]


def _uncovered(p: Tensor, layout) -> Tensor:
    mask = torch.ones(p.numel(), dtype=torch.bool, device=p.device)
    for s, e, _ in layout.blocks:
        mask[s:e] = False
    return mask


def _mode_gram(x: Tensor, mode: int) -> Tensor:
    other = [d for d in range(x.ndim) if d != mode]
    return torch.tensordot(x, x, dims=(other, other))


def _mode_product(x: Tensor, q: Tensor, mode: int) -> Tensor:
    """``x ×ₘₒ𝒹ₑ qᵀ``: contract ``x``'s axis ``mode`` with ``q``'s first axis, keep axis order."""
    return torch.movedim(torch.tensordot(x, q, dims=([mode], [0])), -1, mode)


class SOAPReference(torch.optim.Optimizer):
    """SOAP / SOAP-Muon, one block at a time (official SOAP conventions; see module doc)."""

    def __init__(
        self,
        params: Any,
        lr: float = 3e-3,
        betas: tuple[float, float] = (0.95, 0.95),
        shampoo_beta: float | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        precondition_frequency: int = 10,
        max_precond_dim: int = 10000,
        ortho: bool = False,
        rho: float = 0.5,
        normalize: bool = False,
        adam_betas: tuple[float, float] | None = None,
        null_space: str = "isotropic",
    ):
        defaults = dict(
            lr=lr,
            betas=betas,
            shampoo_beta=shampoo_beta,
            eps=eps,
            weight_decay=weight_decay,
            precondition_frequency=precondition_frequency,
            max_precond_dim=max_precond_dim,
            ortho=ortho,
            rho=rho,
            normalize=normalize,
            adam_betas=adam_betas,
            null_space=null_space,
        )
        super().__init__(params, defaults)

    @staticmethod
    def _role_betas(group, ortho: bool):
        if ortho or group["adam_betas"] is None:
            return group["betas"]
        return group["adam_betas"]

    def _gram_update(self, state, blocks, group, betas) -> None:
        beta = betas[1] if group["shampoo_beta"] is None else group["shampoo_beta"]
        for b, g in enumerate(blocks):
            for mode in range(g.ndim):
                if state["GG"][b][mode] is not None:
                    state["GG"][b][mode].lerp_(_mode_gram(g, mode), 1 - beta)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            group.setdefault("step", 0)
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                layout = resolve_layout(group, i, p, "by_modes")
                ortho = layout.ortho and group["ortho"]
                betas = self._role_betas(group, ortho)
                state = self.state[p]
                g_blocks = _views(p.grad, layout)
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    state["GG"] = [
                        [
                            None if d > group["max_precond_dim"] else torch.zeros(d, d, dtype=p.dtype)
                            for d in g.shape
                        ]
                        for g in g_blocks
                    ]
                    self._gram_update(state, g_blocks, group, betas)
                    state["Q"] = [
                        [None if gg is None else torch.linalg.eigh(gg)[1].flip(-1) for gg in per_block]
                        for per_block in state["GG"]
                    ]
                    state["null"] = [
                        [None if q is None else _null(gg, q) for gg, q in zip(grams, bases)]
                        for grams, bases in zip(state["GG"], state["Q"])
                    ]
            group["step"] += 1
            if group["step"] == 1:
                continue
            t = group["step"] - 1
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                layout = resolve_layout(group, i, p, "by_modes")
                ortho = layout.ortho and group["ortho"]
                state = self.state[p]
                update = torch.zeros_like(p).reshape(-1)
                g_flat = p.grad.reshape(-1)
                m_flat = state["exp_avg"].reshape(-1)
                v_flat = state["exp_avg_sq"].reshape(-1)
                b1, b2 = self._role_betas(group, ortho)
                m_flat.lerp_(g_flat, 1 - b1)
                for b, (s, e, shape) in enumerate(layout.blocks):
                    q = state["Q"][b]
                    g_proj = p.grad.reshape(-1)[s:e].view(shape)
                    m_proj = m_flat[s:e].view(shape)
                    for mode in range(len(shape)):
                        if q[mode] is not None:
                            g_proj = _mode_product(g_proj, q[mode], mode)
                            m_proj = _mode_product(m_proj, q[mode], mode)
                    v = v_flat[s:e].view(shape)
                    v.lerp_(g_proj.square(), 1 - b2)
                    if group["null_space"] == "isotropic":
                        _mean_over_null(v, state["null"][b])
                    u = m_proj / (v.sqrt() + group["eps"])
                    for mode in range(len(shape)):
                        if q[mode] is not None:
                            u = _mode_product(u, q[mode].T, mode)
                    if ortho:
                        mat = u.reshape(-1, shape[-1])
                        if group["rho"] == 0:
                            mat = newton_schulz_single(mat)
                        elif group["rho"] != 1:
                            P, S, Rh = torch.linalg.svd(mat, full_matrices=False)
                            mat = P @ torch.diag(S.pow(group["rho"])) @ Rh
                        if group["normalize"]:
                            mat = mat / mat.square().mean().sqrt()
                        u = mat.reshape(shape)
                    update[s:e] = u.reshape(-1) * math.sqrt(1 - b2**t) / (1 - b1**t)
                mask = _uncovered(p, layout)
                if mask.any():
                    eb1, eb2 = self._role_betas(group, False)
                    m_e = m_flat[mask]
                    if (eb1, eb2) != (b1, b2):  # elementwise part of a matrix param: its own betas
                        raise NotImplementedError("reference: mixed betas within one parameter")
                    v_e = v_flat[mask].lerp(g_flat[mask].square(), 1 - b2)
                    v_flat[mask] = v_e
                    update[mask] = m_e / (v_e.sqrt() + group["eps"]) * math.sqrt(1 - b2**t) / (1 - b1**t)
                p.add_(update.view_as(p), alpha=-group["lr"])
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                g_blocks = _views(p.grad, layout)
                self._gram_update(state, g_blocks, group, (b1, b2))
                if t % group["precondition_frequency"] == 0:
                    self._refresh(state, layout, v_flat, group["null_space"] == "isotropic")

    @staticmethod
    def _refresh(state, layout, v_flat: Tensor, isotropic: bool) -> None:
        """Power iteration + QR; with the isotropic rule, null columns (and their second moments) are
        sorted last and their span after QR is resolved by Rayleigh–Ritz."""
        for b, (s, e, shape) in enumerate(layout.blocks):
            v = v_flat[s:e].view(shape)
            for mode in range(len(shape)):
                gg, q, null = state["GG"][b][mode], state["Q"][b][mode], state["null"][b][mode]
                if gg is None:
                    continue
                prod = gg @ q
                estimates = (q * prod).sum(0)
                if isotropic:
                    estimates = estimates.masked_fill(null, float("-inf"))
                order = torch.argsort(estimates, descending=True, stable=True)
                v.copy_(v.index_select(mode, order))
                new_q = torch.linalg.qr(prod[:, order])[0]
                if isotropic and null.any():  # Rayleigh–Ritz on the span of the null columns (last)
                    k = int(null.sum())
                    tail = new_q[:, -k:]
                    ritz = torch.linalg.eigh(tail.T @ gg @ tail)[1].flip(-1)
                    new_q = torch.cat([new_q[:, :-k], tail @ ritz], dim=1)
                state["Q"][b][mode] = new_q
                state["null"][b][mode] = _null(gg, new_q)


def _null(gg: Tensor, q: Tensor) -> Tensor:
    """Null directions of ``gg`` among the columns of ``q``: ``qᵀ gg q ≤ 10·d·ε·max``."""
    estimates = torch.diagonal(q.T @ gg @ q)
    tol = 10 * len(estimates) * torch.finfo(gg.dtype).eps
    return estimates <= tol * max(float(estimates.max()), 0.0)


def _mean_over_null(v: Tensor, nulls) -> None:
    """In place: along each mode, entries at null directions become their mean over those directions."""
    for mode, null in enumerate(nulls):
        if null is None or not null.any():
            continue
        moved = v.movedim(mode, -1)
        moved[..., null] = moved[..., null].mean(dim=-1, keepdim=True)


class MuonReference(torch.optim.Optimizer):
    """Muon with auxiliary AdamW, one block at a time (algorithm 1)."""

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        scale: str = "match_rms_adamw",
        adam_betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
    ):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            weight_decay=weight_decay,
            scale=scale,
            adam_betas=adam_betas,
            eps=eps,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            group["step"] = group.get("step", 0) + 1
            t = group["step"]
            lr, beta = group["lr"], group["momentum"]
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                layout = resolve_layout(group, i, p, "as_matrix")
                state = self.state[p]
                if not state:
                    state["m"] = torch.zeros_like(p).reshape(-1)
                    state["v"] = torch.zeros_like(p).reshape(-1)
                g = p.grad.reshape(-1)
                update = torch.zeros_like(g)
                for s, e, shape in layout.blocks:
                    m = state["m"][s:e]
                    m.lerp_(g[s:e], 1 - beta)
                    u = g[s:e].lerp(m, beta) if group["nesterov"] else m
                    o = newton_schulz_single(u.view(-1, shape[-1]), group["ns_steps"])
                    update[s:e] = o.reshape(-1) * muon_scale(shape, group["scale"], layout.fan)
                mask = _uncovered(p, layout)
                if mask.any():
                    b1, b2 = group["adam_betas"]
                    m = state["m"][mask].lerp(g[mask], 1 - b1)
                    v = state["v"][mask].lerp(g[mask].square(), 1 - b2)
                    state["m"][mask], state["v"][mask] = m, v
                    update[mask] = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + group["eps"])
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.view_as(p), alpha=-lr)
