"""Frames → model graphs (through a model family's backend) and minibatches with force masks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .io import Frames


@dataclass
class Batch:
    """One minibatch: the model input plus labels and masks (energies in eV, forces in eV/Å)."""

    data: Any  # the backend's batched input (nequip AtomicDataDict, SevenNet batch, ...)
    energy: torch.Tensor  # (B,)
    n_atoms: torch.Tensor  # (B,)
    forces: torch.Tensor  # (ΣN, 3); zero where the frame's forces are masked
    frame_mask: torch.Tensor  # (B,) bool, frame keeps its force label
    atom_mask: torch.Tensor  # (ΣN,) bool
    backend: Any = None  # moves ``data`` between devices

    @property
    def has_forces(self) -> bool:
        return bool(self.frame_mask.any())

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.backend.to(self.data, torch.device(device)),
            *(
                t.to(device)
                for t in (self.energy, self.n_atoms, self.forces, self.frame_mask, self.atom_mask)
            ),
            backend=self.backend,
        )


class GraphSet:
    """A split ready for training: one graph per frame, labels, and the force mask of this split.

    Labels of masked frames are discarded (zeroed) here, so no code path downstream can see them.
    """

    def __init__(
        self,
        frames: Frames,
        backend: Any,
        type_names: Sequence[str] | None = None,
        force_mask: np.ndarray | None = None,
    ) -> None:
        frames.check(type_names)
        self.backend = backend
        n = len(frames)
        mask = np.ones(n, dtype=bool) if force_mask is None else np.asarray(force_mask, dtype=bool)
        mask &= np.array([f is not None for f in frames.forces], dtype=bool)
        self.frames = frames
        self.graphs = [self.backend.graph(a) for a in frames.atoms]
        self.energy = torch.as_tensor(frames.energy, dtype=torch.float64)
        self.n_atoms = torch.as_tensor(frames.n_atoms, dtype=torch.long)
        self.force_mask = torch.as_tensor(mask)
        self.forces = [
            torch.as_tensor(f, dtype=torch.float64) if keep else torch.zeros(len(a), 3, dtype=torch.float64)
            for a, f, keep in zip(frames.atoms, frames.forces, mask)
        ]

    def __len__(self) -> int:
        return len(self.graphs)

    @property
    def n_force_frames(self) -> int:
        return int(self.force_mask.sum())

    def mean_force_components(self) -> float:
        """(3 Σ_n m_n N_n) / N: the per-frame normaliser of eq. 11's force term over this split."""
        return float(3 * (self.n_atoms * self.force_mask).sum() / max(len(self), 1))

    def avg_num_neighbors(self) -> float:
        edges = sum(self.backend.num_edges(g) for g in self.graphs)
        return edges / max(int(self.n_atoms.sum()), 1)

    def batch(self, indices: Sequence[int]) -> Batch:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        data = self.backend.collate([self.graphs[i] for i in idx.tolist()])
        n_atoms = self.n_atoms[idx]
        frame_mask = self.force_mask[idx]
        return Batch(
            data=data,
            energy=self.energy[idx],
            n_atoms=n_atoms,
            forces=torch.cat([self.forces[i] for i in idx.tolist()]),
            frame_mask=frame_mask,
            atom_mask=torch.repeat_interleave(frame_mask, n_atoms),
            backend=self.backend,
        )

    def batch_indices(
        self, batch_size: int, shuffle_seed: Sequence[int] | int | None = None
    ) -> Iterator[np.ndarray]:
        """Frame indices of each minibatch: file order, or shuffled by ``shuffle_seed`` (the same seed,
        the same order — on every data-parallel rank too)."""
        order = np.arange(len(self))
        if shuffle_seed is not None:
            order = np.random.default_rng(shuffle_seed).permutation(len(self))
        for start in range(0, len(self), batch_size):
            yield order[start : start + batch_size]

    def batches(self, batch_size: int, shuffle_seed: Sequence[int] | int | None = None) -> Iterator[Batch]:
        """Minibatches in file order, or shuffled by ``shuffle_seed`` (the same seed, the same order)."""
        for indices in self.batch_indices(batch_size, shuffle_seed):
            yield self.batch(indices)
