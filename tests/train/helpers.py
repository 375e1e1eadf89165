"""Tiny, fast training configs on generated EMT data."""

from __future__ import annotations

import copy
from typing import Any

from mlipopt.train import load_config


def deep_update(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def tiny_config(run_dir, **sections: Any):
    base = {
        "seed": 3,
        "run_dir": str(run_dir),
        "data": {"generate": {"system": "ethanol", "n_frames": 20}, "batch_size": 4, "split": [12, 4, 4]},
        "model": {"preset": "nequip-tiny"},
        "optimizer": {"name": "adamw", "lr": 5e-3},
        "training": {"max_epochs": 3, "progress": False},
    }
    return load_config(deep_update(base, sections))
