"""Physical fidelity: MD stability, structure, transport, phonons and elastic constants of trained models."""

from .._lazy import lazy_exports

_EXPORTS = {
    "BlowUp": "..md",
    "MDResult": "..md",
    "run_md": "..md",
    "BondLength": ".md",
    "RDFDrift": ".md",
    "PROTOCOLS": ".settings",
    "FidelityResult": ".protocols",
    "FidelitySettings": ".settings",
    "evaluate": ".protocols",
    "evaluate_runs": ".references",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
