"""Optimizers by name, so configs and studies can treat the optimizer as one more hyperparameter.

Matrix-aware optimizers get their param groups from :func:`mlipopt.structure.param_groups`; the
first-order baselines take all parameters in one group, as they would in a plain training script.
"""

from __future__ import annotations

from typing import Any

import torch

from ..structure import param_groups
from ..suggest import did_you_mean
from ._base import accepted_arguments, reject_unknown
from .muon import Muon
from .soap import SOAP, SOAPMuon

#: name → (needs structure-aware param groups, has train()/eval() modes)
OPTIMIZERS: dict[str, tuple[bool, bool]] = {
    "adamw": (False, False),
    "adam": (False, False),
    "radam": (False, False),
    "sgd": (False, False),
    "lamb": (False, False),
    "ranger": (False, False),
    "schedulefree_adamw": (False, True),
    "muon": (True, False),
    "soap": (True, False),
    "soap_muon": (True, False),
}


#: Learning-rate grids swept when a study gives an optimizer neither ``lr`` nor ``lr_order``
#: (docs/optimizers.md). They span Harari et al. table 4's optima for training from scratch (AdamW, Muon,
#: SOAP 5e-3…3e-2; SOAP-Muon 3e-4…1e-3) and Liu et al.'s fine-tuning rates (5e-4…5e-3; SGD 1e-3…1e-2),
#: with one point of room beyond each end; a study extends a grid when its best rate lies on an edge.
ADAM_FAMILY_GRID = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
DEFAULT_LR_GRIDS: dict[str, list[float]] = {
    "adamw": ADAM_FAMILY_GRID,
    "adam": ADAM_FAMILY_GRID,
    "radam": ADAM_FAMILY_GRID,
    "lamb": ADAM_FAMILY_GRID,
    "ranger": ADAM_FAMILY_GRID,
    "schedulefree_adamw": ADAM_FAMILY_GRID,
    "sgd": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
    "muon": ADAM_FAMILY_GRID,  # "match_rms_adamw" scaling: AdamW's rates carry over
    "soap": ADAM_FAMILY_GRID,
    "soap_muon": [1e-4, 3e-4, 1e-3, 3e-3],  # ~10× below the others (Harari et al. table 4)
}


#: Weight decays swept on the selected learning rate when a study leaves both an optimizer's rates and its
#: decays to the defaults (Harari et al. sweep {0, 1e-5, 1e-4, 1e-3}). Without a decay Adam and AdamW are
#: one optimizer (they differ only in how the decay is applied), so a default study compares them here.
DEFAULT_WEIGHT_DECAYS = [0.0, 1e-5, 1e-4, 1e-3]


def canonical_name(name: str) -> str:
    key = name.lower().replace("-", "_")
    aliases = {
        "soapmuon": "soap_muon",
        "schedulefree": "schedulefree_adamw",
        "sf_adamw": "schedulefree_adamw",
    }
    key = aliases.get(key, key)
    if key not in OPTIMIZERS:
        hint = did_you_mean(key, [*OPTIMIZERS, *aliases])
        raise ValueError(f"unknown optimizer {name!r}{hint} (choose one of {', '.join(OPTIMIZERS)})")
    return key


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
    "adam": {"lr": 1e-3}}``) for muon/soap/soap_muon; ``kwargs`` go to the optimizer constructor.
    """
    key = canonical_name(name)
    cls = optimizer_class(key)
    reject_unknown(cls, {k: v for k, v in kwargs.items() if k not in accepted_arguments(cls)})
    if OPTIMIZERS[key][0]:
        groups = param_groups(model, **{"tp_blocks": "flatten", **(structure or {})})
        return cls(groups, lr=lr, weight_decay=weight_decay, **kwargs)
    if structure:
        raise ValueError(f"optimizer {name!r} takes no structure options (got {sorted(structure)})")
    params = [p for p in model.parameters() if p.requires_grad]
    if key == "sgd":
        kwargs = {"momentum": 0.9, **kwargs}
    return cls(params, lr=lr, weight_decay=weight_decay, **kwargs)


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The class behind optimizer ``name``: torch.optim (Adam, AdamW, RAdam, SGD), pytorch-optimizer's
    maintained LAMB (You et al. 2020, layer-wise trust ratio) and Ranger (RAdam + Lookahead +
    gradient centralisation), schedulefree's AdamW, and mlipopt's Muon, SOAP and SOAP-Muon."""
    key = canonical_name(name)
    if key in ("muon", "soap", "soap_muon"):
        return {"muon": Muon, "soap": SOAP, "soap_muon": SOAPMuon}[key]
    if key in ("lamb", "ranger"):
        import pytorch_optimizer

        return pytorch_optimizer.Lamb if key == "lamb" else pytorch_optimizer.Ranger
    if key == "schedulefree_adamw":
        import schedulefree

        return schedulefree.AdamWScheduleFree
    return {
        "adamw": torch.optim.AdamW,
        "adam": torch.optim.Adam,
        "radam": torch.optim.RAdam,
        "sgd": torch.optim.SGD,
    }[key]
