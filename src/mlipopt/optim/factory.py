"""Optimizers built by name, so configs and studies can treat the optimizer as one more hyperparameter.

What each name means lives in :mod:`mlipopt.optim.registry`; this module constructs one for a model.
Matrix-aware optimizers get their param groups from :func:`mlipopt.structure.param_groups`; the
first-order baselines take all parameters in one group, as they would in a plain training script.
"""

from __future__ import annotations

from typing import Any

import torch

from ..structure import param_groups
from ._base import accepted_arguments, reject_unknown
from .registry import optimizer_spec


def has_train_eval_modes(optimizer: torch.optim.Optimizer) -> bool:
    """True for ScheduleFree-style optimizers whose parameters differ between training and evaluation."""
    return callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))


def build_optimizer(
    name: str,
    model: torch.nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    structure: dict[str, Any] | None = None,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Construct optimizer ``name`` for ``model``.

    ``structure`` goes to :func:`mlipopt.structure.param_groups` (e.g. ``{"tp_blocks": "flatten",
    "adam": {"lr": 1e-3}}``) for the structured optimizers (muon, soap, soap_muon); ``kwargs`` go to the
    optimizer constructor, over the registry's defaults.
    """
    entry = optimizer_spec(name)
    cls = entry.load()
    reject_unknown(cls, {k: v for k, v in kwargs.items() if k not in accepted_arguments(cls)})
    kwargs = {**entry.defaults, **kwargs}
    if entry.structured:
        groups = param_groups(model, **{"tp_blocks": "flatten", **(structure or {})})
        return cls(groups, lr=lr, weight_decay=weight_decay, **kwargs)
    if structure:
        raise ValueError(f"optimizer {name!r} takes no structure options (got {sorted(structure)})")
    params = [p for p in model.parameters() if p.requires_grad]
    return cls(params, lr=lr, weight_decay=weight_decay, **kwargs)


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The class behind optimizer ``name`` (its registry entry's ``target``)."""
    return optimizer_spec(name).load()
