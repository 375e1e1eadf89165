"""Model families (NequIP/Allegro, the pretrained SevenNet-0, MACE) behind one interface
(:mod:`mlipopt.models.family`); each family's packages are imported on first use."""

from .family import Backend, DataStats, ModelFamily, build_model, family
from .presets import PRESETS

__all__ = ["PRESETS", "Backend", "DataStats", "ModelFamily", "build_model", "family"]
