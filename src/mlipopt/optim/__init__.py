"""Optimizers: structure-aware Muon, SOAP and SOAP-Muon (plus their reference oracles), and the registry
of every optimizer mlipopt builds by name.

Exports are lazy (PEP 562): ``from mlipopt.optim.registry import OPTIMIZERS`` or
``from mlipopt.optim import canonical_name`` does not import torch, so the CLI and the study presets can
name optimizers without loading it.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "NonFiniteGradientError": "._base",
    "newton_schulz": "._linalg",
    "build_optimizer": ".factory",
    "has_train_eval_modes": ".factory",
    "optimizer_class": ".factory",
    "BASELINE": ".registry",
    "DEFAULT_WEIGHT_DECAYS": ".registry",
    "OPTIMIZERS": ".registry",
    "OptimizerSpec": ".registry",
    "canonical_name": ".registry",
    "optimizer_spec": ".registry",
    "Muon": ".muon",
    "muon_scale": ".muon",
    "SOAP": ".soap",
    "SOAPMuon": ".soap",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
