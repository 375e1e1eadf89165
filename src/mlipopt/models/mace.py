"""The MACE family (``pip install 'mlipopt[mace]'`` — in its own environment: mace-torch pins e3nn 0.4.4,
nequip needs e3nn ≥ 0.6).

Small ``ScaleShiftMACE`` models are trained from scratch (presets ``mace-small``, ``mace-tiny``), or a
MACE ``.model`` file the user has (a foundation model, or one trained here) is fine-tuned
(``model: {preset: mace-file, file: PATH}``). Graphs are MACE's ``AtomicData`` batched by its
torch_geometric copy; the per-element reference energies E0 (``atomic_energies_fn``) are the energy
shifts that mlipopt refits; the calculator is MACE's ``MACECalculator``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ase
import numpy as np
import torch

# e3nn 0.4.4 loads its constants with torch.load, which torch ≥ 2.6 restricts to tensors and plain data;
# the file holds Python slices. Allowing the builtin ``slice`` type runs no code.
torch.serialization.add_safe_globals([slice])

from ase.data import atomic_numbers, chemical_symbols  # noqa: E402
from e3nn import o3  # noqa: E402
from mace import modules  # noqa: E402
from mace.calculators import MACECalculator  # noqa: E402
from mace.data import AtomicData, config_from_atoms  # noqa: E402
from mace.tools import AtomicNumberTable, torch_geometric  # noqa: E402

from .family import DataStats, GeometricBackend, ModelFamily, default_dtype  # noqa: E402
from .presets import PRESETS  # noqa: E402


def _dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


class MACEBackend(GeometricBackend):
    """MACE's own graphs (``AtomicData`` with one-hot species over the model's elements)."""

    name = "mace"

    def __init__(self, type_names: Sequence[str], r_max: float, dtype: torch.dtype = torch.float64) -> None:
        self.type_names, self.r_max, self.dtype = list(type_names), r_max, dtype
        self.table = AtomicNumberTable(sorted(atomic_numbers[t] for t in self.type_names))

    def graph(self, atoms: ase.Atoms) -> Any:
        bare = ase.Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        with default_dtype(self.dtype):
            return AtomicData.from_config(config_from_atoms(bare), z_table=self.table, cutoff=self.r_max)

    def collate(self, graphs: list[Any]) -> Any:
        return torch_geometric.Batch.from_data_list(graphs)

    def predict(
        self, model: torch.nn.Module, data: Any, forces: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = model(data.to_dict(), training=model.training, compute_force=forces)
        energy = out["energy"].reshape(-1)
        return energy, out["forces"] if forces else None


def build_mace(
    preset: str,
    type_names: Sequence[str],
    e0: dict[str, float],
    avg_num_neighbors: float,
    scale: float,
    r_max: float,
    dtype: str = "float64",
    **overrides: Any,
) -> torch.nn.Module:
    """A ``ScaleShiftMACE`` of ``preset`` for ``type_names``: E0 as its atomic energies, ``scale`` (the
    force RMS) as its interaction-energy scale, no shift (the E0 carry the offset)."""
    config = {**PRESETS[preset], **overrides}
    config.pop("family")
    config.pop("r_max", None)
    numbers = sorted(atomic_numbers[t] for t in type_names)
    interaction = modules.interaction_classes[
        config.pop("interaction", "RealAgnosticResidualInteractionBlock")
    ]
    with default_dtype(getattr(torch, dtype)):
        return modules.ScaleShiftMACE(
            r_max=r_max,
            num_bessel=config.pop("num_bessel", 8),
            num_polynomial_cutoff=config.pop("num_polynomial_cutoff", 5),
            max_ell=config.pop("max_ell", 2),
            interaction_cls=interaction,
            interaction_cls_first=interaction,
            num_interactions=config.pop("num_interactions", 2),
            num_elements=len(numbers),
            hidden_irreps=o3.Irreps(config.pop("hidden_irreps")),
            MLP_irreps=o3.Irreps(config.pop("MLP_irreps", "16x0e")),
            atomic_energies=np.array([e0[chemical_symbols[z]] for z in numbers]),
            avg_num_neighbors=avg_num_neighbors,
            atomic_numbers=numbers,
            correlation=config.pop("correlation", 3),
            gate=torch.nn.functional.silu,
            radial_MLP=config.pop("radial_MLP", [32, 32, 32]),
            atomic_inter_scale=scale,
            atomic_inter_shift=0.0,
            **config,
        )


_FILES: dict[str, torch.nn.Module] = {}


def _file_model(path: str) -> torch.nn.Module:
    if path not in _FILES:
        _FILES[path] = load_mace_file(path)
    return _FILES[path]


def load_mace_file(path: str, dtype: str | None = None) -> torch.nn.Module:
    """A MACE model saved whole with ``torch.save`` (MACE's ``.model`` files). They are pickled
    modules, so loading runs code from the file: load only files you trust."""
    model = torch.load(path, map_location="cpu", weights_only=False)
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    return model


class MACEFamily(ModelFamily):
    name = "mace"

    def starts_pretrained(self, model: Any) -> bool:
        return bool(model.file)  # a MACE file the user has is fine-tuned; presets start from scratch

    def defaults(self, model: Any) -> tuple[list[str] | None, float]:
        if not model.file:
            return None, float(PRESETS[model.preset]["r_max"])
        trained = _file_model(model.file)
        numbers = [int(z) for z in trained.atomic_numbers]
        return [chemical_symbols[z] for z in numbers], float(trained.r_max)

    def backend(self, model: Any, type_names: Sequence[str], r_max: float) -> MACEBackend:
        return MACEBackend(type_names, r_max, getattr(torch, model.dtype))

    def build(self, model: Any, stats: DataStats | None, seed: int) -> torch.nn.Module:
        if model.file:
            return load_mace_file(model.file, model.dtype)
        if stats is None:
            raise ValueError(f"{model.preset} is built from scratch: it needs the training data's statistics")
        return build_mace(
            model.preset, stats.type_names, stats.e0, stats.avg_num_neighbors, stats.energy_scale,
            stats.r_max, dtype=model.dtype, **model.options,
        )  # fmt: skip

    def rebuild(self, model: Any, seed: int) -> torch.nn.Module:
        if model.file:
            return load_mace_file(model.file, model.dtype)
        zeros = dict.fromkeys(model.type_names, 0.0)  # overwritten by the saved state
        return build_mace(
            model.preset, model.type_names, zeros, model.avg_num_neighbors, 1.0, model.r_max,
            dtype=model.dtype, **model.options,
        )  # fmt: skip

    def options(self, model: Any) -> list[str]:
        return ["hidden_irreps", "MLP_irreps", "num_interactions", "max_ell", "correlation", "num_bessel",
                "num_polynomial_cutoff", "radial_MLP", "interaction"]  # fmt: skip

    def _e0(self, model: torch.nn.Module) -> tuple[torch.Tensor, list[str]]:
        numbers = [int(z) for z in model.atomic_numbers]
        return model.atomic_energies_fn.atomic_energies, [chemical_symbols[z] for z in numbers]

    def add_energy_shifts(self, model: torch.nn.Module, delta: dict[str, float]) -> None:
        energies, names = self._e0(model)
        with torch.no_grad():
            for i, name in enumerate(names):
                energies[..., i] += delta.get(name, 0.0)

    def energy_shifts(self, model: torch.nn.Module) -> dict[str, float]:
        energies, names = self._e0(model)
        flat = energies.reshape(-1, len(names))[0]
        return {name: float(flat[i]) for i, name in enumerate(names)}

    def release_shifts(self, model: torch.nn.Module) -> None:
        raise ValueError("MACE keeps its E0 as a buffer: use model.energy_shifts refit or fixed")

    def calculator(self, model: torch.nn.Module, type_names: Sequence[str], r_max: float, device: Any) -> Any:
        dtype = "float64" if _dtype(model) == torch.float64 else "float32"
        return MACECalculator(models=[model], device=str(device), default_dtype=dtype)
