"""The Hessian of the eq. 11 training loss as a matrix-free operator (Hessian-vector products).

H = ∇²_θ L(θ) with L the run's own loss — per-atom energy term plus the force term over the run's
force-labelled frames, its own loss weights and force normaliser — on a fixed set of training frames.
Forces already need one derivative of the energy; the gradient of L is a second; the product Hv a
third, computed by double backward (``torch.autograd.grad`` with ``create_graph``). Where a model does
not support it, central finite differences of gradients stand in: ``Hv ≈ (g(θ+hv) − g(θ−hv)) / 2h``,
``h = ε^{1/3} · max(1, ‖θ‖) / ‖v‖`` (the step that balances truncation O(h²) and rounding O(ε/h)).

Generic tools (PyHessian, hessian-eigenthings, curvlinops) assume ``criterion(model(x), y)``; an MLIP
loss differentiates the model with respect to positions first, so this operator is built on the
trainer's own ``batch_loss``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


class FlatParameters:
    """A flat view of a list of tensors: vector ↔ per-tensor pieces, and named index ranges."""

    def __init__(self, params: list[torch.Tensor], names: list[str] | None = None) -> None:
        self.params = params
        self.names = names or [f"#{i}" for i in range(len(params))]
        self.sizes = [p.numel() for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self.size = int(self.offsets[-1])

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [piece.view_as(p) for piece, p in zip(flat.split(self.sizes), self.params)]

    def join(self, tensors: list[torch.Tensor | None]) -> torch.Tensor:
        return torch.cat(
            [(t if t is not None else torch.zeros_like(p)).reshape(-1) for t, p in zip(tensors, self.params)]
        )

    def slice(self, index: int) -> slice:
        return slice(int(self.offsets[index]), int(self.offsets[index + 1]))


class HessianOperator:
    """Matrix-free H of a scalar loss ``loss_fn()`` of ``params`` (summed over its terms).

    ``loss_terms`` returns an iterable of ``(weight, thunk)``: the loss is ``Σ weight · thunk()``; the
    products are accumulated term by term so that memory stays that of one batch. ``method`` is
    ``"autograd"`` (double backward), ``"fd"`` (finite differences of gradients) or ``"auto"`` (autograd,
    falling back to finite differences if the model's ops do not support double backward).
    """

    def __init__(
        self,
        params: list[torch.Tensor],
        loss_terms: Callable[[], list[tuple[float, Callable[[], torch.Tensor]]]],
        method: str = "auto",
        names: list[str] | None = None,
    ) -> None:
        if method not in ("auto", "autograd", "fd"):
            raise ValueError(f"method must be auto, autograd or fd, got {method!r}")
        self.flat = FlatParameters(params, names)
        self.loss_terms = loss_terms
        self.method = method
        self.products = 0
        self.seconds = 0.0
        self.dtype = params[0].dtype
        self.device = params[0].device

    @property
    def size(self) -> int:
        return self.flat.size

    def gradient(self) -> torch.Tensor:
        """∇L (flat), accumulated over the loss terms."""
        total = torch.zeros(self.size, dtype=self.dtype, device=self.device)
        for weight, term in self.loss_terms():
            grads = torch.autograd.grad(weight * term(), self.flat.params, allow_unused=True)
            total += self.flat.join(list(grads))
        return total

    def _hvp_autograd(self, v: torch.Tensor) -> torch.Tensor:
        pieces = self.flat.split(v)
        total = torch.zeros_like(v)
        for weight, term in self.loss_terms():
            grads = torch.autograd.grad(
                weight * term(), self.flat.params, create_graph=True, allow_unused=True
            )
            dot = sum((g * p).sum() for g, p in zip(grads, pieces) if g is not None)
            hv = torch.autograd.grad(dot, self.flat.params, allow_unused=True)
            total += self.flat.join(list(hv))
        return total

    def _hvp_fd(self, v: torch.Tensor) -> torch.Tensor:
        norm = float(v.norm())
        if norm == 0:
            return torch.zeros_like(v)
        theta = self.flat.join([p.detach() for p in self.flat.params])
        h = torch.finfo(self.dtype).eps ** (1 / 3) * max(1.0, float(theta.norm())) / norm
        pieces = self.flat.split(v)

        def shifted(step: float) -> torch.Tensor:
            with torch.no_grad():
                for p, d in zip(self.flat.params, pieces):
                    p.add_(step * d)
            try:
                return self.gradient()
            finally:
                with torch.no_grad():
                    for p, d in zip(self.flat.params, pieces):
                        p.sub_(step * d)

        return (shifted(h) - shifted(-h)) / (2 * h)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Hv for a flat tensor ``v`` (the operator's dtype and device)."""
        start = time.perf_counter()
        try:
            if self.method == "fd":
                return self._hvp_fd(v)
            try:
                return self._hvp_autograd(v)
            except RuntimeError:
                if self.method == "autograd":
                    raise
                self.method = "fd"  # the model's ops lack a double backward: switch once, for good
                return self._hvp_fd(v)
        finally:
            self.products += 1
            self.seconds += time.perf_counter() - start


def trainer_loss_terms(
    trainer: Any, frames: int
) -> Callable[[], list[tuple[float, Callable[[], torch.Tensor]]]]:
    """Eq. 11 on the first ``frames`` training frames (the run's masks, weights and normaliser),
    batched at the run's evaluation batch size; the loss is their mean, as over a full batch."""
    train = trainer.sets["train"]
    n = min(frames, len(train))
    size = trainer.config.data.eval_batch_size
    batches = [train.batch(list(range(i, min(i + size, n)))).to(trainer.device) for i in range(0, n, size)]

    def terms() -> list[tuple[float, Callable[[], torch.Tensor]]]:
        trainer.model.train()  # nequip builds the force graph for differentiation in training mode
        return [(len(b.energy) / n, (lambda b=b: trainer.batch_loss(b).total)) for b in batches]

    return terms


def finite_difference_step(dtype: torch.dtype, theta_norm: float, v_norm: float) -> float:
    """The central-difference step used by the fallback (for documentation and tests)."""
    return torch.finfo(dtype).eps ** (1 / 3) * max(1.0, theta_norm) / v_norm if v_norm else math.inf
