"""Model adapters: NequIP and Allegro built through the nequip packages (extra ``mlipopt[nequip]``)."""

from .presets import PRESETS, build_model

__all__ = ["PRESETS", "build_model"]
