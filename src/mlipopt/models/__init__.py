"""Model adapters: NequIP and Allegro through the nequip packages, the pretrained SevenNet-0 through
``sevenn``, and the backends that feed them."""

from .presets import PRESETS, build_model, load_sevennet, make_backend, refit_sevennet_shifts

__all__ = ["PRESETS", "build_model", "load_sevennet", "make_backend", "refit_sevennet_shifts"]
