"""docs/optimizers.md states each optimizer's defaults and lr grids; checked against the code."""

import ast
from pathlib import Path

import pytest
import torch

from mlipopt.optim import build_optimizer
from mlipopt.optim.registry import OPTIMIZERS
from mlipopt.study.presets import STUDY_PRESETS

DOC = Path(__file__).resolve().parents[2] / "docs" / "optimizers.md"


def _table() -> dict[str, list[str]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0].strip("`")] = cells
    return rows


def test_every_optimizer_is_documented():
    assert set(_table()) == set(OPTIMIZERS)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_documented_defaults_are_the_ones_used(name):
    _, implementation, defaults, _, default_grid, finetune_lr = _table()[name]
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.SiLU(), torch.nn.Linear(6, 1))
    optimizer = build_optimizer(name, model, lr=1e-3)
    assert type(optimizer).__name__ == implementation.split("`")[1].rsplit(".", 1)[1]
    group = optimizer.param_groups[0]
    for item in defaults.strip("`").split("; "):
        key, value = item.split("=", 1)
        assert group[key] == ast.literal_eval(value), (name, key, group[key])
    assert list(OPTIMIZERS[name].lr_grid) == ast.literal_eval(default_grid.strip("`"))
    for preset in ("finetune-ethanol", "finetune-3bpa"):
        assert STUDY_PRESETS[preset]["optimizers"][name]["lr"] == ast.literal_eval(finetune_lr.strip("`"))
