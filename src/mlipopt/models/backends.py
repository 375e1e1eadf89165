"""Model backends: how a family of models turns structures into inputs and predicts energy and forces.

The trainer, the loss and the metrics are the same for every model; a backend supplies the four things
that differ between NequIP/Allegro (nequip's ``AtomicDataDict``) and SevenNet (its ``AtomGraphData``
batched by torch_geometric): per-frame graph construction (each with the package's own neighbour
list), collation, device transfer and the forward pass returning (total energy per frame, forces).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import ase
import torch


@contextlib.contextmanager
def forces_enabled(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Switch nequip's autograd force/stress output on or off (off: energy-only, no force graph)."""
    from nequip.nn.grad_output import ForceStressOutput

    heads = [m for m in model.modules() if isinstance(m, ForceStressOutput)]
    before = [h.do_derivatives for h in heads]
    for h in heads:
        h.do_derivatives = enabled
    try:
        yield
    finally:
        for h, b in zip(heads, before):
            h.do_derivatives = b


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Temporarily set torch's default dtype (nequip sets float64 globally; SevenNet is float32)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


class NequIPBackend:
    """NequIP and Allegro models from the nequip packages."""

    name = "nequip"

    def __init__(self, type_names: Sequence[str], r_max: float) -> None:
        self.type_names, self.r_max = list(type_names), r_max

    def graph(self, atoms: ase.Atoms) -> dict[str, torch.Tensor]:
        from ..data.graphs import to_graph

        return to_graph(atoms, self.type_names, self.r_max)

    def collate(self, graphs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        from nequip.data import AtomicDataDict

        return AtomicDataDict.batched_from_list(graphs)

    def to(self, data: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        from nequip.data import AtomicDataDict

        return AtomicDataDict.to_(dict(data), device)

    def num_edges(self, graph: dict[str, torch.Tensor]) -> int:
        return int(graph["edge_index"].shape[1])

    def predict(
        self, model: torch.nn.Module, data: Any, forces: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        with forces_enabled(model, forces), torch.set_grad_enabled(forces or torch.is_grad_enabled()):
            out = model(data)
        return out["total_energy"].reshape(-1), out.get("forces") if forces else None


class SevenNetBackend:
    """SevenNet models (the ``sevenn`` package); forces come from its own edge-based autograd head.

    SevenNet always builds the force graph, so energy-only training costs as much as training with
    forces here (the loss simply ignores them).
    """

    name = "sevennet"

    def __init__(self, cutoff: float) -> None:
        self.r_max = cutoff

    def graph(self, atoms: ase.Atoms) -> Any:
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph

        with default_dtype(torch.float32):
            return AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(atoms, self.r_max))

    def collate(self, graphs: list[Any]) -> Any:
        from torch_geometric.loader.dataloader import Collater

        return Collater(graphs[:1])(graphs)

    def to(self, data: Any, device: torch.device) -> Any:
        return data.to(device)

    def num_edges(self, graph: Any) -> int:
        return int(graph["edge_index"].shape[1])

    def predict(
        self, model: torch.nn.Module, data: Any, forces: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        import sevenn._keys as KEY

        model.set_is_batch_data(True)
        with (
            torch.enable_grad(),
            default_dtype(torch.float32),
        ):  # its force head differentiates through edge vectors in any mode
            out = model(data)
        energy = out[KEY.PRED_TOTAL_ENERGY].reshape(-1)
        if not forces:
            return (energy if model.training else energy.detach()), None
        return energy, out[KEY.PRED_FORCE]
