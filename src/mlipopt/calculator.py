"""An ASE calculator for a trained mlipopt run: ``calc = mlipopt.calculator.load("runs/ethanol")``.

The model is rebuilt by its family from the run's resolved ``config.yaml`` and its weights loaded from
``best_model.pt`` (or the last ``checkpoint.pt``, or ``refined_model.pt``); the calculator is the
family's own (nequip's ``NequIPCalculator`` with the training's type mapping and neighbour list;
sevenn's ``SevenNetCalculator``), so energies, forces and (for periodic cells) stress follow each
package's conventions exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .models import family
from .train.checkpoint import load_torch
from .train.config import RunConfig, load_config

WEIGHT_FILES = {"best": "best_model.pt", "last": "checkpoint.pt", "refined": "refined_model.pt"}


def load_model(run_dir: str | Path, weights: str = "best") -> tuple[torch.nn.Module, RunConfig]:
    """The trained model of ``run_dir`` in eval mode and its (resolved) config.

    ``weights``: "best" (validation), "last" (checkpoint) or "refined" (after ``mlipopt refine``).
    """
    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.yaml — is this an mlipopt run directory?")
    config = load_config(config_file)
    if weights not in WEIGHT_FILES:
        raise ValueError(f"weights must be 'best', 'last' or 'refined', got {weights!r}")
    source = run_dir / WEIGHT_FILES[weights]
    if not source.is_file():
        hint = (
            f"run `mlipopt refine {run_dir}` first"
            if weights == "refined"
            else "has the run finished an epoch?"
        )
        raise FileNotFoundError(f"{run_dir}: no {source.name}; {hint}")
    model = family(config.model).rebuild(config.model, config.seed)
    model.load_state_dict(load_torch(source)["model"])
    return model.eval(), config


def load(run_dir: str | Path, device: str | torch.device = "cpu", weights: str = "best") -> Any:
    """An ASE ``Calculator`` for the model trained in ``run_dir`` (the family's own calculator)."""
    model, config = load_model(run_dir, weights)
    m = config.model
    return family(m).calculator(model, m.type_names, m.r_max, device)
