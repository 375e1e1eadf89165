"""The pretrained SevenNet-0 family (``pip install mlipopt[sevennet]``): fine-tuning a foundation model.

The checkpoint ships inside the ``sevenn`` wheel (offline). Graphs are SevenNet's ``AtomGraphData``
batched by torch_geometric; its per-species energy shifts are frozen parameters of
``rescale_atomic_energy``; the calculator is sevenn's ``SevenNetCalculator``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ase
import sevenn._keys as KEY
import sevenn.util
import torch
from ase.data import atomic_numbers, chemical_symbols
from sevenn.atom_graph_data import AtomGraphData
from sevenn.calculator import SevenNetCalculator
from sevenn.train.dataload import unlabeled_atoms_to_graph
from torch_geometric.loader.dataloader import Collater

from .family import DataStats, GeometricBackend, ModelFamily, default_dtype
from .presets import PRESETS


def load_sevennet(checkpoint: str = "7net-0") -> torch.nn.Module:
    """A pretrained SevenNet model from the checkpoints in the ``sevenn`` wheel (offline)."""
    with default_dtype(torch.float32):  # the checkpoint is float32 whatever nequip set globally
        return sevenn.util.load_checkpoint(checkpoint).build_model()


class SevenNetBackend(GeometricBackend):
    """SevenNet models; forces come from its own edge-based autograd head.

    SevenNet always builds the force graph, so energy-only training costs as much as training with
    forces here (the loss simply ignores them).
    """

    name = "sevennet"

    def __init__(self, cutoff: float) -> None:
        self.r_max = cutoff

    def graph(self, atoms: ase.Atoms) -> Any:
        with default_dtype(torch.float32):
            return AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(atoms, self.r_max))

    def collate(self, graphs: list[Any]) -> Any:
        return Collater(graphs[:1])(graphs)

    def predict(
        self, model: torch.nn.Module, data: Any, forces: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        model.set_is_batch_data(True)
        with torch.enable_grad(), default_dtype(torch.float32):
            out = model(data)  # its force head differentiates through edge vectors in any mode
        energy = out[KEY.PRED_TOTAL_ENERGY].reshape(-1)
        if not forces:
            return (energy if model.training else energy.detach()), None
        return energy, out[KEY.PRED_FORCE]


class SevenNetFamily(ModelFamily):
    name = "sevennet"

    def starts_pretrained(self, model: Any) -> bool:
        return True

    def backend(self, model: Any, type_names: Sequence[str], r_max: float) -> SevenNetBackend:
        return SevenNetBackend(r_max)

    def build(self, model: Any, stats: DataStats | None, seed: int) -> torch.nn.Module:
        return load_sevennet(PRESETS[model.preset]["checkpoint"])

    def rebuild(self, model: Any, seed: int) -> torch.nn.Module:
        return load_sevennet(PRESETS[model.preset]["checkpoint"])

    def add_energy_shifts(self, model: torch.nn.Module, delta: dict[str, float]) -> None:
        """Add per-element offsets (eV/atom) to SevenNet's frozen per-species shifts: fine-tuning data
        rarely share the pretraining data's energy reference (another functional, basis or code)."""
        shift = model.rescale_atomic_energy.shift
        with torch.no_grad():
            for element, value in delta.items():
                shift[model.type_map[atomic_numbers[element]]] += value

    def energy_shifts(self, model: torch.nn.Module) -> dict[str, float]:
        shift = model.rescale_atomic_energy.shift.detach()
        return {chemical_symbols[z]: float(shift[i]) for z, i in model.type_map.items()}

    def release_shifts(self, model: torch.nn.Module) -> None:
        model.rescale_atomic_energy.shift.requires_grad_(True)
        model.rescale_atomic_energy.scale.requires_grad_(True)

    def calculator(self, model: torch.nn.Module, type_names: Sequence[str], r_max: float, device: Any) -> Any:
        return SevenNetCalculator(model, file_type="model_instance", device=device)
