"""A tiny study on generated EMT data: seconds per run."""

from __future__ import annotations

from typing import Any

TINY_STUDY: dict[str, Any] = {
    "name": "tiny",
    "base": {
        "data": {"generate": {"system": "ethanol", "n_frames": 14}, "split": [8, 3, 3], "batch_size": 4},
        "model": {"preset": "nequip-tiny"},
        "training": {"max_epochs": 2},
    },
    "optimizers": {"adamw": {"lr": [1e-3, 5e-3]}, "soap": {"lr": [5e-3]}},
    "force_fractions": [1.0, 0.0],
    "seeds": [1, 2],
    "loss_ratios": [[1.0, 1.0], [1.0, 10.0]],
    "sweep_epochs": 1,
    "sweep_extensions": 0,
    "step_cost": {"repeats": 2, "warmup": 1},
    "executor": {"workers": 1},
}


def tiny_study(tmp_path, **changes: Any) -> dict[str, Any]:
    import copy

    raw = copy.deepcopy(TINY_STUDY)
    raw["study_dir"] = str(tmp_path / "study")
    raw.update(changes)
    return raw
