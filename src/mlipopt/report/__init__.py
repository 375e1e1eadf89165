"""Reports: tables and figures of a study from its results database."""

from .._lazy import lazy_exports

_EXPORTS = {
    "mae_table": ".build",
    "make_report": ".build",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
