"""The NequIP and Allegro family, through the nequip packages (``pip install mlipopt[nequip]``).

Graphs are nequip ``AtomicDataDict``s built with nequip's own transforms; the per-type energy scale and
shift live in nequip's ``PerTypeScaleShift``; the calculator is nequip's ``NequIPCalculator``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

import ase
import torch
from ase.calculators.calculator import all_changes
from nequip.data import AtomicDataDict, from_ase
from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
from nequip.integrations.ase import NequIPCalculator
from nequip.nn.grad_output import ForceStressOutput
from nequip.utils.global_state import set_global_state

from .family import DataStats, ModelFamily
from .presets import PRESETS


@contextlib.contextmanager
def forces_enabled(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Switch nequip's autograd force/stress output on or off (off: energy-only, no force graph)."""
    heads = [m for m in model.modules() if isinstance(m, ForceStressOutput)]
    before = [h.do_derivatives for h in heads]
    for h in heads:
        h.do_derivatives = enabled
    try:
        yield
    finally:
        for h, b in zip(heads, before):
            h.do_derivatives = b


def to_graph(atoms: ase.Atoms, type_names: Sequence[str], r_max: float) -> dict[str, torch.Tensor]:
    """An unlabelled nequip AtomicDataDict with atom types and a neighbour list (nequip's transforms)."""
    # nequip's global state makes float64 the default dtype; from_ase builds positions in the default
    # dtype, so without it the first graphs of a process would hold float32-rounded positions.
    set_global_state()
    bare = ase.Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    mapper = ChemicalSpeciesToAtomTypeMapper(model_type_names=list(type_names))
    graph = NeighborListTransform(r_max=r_max)(mapper(from_ase(bare)))
    # nequip keeps positions and cells in float64 whatever the model dtype
    return {k: v.double() if torch.is_floating_point(v) else v for k, v in graph.items()}


class NequIPBackend:
    """NequIP and Allegro models from the nequip packages."""

    name = "nequip"

    def __init__(self, type_names: Sequence[str], r_max: float) -> None:
        self.type_names, self.r_max = list(type_names), r_max

    def graph(self, atoms: ase.Atoms) -> dict[str, torch.Tensor]:
        return to_graph(atoms, self.type_names, self.r_max)

    def collate(self, graphs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return AtomicDataDict.batched_from_list(graphs)

    def to(self, data: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        return AtomicDataDict.to_(dict(data), device)

    def num_edges(self, graph: dict[str, torch.Tensor]) -> int:
        return int(graph["edge_index"].shape[1])

    def predict(
        self, model: torch.nn.Module, data: Any, forces: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        with forces_enabled(model, forces), torch.set_grad_enabled(forces or torch.is_grad_enabled()):
            out = model(data)
        return out["total_energy"].reshape(-1), out.get("forces") if forces else None


def build_nequip(
    preset: str,
    type_names: Sequence[str] = ("H", "C", "N", "O"),
    model_dtype: str = "float32",
    seed: int = 0,
    avg_num_neighbors: float = 20.0,
    **overrides: Any,
) -> torch.nn.Module:
    """A NequIP or Allegro model of ``preset``; ``overrides`` replace preset keys. Per-type energy
    shifts and scales default to 0 and 1 (training passes E0 and the force RMS)."""
    set_global_state()
    config = {**PRESETS[preset], **overrides}
    kind = config.pop("family")
    type_names = list(type_names)
    common = dict(
        seed=seed,
        model_dtype=model_dtype,
        type_names=type_names,
        avg_num_neighbors=avg_num_neighbors,
        per_type_energy_shifts=dict.fromkeys(type_names, 0.0),
        per_type_energy_scales=dict.fromkeys(type_names, 1.0),
    )
    if kind == "nequip":
        from nequip.model import NequIPGNNModel

        return NequIPGNNModel(**{**common, **config})
    from allegro.model import AllegroModel

    return AllegroModel(**{**common, **config})


def load_nequip_file(path: Any) -> torch.nn.Module:
    """A model from a nequip checkpoint (``.ckpt``) or package (``.zip``) — nequip's own loaders, which
    unpickle the file: open only files you trust."""
    set_global_state()
    if str(path).endswith(".ckpt"):
        from nequip.model import ModelFromCheckpoint

        return ModelFromCheckpoint(str(path))
    from nequip.model import ModelFromPackage

    return ModelFromPackage(str(path))


def _shift_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """nequip's ``PerTypeScaleShift`` modules acting on per-atom energies (found by attributes)."""
    return [
        m
        for m in model.modules()
        if hasattr(m, "shifts")
        and hasattr(m, "type_names")
        and getattr(m, "out_field", "") == "atomic_energy"
    ]


def _build(
    model: Any,
    type_names: Sequence[str],
    avg_num_neighbors: float,
    r_max: float,
    seed: int,
    start: dict[str, Any],
) -> torch.nn.Module:
    """The run's architecture; ``start`` holds values a fresh model takes from the data (the user's
    ``model.options`` override them)."""
    return build_nequip(
        model.preset, type_names=type_names, model_dtype=model.dtype, seed=seed,
        avg_num_neighbors=avg_num_neighbors, r_max=r_max, **{**start, **model.options},
    )  # fmt: skip


class NequIPFamily(ModelFamily):
    name = "nequip"

    def backend(self, model: Any, type_names: Sequence[str], r_max: float) -> NequIPBackend:
        return NequIPBackend(type_names, r_max)

    def build(self, model: Any, stats: DataStats | None, seed: int) -> torch.nn.Module:
        if stats is None:
            raise ValueError(f"{model.preset} is built from scratch: it needs the training data's statistics")
        start = {
            "per_type_energy_shifts": {t: stats.e0[t] for t in stats.type_names},
            "per_type_energy_scales": dict.fromkeys(stats.type_names, stats.energy_scale),
            "per_type_energy_shifts_trainable": model.energy_shifts == "trainable",
        }
        return _build(model, stats.type_names, stats.avg_num_neighbors, stats.r_max, seed, start)

    def rebuild(self, model: Any, seed: int) -> torch.nn.Module:
        return _build(model, model.type_names, model.avg_num_neighbors, model.r_max, seed, {})

    def options(self, model: Any) -> list[str]:
        if PRESETS[model.preset]["family"] == "nequip":
            from nequip.model import NequIPGNNModel as builder
        else:
            from allegro.model import AllegroModel as builder
        return sorted(set(re.findall(r"^\s+(\w+) \(", builder.__doc__ or "", re.MULTILINE)))

    def add_energy_shifts(self, model: torch.nn.Module, delta: dict[str, float]) -> None:
        modules = _shift_modules(model)
        if not modules or any(not m.has_shifts or m.shifts.numel() != len(m.type_names) for m in modules):
            raise ValueError("the model has no per-type energy shifts to refit")
        with torch.no_grad():
            for m in modules:
                for i, name in enumerate(m.type_names):
                    m.shifts[i] += delta.get(name, 0.0)

    def energy_shifts(self, model: torch.nn.Module) -> dict[str, float]:
        (module, *_) = _shift_modules(model)
        return {name: float(module.shifts[i].detach()) for i, name in enumerate(module.type_names)}

    def calculator(self, model: torch.nn.Module, type_names: Sequence[str], r_max: float, device: Any) -> Any:
        transforms = [
            ChemicalSpeciesToAtomTypeMapper(model_type_names=list(type_names)),
            NeighborListTransform(r_max=r_max),
        ]
        return _Calculator(model, device=device, transforms=transforms)


class _Calculator(NequIPCalculator):
    """nequip's calculator without a stress for structures that are not periodic in all three directions
    (nequip returns NaN there); ``get_stress`` then raises ASE's ``PropertyNotImplementedError``, as for
    any calculator without the property."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, list(properties), system_changes)
        if not self.atoms.pbc.all():
            self.results.pop("stress", None)
