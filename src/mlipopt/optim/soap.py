"""SOAP and SOAP-Muon: Adam in the eigenbasis of Shampoo's preconditioner (Harari et al. algorithm 2).

Faithful to official SOAP (Vyas et al., 2025): the first step only accumulates the Gram matrices
and builds the eigenbases (``eigh``); from then on gradients are projected, Adam moments are run
in the eigenbasis with bias correction, the update is projected back, and every
``precondition_frequency`` steps the bases are refreshed by one power-iteration step + QR with the
second moment re-sorted to the new eigenvalue order. A 3-D block ``(m1, m2, n)`` gets one
preconditioner per mode. Elements outside any block (1-D parameters) get Adam.

**Null directions (a deliberate deviation, ``null_space="isotropic"``, the default).** A Gram matrix
that is rank-deficient — always the longer side of a non-square block at the first step, and any mode
whose gradients span a subspace — has eigenvectors for eigenvalue 0 that are arbitrary: two LAPACK
builds, or a batched and a single ``eigh``, return different ones, and Adam's per-coordinate
``1/√v`` in that basis turns the arbitrary choice into a different update (1e-2 apart after 30 steps
on a 12 × 16 block). Since no basis of a degenerate eigenspace is preferred, the preconditioner must
be isotropic there: the second moment of null coordinates is replaced by its mean over the null
coordinates of that mode (``null_directions``: eigenvalue ``≤ 10·d·ε·λ_max``). A refresh of a basis
with null columns power-iterates only the determined columns (the arbitrary ones would carry their
arbitrariness along), takes the complete QR of that iterate — its trailing columns span the orthogonal
complement, which is determined — and resolves that span by Rayleigh–Ritz where Gram energy entered it
(``_linalg.isotropic_refresh``): ``O(d²r)`` for ``r`` determined columns, plus an ``eigh`` of the null
count only when the null span gained energy. The update then does not depend on which null basis
was returned (tested with random rotations of it). Full-rank blocks are untouched, so this equals
official SOAP wherever official SOAP is well defined; ``null_space="official"`` restores the official
behaviour exactly.

Implementation note: the first moment is stored *in the eigenbasis* and re-expressed when the
basis changes (``M̃ ← Q_newᵀ Q_old M̃ Q_oldᵀ Q_new`` mode by mode). This equals official SOAP,
which keeps it in parameter space and projects it every step, and saves two projections per step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import _linalg
from ._base import BlockOptimizer, reject_unknown
from ._layout import Bucket, GroupPlan


def gram(x: Tensor, mode: int) -> Tensor:
    """Mode-``mode`` Gram matrices of a stack of blocks ``x`` ``(B, d0, d1[, d2])``: ``X₍ₖ₎X₍ₖ₎ᵀ``."""
    if x.ndim == 3:  # 2-D blocks: G Gᵀ and Gᵀ G on strided views, no unfolding copy
        return x @ x.mT if mode == 0 else x.mT @ x
    unfolded = x.movedim(mode + 1, 1).reshape(x.shape[0], x.shape[mode + 1], -1)
    return unfolded @ unfolded.mT


def accumulate_gram(gg: Tensor, x: Tensor, mode: int, beta: float) -> None:
    """``GG ← β·GG + (1−β)·X₍ₖ₎X₍ₖ₎ᵀ`` in place. For 2-D blocks one ``baddbmm`` writes the product into the
    running matrix: no ``d × d`` temporary and one pass over it less than ``lerp_`` of a separate product
    (the Gram matrices of nequip-seed001's 1024-row blocks are 4 MiB each)."""
    if x.ndim == 3:
        left, right = (x, x.mT) if mode == 0 else (x.mT, x)
        gg.baddbmm_(left, right, beta=beta, alpha=1 - beta)
    else:
        gg.lerp_(gram(x, mode), 1 - beta)


def project(x: Tensor, bases: list[Tensor | None], back: bool = False) -> Tensor:
    """Apply ``Qₖᵀ`` (or ``Qₖ`` when ``back``) along every mode ``k`` that has a basis."""
    if x.ndim == 3:  # 2-D blocks: Q_Lᵀ G Q_R (or Q_L G Q_Rᵀ) as two plain batched matmuls
        left, right = bases
        if left is not None:
            x = (left if back else left.mT) @ x
        if right is not None:
            x = x @ (right.mT if back else right)
        return x
    for mode, q in enumerate(bases):
        if q is None:
            continue
        axis = mode + 1
        q = q.mT if back else q
        # one basis per block: broadcast over the block's other modes, never across blocks
        q = q.view(q.shape[0], *([1] * (x.ndim - 3)), *q.shape[-2:])
        x = (x.movedim(axis, -1) @ q).movedim(-1, axis)
    return x


NULL_SPACE_RULES = ("isotropic", "official")


class SOAP(BlockOptimizer):
    """SOAP (ShampoO with Adam in the Preconditioner's eigenbasis), block-structure aware.

    Args:
        params: parameters or param groups. Plain tensors with ≥ 2 dims are preconditioned along
            their own modes (official SOAP); groups from :func:`mlipopt.structure.param_groups`
            carry ``role`` and ``blocks`` and are preconditioned block by block.
        lr: learning rate.
        betas: Adam ``(β1, β2)`` in the eigenbasis (Harari et al. uses ``(0.95, 0.95)``).
        shampoo_beta: EMA factor of the Gram matrices; ``None`` uses ``β2``.
        eps: added to ``√v`` in the eigenbasis.
        weight_decay: decoupled (AdamW-style) weight decay, applied after the update.
        precondition_frequency: refresh the eigenbases every this many steps.
        max_precond_dim: modes larger than this are not preconditioned (identity basis).
        null_space: ``"isotropic"`` (default: Adam is isotropic across the null directions of a
            rank-deficient Gram matrix, so the update does not depend on the arbitrary eigenvectors
            ``eigh`` returns there; see the module doc) or ``"official"`` (official SOAP exactly).
        null_tolerance: relative eigenvalue ``λ/λ_max`` at or below which a direction counts as null
            (``None``: ``10·d·ε``, zero up to rounding). Eigenvectors of eigenvalues far below
            ``λ_max`` are rotated by rounding by about ``ε·λ_max/λ``, and Adam's normalisation turns
            that rotation into an O(lr) difference of the update; ``1e-8`` in float64 keeps every
            retained direction determined to ~1e-8, so runs that differ only in summation order
            (data-parallel ranks, thread counts) stay together (docs/distributed.md).
        nonfinite: ``"raise"`` (default) or ``"skip"`` a step whose gradients contain NaN/inf, or
            ``"unchecked"``: no check, so that an ordinary step never waits on the device (on CUDA; the
            check reads one flag back per step).
    """

    _convention = "by_modes"
    _flat_keys = {"exp_avg": "both", "exp_avg_sq": "both"}
    _orthogonalize = False

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
        null_space: str = "isotropic",
        null_tolerance: float | None = None,
        nonfinite: str = "raise",
        _subclass_defaults: dict[str, Any] | None = None,
        **unknown: Any,
    ):
        reject_unknown(type(self), unknown)
        _check_betas(betas, "betas")
        if null_space not in NULL_SPACE_RULES:
            raise ValueError(f"null_space must be one of {NULL_SPACE_RULES}, got {null_space!r}")
        if null_tolerance is not None and not 0.0 <= null_tolerance < 1.0:
            raise ValueError(f"null_tolerance must be in [0, 1) or None, got {null_tolerance}")
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(
                f"lr, eps and weight_decay must be non-negative, got {lr}, {eps}, {weight_decay}"
            )
        if precondition_frequency < 1:
            raise ValueError(f"precondition_frequency must be ≥ 1, got {precondition_frequency}")
        if shampoo_beta is not None and not 0.0 <= shampoo_beta < 1.0:
            raise ValueError(f"shampoo_beta must be in [0, 1), got {shampoo_beta}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            shampoo_beta=shampoo_beta,
            eps=eps,
            weight_decay=weight_decay,
            precondition_frequency=int(precondition_frequency),
            max_precond_dim=int(max_precond_dim),
            null_space=null_space,
            null_tolerance=null_tolerance,
            nonfinite=nonfinite,
            **(_subclass_defaults or {}),
        )
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ role-dependent settings
    def _betas(self, group: dict[str, Any], ortho: bool) -> tuple[float, float]:
        return group["betas"]

    # ------------------------------------------------------------------ state
    def _init_bucket(self, plan: GroupPlan, bucket: Bucket, group: dict[str, Any], known: list[bool]) -> None:
        p0 = plan.params[0]
        grams: list[Tensor | None] = []
        bases: list[Tensor | None] = []
        nulls: list[Tensor | None] = []
        for mode, d in enumerate(bucket.shape):
            if d > group["max_precond_dim"]:
                grams.append(None)
                bases.append(None)
                nulls.append(None)
                continue
            g_rows, q_rows, n_rows = [], [], []
            no_null = torch.zeros(d, dtype=torch.bool, device=p0.device)
            for i, b in bucket.members:
                saved = self.state[plan.params[i]] if known[i] else None
                if saved and saved["GG"][b][mode] is not None:
                    g_rows.append(saved["GG"][b][mode])
                    q_rows.append(saved["Q"][b][mode])
                    # absent in older checkpoints; load_state_dict casts it to the parameter dtype
                    null = saved.get("null", [None] * (b + 1))[b]
                    n_rows.append(null[mode] != 0 if null is not None else no_null)
                else:
                    g_rows.append(torch.zeros(d, d, dtype=p0.dtype, device=p0.device))
                    q_rows.append(torch.eye(d, dtype=p0.dtype, device=p0.device))
                    n_rows.append(no_null)
            grams.append(torch.stack(g_rows))
            bases.append(torch.stack(q_rows))
            nulls.append(torch.stack([n.to(p0.device) for n in n_rows]))
        bucket.state["GG"] = grams
        bucket.state["Q"] = bases
        bucket.state["null"] = nulls
        bucket.state["null_weight"] = [
            None if n is None else torch.zeros(n.shape, dtype=p0.dtype, device=p0.device) for n in nulls
        ]
        bucket.state["null_count"] = [
            None if n is None else torch.ones(n.shape[0], 1, dtype=p0.dtype, device=p0.device) for n in nulls
        ]
        _null_flags_changed(bucket.state)
        new = [r for r, (i, _) in enumerate(bucket.members) if not known[i]]
        bucket.new_rows = torch.tensor(new, device=p0.device, dtype=torch.long) if new else None

    def _export_bucket(self, plan: GroupPlan, bucket: Bucket) -> None:
        for r, (i, b) in enumerate(bucket.members):
            entry = self.state[plan.params[i]]
            n_blocks = len(plan.layouts[i].blocks)
            gg = entry.setdefault("GG", [None] * n_blocks)
            qq = entry.setdefault("Q", [None] * n_blocks)
            nn = entry.setdefault("null", [None] * n_blocks)
            gg[b] = [None if g is None else g[r].clone() for g in bucket.state["GG"]]
            qq[b] = [None if q is None else q[r].clone() for q in bucket.state["Q"]]
            nn[b] = [None if n is None else n[r].clone() for n in bucket.state["null"]]

    # ------------------------------------------------------------------ step
    def _step_plan(self, plan: GroupPlan, group: dict[str, Any]) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        steps_done = group["step"] - 1  # official SOAP: the first call only builds the bases
        grad = plan.flat([p.grad for p in plan.params])
        update = torch.zeros_like(grad)
        for bucket in self._owned_buckets(plan):
            g = bucket.positions.gather(grad).reshape(bucket.count, *bucket.shape)
            if bucket.new_rows is not None:
                self._initialise_rows(bucket, g, group)
            if steps_done == 0:
                continue
            beta1, beta2 = self._betas(group, bucket.ortho)
            m, v = bucket.state["exp_avg"], bucket.state["exp_avg_sq"]
            bases = bucket.state["Q"]
            g_proj = project(g, bases)
            m.lerp_(g_proj, 1 - beta1)
            v.lerp_(g_proj.square(), 1 - beta2)
            if any(bucket.state["null_modes"]) and group["null_space"] == "isotropic":
                v.copy_(isotropic_in_null_space(v, bucket.state))
            u = project(m / (v.sqrt() + eps), bases, back=True)
            if bucket.ortho and self._orthogonalize:
                u = self._orthogonalize_update(u, group)
            u = u * (-lr * _bias_correction(beta1, beta2, steps_done))
            bucket.positions.scatter_(update, u)
            self._update_preconditioner(bucket, g, group, steps_done)
        self._combine_block_updates(update)  # data-parallel ranks that shared the blocks
        if plan.elem.size and steps_done > 0:
            beta1, beta2 = self._betas(group, False)
            g = plan.elem.gather(grad)
            m, v = plan.state["exp_avg"], plan.state["exp_avg_sq"]
            m.lerp_(g, 1 - beta1)
            v.lerp_(g.square(), 1 - beta2)
            u = (m / (v.sqrt() + eps)).mul_(-lr * _bias_correction(beta1, beta2, steps_done))
            plan.elem.scatter_(update, u)
        if steps_done == 0:
            return
        torch._foreach_add_(plan.params, plan.split(update))
        if wd:
            torch._foreach_mul_(plan.params, 1.0 - lr * wd)

    def _initialise_rows(self, bucket: Bucket, g: Tensor, group: dict[str, Any]) -> None:
        """First sight of these blocks: accumulate their first Gram matrices and ``eigh`` them."""
        rows = bucket.new_rows
        beta = _shampoo_beta(group, self._betas(group, bucket.ortho))
        g_rows = g.index_select(0, rows)
        state = bucket.state
        for mode, (gg, q, null) in enumerate(zip(state["GG"], state["Q"], state["null"])):
            if gg is None:
                continue
            gg_rows = gg.index_select(0, rows).lerp_(gram(g_rows, mode), 1 - beta)
            gg.index_copy_(0, rows, gg_rows)
            new_q, failed = _linalg.eigenbasis(gg_rows, None)
            group["basis_failures"] += failed
            q.index_copy_(0, rows, new_q)
            estimates = _linalg.eigenvalue_estimates(gg_rows, new_q)
            null.index_copy_(0, rows, _linalg.null_directions(estimates, group.get("null_tolerance")))
        _null_flags_changed(state)
        bucket.new_rows = None

    def _update_preconditioner(
        self, bucket: Bucket, g: Tensor, group: dict[str, Any], steps_done: int
    ) -> None:
        beta = _shampoo_beta(group, self._betas(group, bucket.ortho))
        grams, bases = bucket.state["GG"], bucket.state["Q"]
        for mode, gg in enumerate(grams):
            if gg is not None:
                accumulate_gram(gg, g, mode, beta)
        if steps_done % group["precondition_frequency"] != 0:
            return
        m, v = bucket.state["exp_avg"], bucket.state["exp_avg_sq"]
        isotropic = group["null_space"] == "isotropic"
        m_param_space = project(m, bases, back=True)
        new_bases: list[Tensor | None] = []
        for mode, (gg, q, null) in enumerate(zip(grams, bases, bucket.state["null"])):
            if gg is None:
                new_bases.append(None)
                continue
            if isotropic:
                new_q, order, new_null, failed = _linalg.isotropic_refresh(
                    gg, q, null, group.get("null_tolerance")
                )
                null.copy_(new_null)
            else:  # official SOAP; the null flags serve only the isotropic rule
                new_q, order, failed = _linalg.power_iteration_basis(gg, q, None)
            group["basis_failures"] += failed
            v.copy_(_permute_mode(v, order, mode))
            new_bases.append(new_q)
        for q, new_q in zip(bases, new_bases):
            if q is not None:
                q.copy_(new_q)
        m.copy_(project(m_param_space, bases))
        _null_flags_changed(bucket.state)

    def _orthogonalize_update(self, u: Tensor, group: dict[str, Any]) -> Tensor:
        return u


class SOAPMuon(SOAP):
    """SOAP-Muon: SOAP whose back-projected update of matrix-role blocks is orthogonalised.

    After SOAP's update ``U`` (Harari et al. algorithm 2, ortho=True, normalize=True), matrix blocks get
    ``U ← P Σ^ρ Rᵀ`` (``ρ=0``: Newton–Schulz, cheapest; ``ρ=0.5``: batched SVD, the official
    default; ``ρ=1``: unchanged) and then RMS normalisation ``U ← U/√mean(U²)``. 3-D blocks are
    orthogonalised as their ``(m1·m2, n)`` unfolding. Other blocks and elements get plain SOAP.
    ``betas`` apply to the matrix role, ``adam_betas`` (default: ``betas``) to everything else;
    plain tensors with ≥ 2 dims count as matrix role. Its best learning rate is typically ~10×
    below SOAP's (Harari et al. table 4).
    """

    _orthogonalize = True

    def __init__(
        self,
        params: Any,
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.95, 0.95),
        adam_betas: tuple[float, float] | None = None,
        rho: float = 0.5,
        normalize: bool = True,
        ns_steps: int = 5,
        **kwargs: Any,
    ):
        if adam_betas is not None:
            _check_betas(adam_betas, "adam_betas")
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"rho must be in [0, 1], got {rho}")
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            _subclass_defaults=dict(
                adam_betas=None if adam_betas is None else tuple(adam_betas),
                rho=float(rho),
                normalize=bool(normalize),
                ns_steps=int(ns_steps),
            ),
            **kwargs,
        )

    def _betas(self, group: dict[str, Any], ortho: bool) -> tuple[float, float]:
        if ortho or group["adam_betas"] is None:
            return group["betas"]
        return group["adam_betas"]

    def _orthogonalize_update(self, u: Tensor, group: dict[str, Any]) -> Tensor:
        shape = u.shape
        mat = u.reshape(shape[0], -1, shape[-1])
        rho = group["rho"]
        if rho == 0.0:
            mat = _linalg.newton_schulz(mat, group["ns_steps"])
        elif rho != 1.0:
            mat = _linalg.singular_value_power(mat, rho)
        if group["normalize"]:
            rms = mat.square().mean(dim=(-2, -1), keepdim=True).sqrt()
            mat = mat / rms.clamp_min(torch.finfo(mat.dtype).tiny)
        return mat.reshape(shape)


def _null_flags_changed(state: dict[str, Any]) -> None:
    """Derive what the ordinary step needs from the null flags, after they changed (a refresh, new
    blocks): which modes have null directions in any block (``null_modes``, on the host, so that an
    ordinary step never reads it back), the flags as weights and their counts (in place: under data
    parallelism ``state`` holds views of the full bucket's tensors)."""
    state["null_modes"] = _linalg.null_modes(state["null"])
    for null, weight, count in zip(state["null"], state["null_weight"], state["null_count"]):
        if null is not None:
            weight.copy_(null)
            count.copy_(null.sum(-1, keepdim=True).clamp_min(1))


def isotropic_in_null_space(v: Tensor, state: dict[str, Any]) -> Tensor:
    """``v`` (B, d0, d1[, d2]) with its entries along each mode's null directions replaced by their mean
    over those directions: the only diagonal preconditioner that is the same in every basis of a
    degenerate eigenspace. Reads the flags' weights and counts kept in ``state`` and skips modes without
    null directions: 3 kernels per mode (recomputing the weights cost a quarter of an ordinary step on
    allegro-seed001)."""
    for mode, (has, null, weight, count) in enumerate(
        zip(state["null_modes"], state["null"], state["null_weight"], state["null_count"])
    ):
        if not has:
            continue
        moved = v.movedim(mode + 1, -1)
        shape = (null.shape[0], *([1] * (moved.ndim - 2)), null.shape[1])
        mean = (moved * weight.view(shape)).sum(-1, keepdim=True) / count.view(*shape[:-1], 1)
        v = torch.where(null.view(shape), mean, moved).movedim(-1, mode + 1)
    return v


def _check_betas(betas: tuple[float, float], name: str) -> None:
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"{name} must be two numbers in [0, 1), got {betas!r}")


def _shampoo_beta(group: dict[str, Any], betas: tuple[float, float]) -> float:
    """The Gram-matrix EMA factor: ``shampoo_beta`` if set, else the role's ``β2`` (Harari et al. A.4)."""
    beta = group["shampoo_beta"]
    return betas[1] if beta is None else beta


def _bias_correction(beta1: float, beta2: float, step: int) -> float:
    """Adam's step-size factor ``√(1-β2^t)/(1-β1^t)`` (algorithm 2 line 6)."""
    return math.sqrt(1 - beta2**step) / (1 - beta1**step)


def _permute_mode(x: Tensor, order: Tensor, mode: int) -> Tensor:
    """Reorder ``x`` (B, d0, d1[, d2]) along ``mode`` by a per-block permutation ``order`` (B, d)."""
    axis = mode + 1
    moved = x.movedim(axis, -1)
    idx = order.view(order.shape[0], *([1] * (moved.ndim - 2)), order.shape[1]).expand_as(moved)
    return torch.gather(moved, -1, idx).movedim(-1, axis)
