"""Model families (NequIP/Allegro, the pretrained SevenNet-0) behind one interface
(:mod:`mlipopt.models.family`); each family's packages are imported on first use."""

from .family import Backend, DataStats, ModelFamily, family, is_pretrained
from .presets import PRESETS, build_model

__all__ = ["PRESETS", "Backend", "DataStats", "ModelFamily", "build_model", "family", "is_pretrained"]
