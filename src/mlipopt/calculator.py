"""An ASE calculator for a trained mlipopt run: ``calc = mlipopt.calculator.load("runs/ethanol")``.

The model is rebuilt from the run's resolved ``config.yaml`` and its weights loaded from
``best_model.pt`` (or the last ``checkpoint.pt``); evaluation goes through nequip's own
``NequIPCalculator`` with the same type mapping and neighbour-list transforms used in training, so
energies, forces and (for periodic cells) stress follow nequip's conventions exactly.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .train.checkpoint import load_torch
from .train.config import RunConfig, load_config


def load_model(run_dir: str | Path, weights: str = "best") -> tuple[torch.nn.Module, RunConfig]:
    """The trained model of ``run_dir`` in eval mode and its config.

    ``weights``: "best" (validation), "last" (checkpoint) or "refined" (after ``mlipopt refine``).
    """
    from .models import build_model

    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.yaml — is this an mlipopt run directory?")
    config = load_config(config_file)
    m = config.model
    files = {"best": "best_model.pt", "last": "checkpoint.pt", "refined": "refined_model.pt"}
    if weights not in files:
        raise ValueError(f"weights must be 'best', 'last' or 'refined', got {weights!r}")
    source = run_dir / files[weights]
    if not source.is_file():
        hint = (
            f"run `mlipopt refine {run_dir}` first"
            if weights == "refined"
            else "has the run finished an epoch?"
        )
        raise FileNotFoundError(f"{run_dir}: no {source.name}; {hint}")
    from .models import PRESETS

    if PRESETS[m.preset]["family"] == "sevennet":
        model = build_model(m.preset)
        model.load_state_dict(load_torch(source)["model"])
        return model.eval(), config
    model = build_model(
        m.preset,
        type_names=m.type_names,
        model_dtype=m.dtype,
        seed=config.seed,
        avg_num_neighbors=m.avg_num_neighbors,
        r_max=m.r_max,
        **m.options,
    )
    model.load_state_dict(load_torch(source)["model"])
    return model.eval(), config


def load(run_dir: str | Path, device: str | torch.device = "cpu", weights: str = "best"):
    """An ASE ``Calculator`` for the model trained in ``run_dir``: nequip's ``NequIPCalculator`` for
    NequIP/Allegro, sevenn's ``SevenNetCalculator`` for a fine-tuned SevenNet."""
    from ase.calculators.calculator import all_changes
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
    from nequip.integrations.ase import NequIPCalculator

    model, config = load_model(run_dir, weights)
    from .models import PRESETS

    if PRESETS[config.model.preset]["family"] == "sevennet":
        from sevenn.calculator import SevenNetCalculator

        return SevenNetCalculator(model, file_type="model_instance", device=device)
    transforms = [
        ChemicalSpeciesToAtomTypeMapper(model_type_names=config.model.type_names),
        NeighborListTransform(r_max=config.model.r_max),
    ]

    class Calculator(NequIPCalculator):
        """nequip's calculator without a stress for structures that are not periodic in all three
        directions (nequip returns NaN there); ``get_stress`` then raises ASE's
        ``PropertyNotImplementedError``, as for any calculator without the property."""

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, list(properties), system_changes)
            if not self.atoms.pbc.all():
                self.results.pop("stress", None)

    return Calculator(model, device=device, transforms=transforms)
