"""One interface per model family: everything the rest of mlipopt knows about a kind of model.

A *family* (NequIP and Allegro through the nequip packages, the pretrained SevenNet-0, MACE, and the
unconstrained Cartesian message-passing model of :mod:`mlipopt.models.cartesian`) builds its
models from a config and statistics of the training data, loads saved weights, turns structures into
model inputs (its :class:`Backend`), holds the per-type energy shifts, and makes an ASE calculator.
Training, refinement, spectra, fidelity and the command line ask the family and nothing else, so adding a
family is one class registered here plus preset entries (:mod:`mlipopt.models.presets`).

Families are imported on first use: importing mlipopt imports no model package, so an environment with
only one family's packages (MACE pins e3nn 0.4.4, nequip needs e3nn ≥ 0.6) works.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Protocol

import ase
import torch

from .presets import PRESETS


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Set torch's default dtype for a block: MACE and SevenNet build buffers and graphs in it, and nequip
    sets float64 globally."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


class Backend(Protocol):
    """How a family turns structures into model inputs and predicts (energy per frame, forces)."""

    name: str
    r_max: float

    def graph(self, atoms: ase.Atoms) -> Any: ...

    def collate(self, graphs: list[Any]) -> Any: ...

    def to(self, data: Any, device: torch.device) -> Any: ...

    def num_edges(self, graph: Any) -> int: ...

    def predict(
        self, model: torch.nn.Module, data: Any, forces: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


class GeometricBackend:
    """Shared part of backends whose batches are torch_geometric-style data (MACE, SevenNet)."""

    def to(self, data: Any, device: torch.device) -> Any:
        return data.to(device)

    def num_edges(self, graph: Any) -> int:
        return int(graph["edge_index"].shape[1])


@dataclass(frozen=True)
class DataStats:
    """What a family may use from the training data to build a model from scratch."""

    type_names: list[str]
    r_max: float
    avg_num_neighbors: float
    e0: dict[str, float]  # per-element reference energies (eV): the initial energy shifts
    energy_scale: float  # per-type energy scale: force RMS of the labelled frames (eV/Å)


class ModelFamily:
    """Base class of the families; subclasses override what differs.

    Methods take the run's model config (``mlipopt.train.config.ModelConfig``: ``preset``, ``dtype``,
    ``options``, ``file``, resolved ``type_names``/``r_max``/``avg_num_neighbors``).
    """

    name = "?"

    def starts_pretrained(self, model: Any) -> bool:
        """True when training starts from a trained model (fine-tuning) rather than random weights."""
        return False

    def defaults(self, model: Any) -> tuple[list[str] | None, float]:
        """Element types (None: those of the data) and cutoff when the config leaves them open."""
        return None, float(PRESETS[model.preset]["r_max"])

    def backend(self, model: Any, type_names: Sequence[str], r_max: float) -> Backend:
        raise NotImplementedError

    def build(self, model: Any, stats: DataStats | None, seed: int) -> torch.nn.Module:
        """The model to train: from scratch with ``stats`` of the training data, or the trained model
        it starts from (``stats`` is then None)."""
        raise NotImplementedError

    def rebuild(self, model: Any, seed: int) -> torch.nn.Module:
        """The architecture of a saved run from its resolved model config, to load weights into."""
        raise NotImplementedError

    def options(self, model: Any) -> list[str]:
        """Keyword arguments ``model.options`` may set (for "unknown key" messages)."""
        return []

    # per-type energy shifts (mlipopt.models.energy_shifts)
    def add_energy_shifts(self, model: torch.nn.Module, delta: dict[str, float]) -> None:
        raise NotImplementedError

    def energy_shifts(self, model: torch.nn.Module) -> dict[str, float]:
        raise NotImplementedError

    def release_shifts(self, model: torch.nn.Module) -> None:
        """Make the shifts trainable where the family keeps them frozen (``energy_shifts: trainable``)."""

    def calculator(self, model: torch.nn.Module, type_names: Sequence[str], r_max: float, device: Any) -> Any:
        """An ASE calculator for a trained model."""
        raise NotImplementedError


#: family name → "module:Class", imported on first use
REGISTRY: dict[str, str] = {
    "nequip": "mlipopt.models.nequip:NequIPFamily",
    "allegro": "mlipopt.models.nequip:NequIPFamily",
    "sevennet": "mlipopt.models.sevennet:SevenNetFamily",
    "mace": "mlipopt.models.mace:MACEFamily",
    "cartesian": "mlipopt.models.cartesian:CartesianFamily",
}
_LOADED: dict[str, ModelFamily] = {}


class FamilyUnavailable(ImportError):
    """A model family's packages are not installed in this environment (a one-line user error)."""


def install_advice(key: str) -> str:
    """How to get family ``key``: MACE in an environment of its own (mace-torch pins e3nn 0.4.4, nequip
    needs e3nn >= 0.6), every other family as an extra of this one."""
    if key == "mace":
        return (
            "MACE lives in an environment of its own (mace-torch pins e3nn 0.4.4; nequip needs >= 0.6): "
            "python -m venv .venv-mace && .venv-mace/bin/pip install torch==2.13.0 -e '.[mace,study]' "
            "in the mlipopt checkout, then run .venv-mace/bin/mlipopt, or give the study's model entry "
            "`python: .venv-mace/bin/python` (examples/architectures_3bpa_mace.yaml)"
        )
    extra = {"allegro": "nequip", "sevennet": "nequip,sevennet"}.get(key, key)
    return f"pip install torch==2.13.0 -e '.[{extra}]' in the mlipopt checkout"


def family(name: str | Any) -> ModelFamily:
    """The family registered as ``name``, of preset ``name``, or of a model config (its ``family``
    when it names a model file, else its preset's)."""
    if not isinstance(name, str):
        name = name.family or name.preset
    key = PRESETS[name]["family"] if name in PRESETS else name
    if key not in REGISTRY:
        raise ValueError(f"unknown model family {name!r}; families: {', '.join(sorted(REGISTRY))}")
    if key not in _LOADED:
        module, cls = REGISTRY[key].split(":")
        try:
            _LOADED[key] = getattr(importlib.import_module(module), cls)()
        except ImportError as exc:
            raise FamilyUnavailable(
                f"the {key} family's packages are not installed here ({exc}); {install_advice(key)}"
            ) from exc
    return _LOADED[key]


def build_model(
    preset: str,
    type_names: Sequence[str] = ("H", "C", "N", "O"),
    model_dtype: str = "float32",
    seed: int = 0,
    avg_num_neighbors: float = 20.0,
    **overrides: Any,
) -> torch.nn.Module:
    """A model of ``preset`` outside training (inspection, benchmarks), with ``overrides`` of preset keys:
    from scratch with energy shifts 0 and scales 1, or the shipped pretrained model — built by the
    preset's family exactly as a saved run's architecture is rebuilt."""
    config = model_namespace(preset, type_names, model_dtype, avg_num_neighbors, **overrides)
    return family(preset).rebuild(config, seed)


def model_namespace(
    preset: str,
    type_names: Sequence[str],
    model_dtype: str = "float32",
    avg_num_neighbors: float = 20.0,
    **overrides: Any,
) -> SimpleNamespace:
    """A resolved model config (what a run's ``model`` section becomes) of ``preset`` outside training,
    for a family's ``rebuild`` and ``backend``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    return SimpleNamespace(
        preset=preset, family=None, file=None, dtype=model_dtype, type_names=list(type_names),
        r_max=float(overrides.pop("r_max", PRESETS[preset]["r_max"])),
        avg_num_neighbors=avg_num_neighbors, options=overrides,
    )  # fmt: skip
