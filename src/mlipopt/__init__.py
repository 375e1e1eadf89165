"""mlipopt: the optimizer as a first-class, measured design axis of MLIP training."""

__version__ = "0.1.0"
