"""Optimizers: structure-aware Muon, SOAP and SOAP-Muon (plus their reference oracles)."""

from ._base import NonFiniteGradientError
from ._linalg import newton_schulz
from .factory import (
    DEFAULT_LR_GRIDS,
    DEFAULT_WEIGHT_DECAYS,
    OPTIMIZERS,
    build_optimizer,
    canonical_name,
    has_train_eval_modes,
)
from .muon import Muon, muon_scale
from .soap import SOAP, SOAPMuon

__all__ = [
    "DEFAULT_LR_GRIDS",
    "DEFAULT_WEIGHT_DECAYS",
    "OPTIMIZERS",
    "SOAP",
    "Muon",
    "NonFiniteGradientError",
    "SOAPMuon",
    "build_optimizer",
    "canonical_name",
    "has_train_eval_modes",
    "muon_scale",
    "newton_schulz",
]
