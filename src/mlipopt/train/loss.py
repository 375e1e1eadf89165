"""Eq. 11 of Harari et al. (sparse force supervision) and the error metrics reported per epoch and at test.

L = λ_E · mean_n ((E_n^pred − E_n)/N_n)²  +  λ_F · Σ_n m_n ‖F_n^pred − F_n‖² / (3 Σ_n m_n N_n)

The energy term is per atom (as nequip does). The force term is normalised by the force components of
labelled frames only. On a minibatch B of a split with N frames we use

    Σ_{n∈B} m_n ‖ΔF_n‖² / (|B| · c),   c = 3 Σ_n m_n N_n / N   (over the whole split),

whose expectation over uniformly drawn batches is exactly eq. 11's force term, and which equals it for
a full batch. Normalising each batch by its own labelled components instead would weight a lone
labelled frame in a batch as much as a full batch of them at small force fractions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..data import Batch


@dataclass
class LossParts:
    total: torch.Tensor
    energy: torch.Tensor
    forces: torch.Tensor


def eq11_loss(
    energy: torch.Tensor,
    forces: torch.Tensor | None,
    batch: Batch,
    energy_weight: float,
    force_weight: float,
    force_normaliser: float,
    batch_frames: int | None = None,
) -> LossParts:
    """Eq. 11 on one batch; ``force_normaliser`` is c above (0 when the split has no force labels).

    ``batch_frames`` is |B| when ``batch`` is one rank's shard of a larger data-parallel batch B: the
    shards' losses (and gradients) then sum to the loss of B (:mod:`mlipopt.train.distributed`).
    """
    e_err = (energy.reshape(-1).to(torch.float64) - batch.energy) / batch.n_atoms
    n = len(batch.energy) if batch_frames is None else batch_frames
    e_term = e_err.square().mean() if n == len(batch.energy) else e_err.square().sum() / n
    f_term = torch.zeros((), dtype=torch.float64, device=e_term.device)
    if forces is not None and force_normaliser > 0 and batch.has_forces:
        f_err = (forces.to(torch.float64) - batch.forces)[batch.atom_mask]
        f_term = f_err.square().sum() / (n * force_normaliser)
    return LossParts(energy_weight * e_term + force_weight * f_term, e_term, f_term)


class ErrorMetrics:
    """Running MAE/RMSE: energy per atom over all frames, forces per component over labelled frames."""

    def __init__(self) -> None:
        self.e_abs = self.e_sq = self.e_sum = self.f_abs = self.f_sq = 0.0
        self.n_frames = self.n_components = 0

    def update(self, energy: torch.Tensor, forces: torch.Tensor | None, batch: Batch) -> None:
        e_err = (energy.detach().reshape(-1).to(torch.float64) - batch.energy) / batch.n_atoms
        self.e_abs += float(e_err.abs().sum())
        self.e_sum += float(e_err.sum())
        self.e_sq += float(e_err.square().sum())
        self.n_frames += len(e_err)
        if forces is not None and batch.has_forces:
            f_err = (forces.detach().to(torch.float64) - batch.forces)[batch.atom_mask]
            self.f_abs += float(f_err.abs().sum())
            self.f_sq += float(f_err.square().sum())
            self.n_components += f_err.numel()

    _SUMS = ("e_abs", "e_sq", "e_sum", "f_abs", "f_sq", "n_frames", "n_components")

    def merge_ranks(self, ranks: Any) -> None:
        """Sum the running sums of every data-parallel rank (each evaluated its share of the batches)."""
        if not ranks.active:
            return
        values = ranks.sum_(torch.tensor([float(getattr(self, k)) for k in self._SUMS], dtype=torch.float64))
        for key, value in zip(self._SUMS, values.tolist()):
            setattr(self, key, int(value) if key.startswith("n_") else value)

    def result(self) -> dict[str, float | None]:
        """Errors in meV/atom (energy) and meV/Å (forces); force entries are None without labels.

        ``e_bias`` is the mean *signed* per-atom energy error: an offset common to every frame, which
        forces cannot see (:mod:`mlipopt.models.energy_shifts`).
        """
        out: dict[str, float | None] = {
            "e_mae": None,
            "e_rmse": None,
            "e_bias": None,
            "f_mae": None,
            "f_rmse": None,
        }
        if self.n_frames:
            out["e_mae"] = 1e3 * self.e_abs / self.n_frames
            out["e_rmse"] = 1e3 * (self.e_sq / self.n_frames) ** 0.5
            out["e_bias"] = 1e3 * self.e_sum / self.n_frames
        if self.n_components:
            out["f_mae"] = 1e3 * self.f_abs / self.n_components
            out["f_rmse"] = 1e3 * (self.f_sq / self.n_components) ** 0.5
        return out


def validation_metric(errors: dict[str, float | None]) -> float:
    """10 × E-MAE (meV/atom) + F-MAE (meV/Å), the paper's selection metric; energy only without forces."""
    if errors["e_mae"] is None:
        return float("inf")
    return 10.0 * errors["e_mae"] + (errors["f_mae"] or 0.0)
