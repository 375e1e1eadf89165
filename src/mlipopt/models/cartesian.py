"""An unconstrained model family: message passing on raw Cartesian neighbour vectors (issue 14).

No spherical harmonics and no built-in rotational symmetry: each edge enters as its unit vector in the
lab frame, a radial Bessel basis with a smooth cutoff and the neighbour's features, through plain MLPs
(Bigi, Ceriotti et al., arXiv 2601.16195, argue such models can be more accurate and faster at scale and
that symmetry can be restored at inference, :mod:`mlipopt.fidelity.symmetry`). Forces are −∇E
(conservative, default) or a direct per-atom head (``direct_forces: true``: cheaper, not conservative).
``attention_heads: H`` replaces the neighbour sum by multi-head attention (see :class:`CartesianMLP`), the
transformer-like variant matrix optimizers were designed for. ``augment_rotations: true`` rotates every
training frame by a random rotation each step (the rotation is applied to the edge vectors, which is the
same as rotating the frame and its force labels).

Every weight is a plain ``nn.Linear`` matrix, so structure discovery puts them on the matrix role and
Muon/SOAP precondition them as whole matrices; the species embedding is an ``nn.Embedding`` (Adam role).
The neighbour list is matscipy's when installed (fast), else ASE's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import ase
import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from torch import nn

from ..rotations import haar_rotations as random_rotations
from .family import DataStats, ModelFamily, default_dtype
from .presets import PRESETS

OPTIONS = ("hidden", "num_basis", "layers", "attention_heads", "direct_forces", "augment_rotations")
#: attention logits are bounded to ±LOGIT_BOUND (a soft clip), so exp() cannot overflow
LOGIT_BOUND = 5.0


def neighbour_list(atoms: ase.Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, S): pairs within ``cutoff`` and the cell shifts of j (matscipy, or ASE's when absent)."""
    try:
        from matscipy.neighbours import neighbour_list as build
    except ImportError:  # pragma: no cover - matscipy comes with the nequip extra
        from ase.neighborlist import neighbor_list as build
    if not atoms.pbc.any():  # a molecule: a box around it (matscipy bins in a cell; no images)
        span = atoms.positions.max(axis=0) - atoms.positions.min(axis=0)
        atoms = ase.Atoms(
            numbers=atoms.numbers, positions=atoms.positions - atoms.positions.min(axis=0) + cutoff,
            cell=np.diag(span + 2 * cutoff + 1.0), pbc=False,
        )  # fmt: skip
    return build("ijS", atoms, cutoff)


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.SiLU()]
    return nn.Sequential(*layers[:-1])


class CartesianMLP(nn.Module):
    """E = Σ_i (scale · ε(h_i) + shift[Z_i]); h_i from ``layers`` rounds of messages, u_ij the lab-frame
    unit vector, B the radial basis, f_c the cutoff:

    - ``attention_heads = 0``: h_i += U([h_i, Σ_j m_ij · f_c(r_ij) / avg_num_neighbors]),
      m_ij = MLP([u_ij, B(r_ij), h_j]).
    - ``attention_heads = H``: per head, keys and values (k_ij, v_ij) = MLP([u_ij, B(r_ij), h_j]), the
      query q_i = W h_i, the logit ℓ_ij = b·tanh(q_i·k_ij / (b√d)) (b = LOGIT_BOUND) and the weight
      a_ij = f_c(r_ij) e^{ℓ_ij} / (1 + Σ_k f_c(r_ik) e^{ℓ_ik}). The 1 is an empty slot: with the cutoff
      in both numerator and sum, a neighbour leaving the cutoff sphere fades out smoothly, also when it is
      an atom's only one, so forces stay continuous.
    """

    def __init__(
        self,
        n_types: int,
        r_max: float,
        avg_num_neighbors: float,
        shifts: Sequence[float],
        scale: float,
        hidden: int = 64,
        num_basis: int = 8,
        layers: int = 2,
        attention_heads: int = 0,
        direct_forces: bool = False,
        augment_rotations: bool = False,
    ) -> None:
        super().__init__()
        self.r_max, self.num_basis = float(r_max), int(num_basis)
        self.direct_forces, self.augment_rotations = bool(direct_forces), bool(augment_rotations)
        self.avg_num_neighbors = float(avg_num_neighbors)
        if attention_heads < 0 or (attention_heads and hidden % attention_heads):
            raise ValueError(f"attention_heads must be 0 or divide hidden = {hidden}, got {attention_heads}")
        self.attention_heads = int(attention_heads)
        self.embed = nn.Embedding(n_types, hidden)
        width = 2 * hidden if attention_heads else hidden  # keys and values, or messages
        self.messages = nn.ModuleList(_mlp([3 + num_basis + hidden, hidden, width]) for _ in range(layers))
        self.queries = nn.ModuleList(
            nn.Linear(hidden, hidden, bias=False) for _ in range(layers if attention_heads else 0)
        )
        self.updates = nn.ModuleList(_mlp([2 * hidden, hidden]) for _ in range(layers))
        self.readout = _mlp([hidden, hidden, 1])
        self.force_head = _mlp([hidden, hidden, 3]) if direct_forces else None
        self.shifts = nn.Parameter(
            torch.tensor(list(shifts), dtype=torch.get_default_dtype()), requires_grad=False
        )
        self.register_buffer("scale", torch.tensor(float(scale)))

    def radial(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bessel basis sin(nπr/r_c)/r and the polynomial cutoff (p = 6) of nequip/DimeNet."""
        n = torch.arange(1, self.num_basis + 1, dtype=r.dtype, device=r.device)
        basis = torch.sin(n * math.pi * r.unsqueeze(-1) / self.r_max) / r.unsqueeze(-1)
        x = r / self.r_max
        p = 6.0
        envelope = (
            1 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2)
        )
        return basis, envelope * (x < 1)

    def attend(
        self, queries: torch.Tensor, keys_values: torch.Tensor, i: torch.Tensor, cutoff: torch.Tensor
    ) -> torch.Tensor:
        """Σ_j a_ij v_ij per head, concatenated (the class docstring gives a_ij)."""
        n, hidden = queries.shape
        heads = self.attention_heads
        d = hidden // heads
        keys, values = keys_values.chunk(2, dim=-1)
        logits = (queries[i].view(-1, heads, d) * keys.view(-1, heads, d)).sum(-1) / math.sqrt(d)
        weights = torch.exp(LOGIT_BOUND * torch.tanh(logits / LOGIT_BOUND)) * cutoff.unsqueeze(-1)
        norm = 1.0 + torch.zeros(n, heads, dtype=weights.dtype, device=weights.device).index_add(
            0, i, weights
        )
        alpha = (weights / norm[i]).unsqueeze(-1)
        pooled = torch.zeros(n, heads, d, dtype=values.dtype, device=values.device)
        return pooled.index_add(0, i, alpha * values.view(-1, heads, d)).view(n, hidden)

    def forward(self, data: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Energies per frame (and direct forces when the head exists), from ``data`` of the backend."""
        i, j = data["edge_index"]
        vectors = data["pos"][j] - data["pos"][i] + data["shift"]
        rotations = None
        if self.training and self.augment_rotations:
            rotations = random_rotations(int(data["n_frames"]), vectors.dtype, vectors.device)
            vectors = torch.einsum("eab,eb->ea", rotations[data["batch"][i]], vectors)
        r = vectors.norm(dim=-1)
        basis, cutoff = self.radial(r)
        unit = vectors / r.unsqueeze(-1)
        h = self.embed(data["types"])
        for layer, (message, update) in enumerate(zip(self.messages, self.updates)):
            m = message(torch.cat([unit, basis, h[j]], dim=-1))
            if self.attention_heads:
                pooled = self.attend(self.queries[layer](h), m, i, cutoff)
            else:
                pooled = (
                    torch.zeros_like(h).index_add_(0, i, m * cutoff.unsqueeze(-1)) / self.avg_num_neighbors
                )
            h = h + update(torch.cat([h, pooled], dim=-1))
        atomic = self.scale * self.readout(h).squeeze(-1) + self.shifts[data["types"]]
        energy = torch.zeros(int(data["n_frames"]), dtype=atomic.dtype, device=atomic.device)
        energy = energy.index_add(0, data["batch"], atomic)
        forces = None
        if self.force_head is not None:
            forces = self.scale * self.force_head(h)
            if rotations is not None:  # predicted in the rotated frame: back to the lab frame
                forces = torch.einsum("nba,nb->na", rotations[data["batch"]], forces)
        return energy, forces


class CartesianBackend:
    """Graphs as dicts of tensors: positions, species indices, neighbour pairs and their cell shifts."""

    name = "cartesian"

    def __init__(self, type_names: Sequence[str], r_max: float, dtype: torch.dtype = torch.float32) -> None:
        self.type_names, self.r_max, self.dtype = list(type_names), float(r_max), dtype
        self.index = {name: k for k, name in enumerate(self.type_names)}

    def graph(self, atoms: ase.Atoms) -> dict[str, torch.Tensor]:
        i, j, shifts = neighbour_list(atoms, self.r_max)
        cell = np.asarray(atoms.cell.array, dtype=np.float64)
        return {
            "pos": torch.as_tensor(atoms.positions, dtype=self.dtype),
            "types": torch.as_tensor([self.index[s] for s in atoms.get_chemical_symbols()], dtype=torch.long),
            "edge_index": torch.as_tensor(np.stack([i, j]), dtype=torch.long),
            "shift": torch.as_tensor(shifts @ cell, dtype=self.dtype),
        }

    def collate(self, graphs: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        offsets = np.cumsum([0] + [len(g["pos"]) for g in graphs[:-1]])
        return {
            "pos": torch.cat([g["pos"] for g in graphs]),
            "types": torch.cat([g["types"] for g in graphs]),
            "edge_index": torch.cat([g["edge_index"] + int(o) for g, o in zip(graphs, offsets)], dim=1),
            "shift": torch.cat([g["shift"] for g in graphs]),
            "batch": torch.cat(
                [torch.full((len(g["pos"]),), k, dtype=torch.long) for k, g in enumerate(graphs)]
            ),
            "n_frames": len(graphs),
        }

    def to(self, data: dict[str, Any], device: torch.device) -> dict[str, Any]:
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in data.items()}

    def num_edges(self, graph: dict[str, torch.Tensor]) -> int:
        return int(graph["edge_index"].shape[1])

    def predict(
        self, model: torch.nn.Module, data: dict[str, Any], forces: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not forces or model.direct_forces:
            energy, direct = model(data)
            return energy, direct if forces else None
        pos = data["pos"].detach().requires_grad_(True)
        energy, _ = model({**data, "pos": pos})
        (gradient,) = torch.autograd.grad(energy.sum(), pos, create_graph=model.training)
        return energy, -gradient


class CartesianCalculator(Calculator):
    """An ASE calculator over a :class:`CartesianBackend`: energy and forces, and for a conservative model
    on a periodic cell the stress σ = (1/V) ∂E/∂ε, by autograd through a symmetric strain ε applied to
    positions and cell. A direct force head has no energy whose strain derivative is consistent with its
    forces, so it offers no stress (ASE then raises ``PropertyNotImplementedError``)."""

    def __init__(self, model: torch.nn.Module, backend: CartesianBackend, device: Any = "cpu") -> None:
        super().__init__()
        self.model, self.backend, self.device = model.eval(), backend, torch.device(device)
        self.implemented_properties = ["energy", "free_energy", "forces"]
        if not model.direct_forces:
            self.implemented_properties.append("stress")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        data = self.backend.to(self.backend.collate([self.backend.graph(self.atoms)]), self.device)
        if "stress" in properties:
            self.results = self._with_stress(data)
            return
        energy, forces = self.backend.predict(self.model, data, True)
        value = float(energy.detach().sum())
        self.results = {
            "energy": value,
            "free_energy": value,
            "forces": forces.detach().double().cpu().numpy(),
        }

    def _with_stress(self, data: dict[str, Any]) -> dict[str, Any]:
        from ase.stress import full_3x3_to_voigt_6_stress

        if self.atoms.cell.rank < 3:
            raise ValueError("stress needs a periodic cell with three cell vectors")
        pos = data["pos"].detach().requires_grad_(True)
        strain = torch.zeros(3, 3, dtype=pos.dtype, device=pos.device, requires_grad=True)
        deform = torch.eye(3, dtype=pos.dtype, device=pos.device) + 0.5 * (strain + strain.T)
        energy, _ = self.model({**data, "pos": pos @ deform, "shift": data["shift"] @ deform})
        gradient, virial = torch.autograd.grad(energy.sum(), [pos, strain])
        value = float(energy.detach().sum())
        stress = virial.detach().double().cpu().numpy() / self.atoms.get_volume()
        return {
            "energy": value,
            "free_energy": value,
            "forces": -gradient.detach().double().cpu().numpy(),
            "stress": full_3x3_to_voigt_6_stress(stress),
        }


class CartesianFamily(ModelFamily):
    name = "cartesian"

    def backend(self, model: Any, type_names: Sequence[str], r_max: float) -> CartesianBackend:
        return CartesianBackend(type_names, r_max, getattr(torch, model.dtype))

    def _make(self, model: Any, type_names: Sequence[str], r_max: float, neighbours: float,
              shifts: Sequence[float], scale: float) -> CartesianMLP:  # fmt: skip
        config = {k: v for k, v in PRESETS[model.preset].items() if k in OPTIONS}
        config.update(model.options)
        unknown = sorted(set(config) - set(OPTIONS))
        if unknown:
            raise TypeError(f"unknown argument(s) {', '.join(unknown)}")
        with default_dtype(getattr(torch, model.dtype)):
            built = CartesianMLP(len(type_names), r_max, neighbours, shifts, scale, **config)
        built.type_names = list(type_names)  # for the energy shifts by element
        return built

    def build(self, model: Any, stats: DataStats | None, seed: int) -> torch.nn.Module:
        if stats is None:
            raise ValueError(f"{model.preset} is built from scratch: it needs the training data's statistics")
        shifts = [stats.e0[t] for t in stats.type_names]
        return self._make(
            model, stats.type_names, stats.r_max, stats.avg_num_neighbors, shifts, stats.energy_scale
        )

    def rebuild(self, model: Any, seed: int) -> torch.nn.Module:
        zeros = [0.0] * len(model.type_names)  # overwritten by the saved state
        return self._make(model, model.type_names, model.r_max, model.avg_num_neighbors, zeros, 1.0)

    def options(self, model: Any) -> list[str]:
        return list(OPTIONS)

    def add_energy_shifts(self, model: torch.nn.Module, delta: dict[str, float]) -> None:
        names = self._names(model)
        with torch.no_grad():
            for k, name in enumerate(names):
                model.shifts[k] += delta.get(name, 0.0)

    def energy_shifts(self, model: torch.nn.Module) -> dict[str, float]:
        return {name: float(model.shifts[k]) for k, name in enumerate(self._names(model))}

    def release_shifts(self, model: torch.nn.Module) -> None:
        model.shifts.requires_grad_(True)

    def _names(self, model: torch.nn.Module) -> list[str]:
        names = getattr(model, "type_names", None)
        if names is None:
            raise ValueError("this CartesianMLP does not know its element names (set model.type_names)")
        return names

    def calculator(self, model: torch.nn.Module, type_names: Sequence[str], r_max: float, device: Any) -> Any:
        dtype = next(model.parameters()).dtype
        return CartesianCalculator(model.to(device), CartesianBackend(type_names, r_max, dtype), device)
