"""Why one optimizer beats another: the loss Hessian's spectrum and the preconditioned κ(PH)."""

from .._lazy import lazy_exports

_EXPORTS = {
    "analyse_run": ".analysis",
    "write": ".analysis",
    "FlatParameters": ".hessian",
    "HessianOperator": ".hessian",
    "trainer_loss_terms": ".hessian",
    "Density": ".lanczos",
    "Spectrum": ".lanczos",
    "analyse": ".lanczos",
    "extremal_eigenvalues": ".lanczos",
    "slq_density": ".lanczos",
    "Preconditioner": ".preconditioners",
    "from_lbfgs_history": ".preconditioners",
    "from_optimizer": ".preconditioners",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
