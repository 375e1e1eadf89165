"""Optimizers: structure-aware Muon, SOAP and SOAP-Muon (plus their reference oracles)."""

from ._base import NonFiniteGradientError
from ._linalg import newton_schulz
from .muon import Muon, muon_scale
from .soap import SOAP, SOAPMuon

__all__ = ["SOAP", "Muon", "NonFiniteGradientError", "SOAPMuon", "muon_scale", "newton_schulz"]
