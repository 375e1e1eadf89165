"""Why one optimizer beats another: the loss Hessian's spectrum and the preconditioned κ(PH)."""

from .analysis import analyse_run, write
from .hessian import FlatParameters, HessianOperator, trainer_loss_terms
from .lanczos import Density, Spectrum, analyse, extremal_eigenvalues, slq_density
from .preconditioners import Preconditioner, from_lbfgs_history, from_optimizer

__all__ = [
    "Density",
    "FlatParameters",
    "HessianOperator",
    "Preconditioner",
    "Spectrum",
    "analyse",
    "analyse_run",
    "extremal_eigenvalues",
    "from_lbfgs_history",
    "from_optimizer",
    "slq_density",
    "trainer_loss_terms",
    "write",
]
