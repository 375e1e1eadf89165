"""Physical fidelity: MD stability, structure, transport, phonons and elastic constants of trained models."""

from ..md import BlowUp, MDResult, run_md
from .md import BondLength, RDFDrift
from .protocols import PROTOCOLS, FidelityResult, FidelitySettings, evaluate
from .references import evaluate_runs

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
