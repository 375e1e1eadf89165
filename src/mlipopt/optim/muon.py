"""Muon with an auxiliary AdamW, block-structure aware (Harari et al. algorithm 1).

Matrix blocks: ``M ← βM + (1−β)G``; Nesterov ``U = βM + (1−β)G``; ``O = NS5(U)``;
``W ← W − η·wd·W − η·scale·O``. Everything else (1-D tensors, "adam"-role groups, elements outside
any block) gets AdamW with ``adam_betas`` — one optimizer object, as in Keller Jordan's
``MuonWithAuxAdam``. Blocks of equal shape are orthogonalised in one batched Newton–Schulz call.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from . import _linalg
from ._base import BlockOptimizer, reject_unknown
from ._layout import Bucket, GroupPlan

SCALE_RULES = ("match_rms_adamw", "original")


def muon_scale(shape: tuple[int, ...], rule: str, fan: str = "out_in") -> float:
    """Update scale for a block of ``shape`` (3-D blocks count as their ``(m1·m2, n)`` unfolding).

    ``"match_rms_adamw"``: ``0.2·√max(m, n)`` (Liu et al. 2025) so that AdamW learning rates carry
    over. ``"original"``: ``√max(1, fan_out/fan_in)`` (Jordan et al. 2024); ``fan`` says whether the
    block is stored ``(out, in)`` like ``nn.Linear`` or ``(in, out)`` like e3nn and nequip.
    """
    rows, cols = math.prod(shape[:-1]), shape[-1]
    if rule == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if rule == "original":
        fan_out, fan_in = (rows, cols) if fan == "out_in" else (cols, rows)
        return math.sqrt(max(1.0, fan_out / fan_in))
    raise ValueError(f"scale must be one of {SCALE_RULES}, got {rule!r}")


class Muon(BlockOptimizer):
    """Muon (momentum orthogonalised by Newton–Schulz) with auxiliary AdamW.

    Args:
        params: parameters or param groups. Plain tensors with ≥ 2 dims become one
            ``(d0, rest)`` matrix; 1-D tensors get AdamW. Groups from
            :func:`mlipopt.structure.param_groups` decide by ``role`` and ``blocks``.
        lr: learning rate (for both the Muon and AdamW parts of a group).
        momentum: Muon's β.
        nesterov: use the Nesterov-style direction ``βM + (1−β)G``.
        ns_steps: Newton–Schulz iterations.
        weight_decay: decoupled weight decay ``W ← W − η·wd·W``.
        scale: ``"match_rms_adamw"`` (default) or ``"original"``, see :func:`muon_scale`.
        adam_betas, eps: the auxiliary AdamW's betas and epsilon.
        ns_dtype: dtype of the Newton–Schulz iteration (float32; bfloat16 as an opt-in on CUDA).
        nonfinite: ``"raise"`` (default) or ``"skip"`` a step whose gradients contain NaN/inf, or
            ``"unchecked"``: no check, so that an ordinary step never waits on the device (on CUDA; the
            check reads one flag back per step).
    """

    _convention = "as_matrix"
    _flat_keys = {"momentum_buffer": "both", "exp_avg_sq": "elem"}

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
        ns_dtype: torch.dtype = torch.float32,
        nonfinite: str = "raise",
        **unknown: Any,
    ):
        reject_unknown(type(self), unknown)
        if lr < 0 or weight_decay < 0 or eps < 0:
            raise ValueError(
                f"lr, weight_decay and eps must be non-negative, got {lr}, {weight_decay}, {eps}"
            )
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if scale not in SCALE_RULES:
            raise ValueError(f"scale must be one of {SCALE_RULES}, got {scale!r}")
        if len(adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {adam_betas!r}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=bool(nesterov),
            ns_steps=int(ns_steps),
            weight_decay=weight_decay,
            scale=scale,
            adam_betas=tuple(adam_betas),
            eps=eps,
            ns_dtype=ns_dtype,
            nonfinite=nonfinite,
        )
        super().__init__(params, defaults)

    def _init_bucket(self, plan: GroupPlan, bucket: Bucket, group: dict[str, Any], known: list[bool]) -> None:
        bucket.new_rows = None

    def _export_bucket(self, plan: GroupPlan, bucket: Bucket) -> None:
        return None

    def _step_plan(self, plan: GroupPlan, group: dict[str, Any]) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        beta = group["momentum"]
        grad = plan.flat([p.grad for p in plan.params])
        update = torch.zeros_like(grad)
        for bucket in self._owned_buckets(plan):
            g = bucket.positions.gather(grad).reshape(bucket.count, *bucket.shape)
            m = bucket.state["momentum_buffer"]
            m.lerp_(g, 1 - beta)
            u = g.lerp(m, beta) if group["nesterov"] else m
            o = _linalg.newton_schulz(
                u.reshape(bucket.count, -1, bucket.shape[-1]), group["ns_steps"], group["ns_dtype"]
            )
            o.mul_(-lr * muon_scale(bucket.shape, group["scale"], bucket.fan))
            bucket.positions.scatter_(update, o)
        self._combine_block_updates(update)  # data-parallel ranks that shared the blocks
        if plan.elem.size:
            beta1, beta2 = group["adam_betas"]
            step = group["step"]
            g = plan.elem.gather(grad)
            m, v = plan.state["momentum_buffer"], plan.state["exp_avg_sq"]
            m.lerp_(g, 1 - beta1)
            v.lerp_(g.square(), 1 - beta2)
            denom = (v / (1 - beta2**step)).sqrt_().add_(group["eps"])
            plan.elem.scatter_(update, (m / denom).mul_(-lr / (1 - beta1**step)))
        if wd:
            torch._foreach_mul_(plan.params, 1.0 - lr * wd)
        torch._foreach_add_(plan.params, plan.split(update))
