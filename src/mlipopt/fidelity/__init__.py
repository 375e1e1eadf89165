"""Physical fidelity: MD stability, structure, transport, phonons and elastic constants of trained models."""

from .md import BlowUp, BondLength, MDResult, RDFDrift, run_md
from .protocols import PROTOCOLS, FidelityResult, FidelitySettings, evaluate, evaluate_runs

__all__ = [
    "PROTOCOLS",
    "BlowUp",
    "BondLength",
    "FidelityResult",
    "FidelitySettings",
    "MDResult",
    "RDFDrift",
    "evaluate",
    "evaluate_runs",
    "run_md",
]
