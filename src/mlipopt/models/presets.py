"""Named NequIP/Allegro architectures: seed 001 table 3 sizes and tiny CPU test models.

Seed 001 table 3 trains the per-type energy shifts; here that is ``model.energy_shifts: trainable``
(the default, ``refit``, fits them in closed form instead: :mod:`mlipopt.models.energy_shifts`).
"""

from __future__ import annotations

from typing import Any

import torch

#: NequIP on water (seed 001 table 3b) and Allegro on CDP (table 3a), plus tiny CPU variants.
PRESETS: dict[str, dict[str, Any]] = {
    "nequip-seed001": dict(
        family="nequip",
        r_max=4.5,
        num_layers=4,
        l_max=2,
        parity=True,
        num_features=32,
        num_bessels=8,
        bessel_trainable=False,
        polynomial_cutoff_p=6,
        radial_mlp_depth=3,
        radial_mlp_width=64,
        per_type_energy_scales_trainable=True,
    ),
    "allegro-seed001": dict(
        family="allegro",
        r_max=7.0,
        num_layers=2,
        l_max=2,
        parity=True,
        num_scalar_features=32,
        num_tensor_features=32,
        radial_chemical_embed={
            "_target_": "allegro.nn.TwoBodyBesselScalarEmbed",
            "num_bessels": 8,
            "bessel_trainable": False,
        },
        radial_chemical_embed_dim=32,
        scalar_embed_mlp_hidden_layers_depth=2,
        scalar_embed_mlp_hidden_layers_width=128,
        allegro_mlp_hidden_layers_depth=2,
        allegro_mlp_hidden_layers_width=128,
        tp_path_channel_coupling=False,
        readout_mlp_hidden_layers_depth=1,
        readout_mlp_hidden_layers_width=32,
        readout_mlp_nonlinearity=None,
        per_type_energy_scales_trainable=True,
    ),
    "nequip-tiny": dict(
        family="nequip",
        r_max=4.0,
        num_layers=2,
        l_max=1,
        num_features=8,
        radial_mlp_depth=2,
        radial_mlp_width=16,
    ),
    "nequip-small": dict(
        family="nequip",
        r_max=4.5,
        num_layers=3,
        l_max=1,
        parity=True,
        num_features=16,
        num_bessels=8,
        radial_mlp_depth=2,
        radial_mlp_width=32,
    ),
    "allegro-small": dict(
        family="allegro",
        r_max=5.0,
        num_layers=2,
        l_max=1,
        num_scalar_features=16,
        num_tensor_features=8,
        radial_chemical_embed={"_target_": "allegro.nn.TwoBodyBesselScalarEmbed", "num_bessels": 8},
        allegro_mlp_hidden_layers_depth=1,
        allegro_mlp_hidden_layers_width=32,
    ),
    # the pretrained foundation model shipped in the sevenn wheel (842,623 parameters, 5 layers, l_max 2)
    "sevennet-0": dict(family="sevennet", r_max=5.0, checkpoint="7net-0"),
    "allegro-tiny": dict(
        family="allegro",
        r_max=4.0,
        num_layers=2,
        l_max=1,
        num_scalar_features=8,
        num_tensor_features=4,
        radial_chemical_embed={"_target_": "allegro.nn.TwoBodyBesselScalarEmbed", "num_bessels": 8},
        allegro_mlp_hidden_layers_depth=1,
        allegro_mlp_hidden_layers_width=16,
    ),
}


def build_model(
    preset: str,
    type_names: list[str] | tuple[str, ...] = ("H", "C", "N", "O"),
    model_dtype: str = "float32",
    seed: int = 0,
    avg_num_neighbors: float = 20.0,
    **overrides: Any,
) -> torch.nn.Module:
    """Build a NequIP or Allegro model from a preset name; ``overrides`` replace preset keys.

    Per-type energy shifts and scales default to 0 and 1; the trainer passes reference energies and
    the force RMS of the training set through ``overrides`` (``per_type_energy_shifts`` / ``_scales``).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    if PRESETS[preset]["family"] == "sevennet":
        return load_sevennet(PRESETS[preset]["checkpoint"])
    try:
        from nequip.utils.global_state import set_global_state
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("building NequIP/Allegro models needs `pip install mlipopt[nequip]`") from exc
    set_global_state()
    config = {**PRESETS[preset], **overrides}
    family = config.pop("family")
    type_names = list(type_names)
    common = dict(
        seed=seed,
        model_dtype=model_dtype,
        type_names=type_names,
        avg_num_neighbors=avg_num_neighbors,
        per_type_energy_shifts=dict.fromkeys(type_names, 0.0),
        per_type_energy_scales=dict.fromkeys(type_names, 1.0),
    )
    kwargs = {**common, **config}
    if family == "nequip":
        from nequip.model import NequIPGNNModel

        return NequIPGNNModel(**kwargs)
    from allegro.model import AllegroModel

    return AllegroModel(**kwargs)


def model_options(preset: str) -> list[str]:
    """Keyword arguments the preset's nequip model builder documents (for "unknown key" messages)."""
    import re

    family = PRESETS[preset]["family"]
    if family == "sevennet":
        return []
    if family == "nequip":
        from nequip.model import NequIPGNNModel as builder
    else:
        from allegro.model import AllegroModel as builder
    return sorted(set(re.findall(r"^\s+(\w+) \(", builder.__doc__ or "", re.MULTILINE)))


def load_sevennet(checkpoint: str = "7net-0") -> torch.nn.Module:
    """A pretrained SevenNet model from the checkpoints in the ``sevenn`` wheel (offline)."""
    try:
        import sevenn.util
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("fine-tuning SevenNet needs `pip install mlipopt[sevennet]`") from exc
    from .backends import default_dtype

    with default_dtype(torch.float32):  # the checkpoint is float32 whatever nequip set globally
        return sevenn.util.load_checkpoint(checkpoint).build_model()


def make_backend(preset: str, type_names: list[str], r_max: float):
    """The backend (graph construction, collation, forward pass) for a preset's model family."""
    from .backends import NequIPBackend, SevenNetBackend

    if PRESETS[preset]["family"] == "sevennet":
        return SevenNetBackend(r_max)
    return NequIPBackend(type_names, r_max)


def refit_sevennet_shifts(model: torch.nn.Module, e0_delta: dict[str, float]) -> None:
    """Add per-element energy offsets (eV/atom) to SevenNet's frozen per-species shifts.

    Fine-tuning data rarely share the pretraining data's energy reference (another functional, basis or
    code); the offsets are a least-squares fit of the new energies minus the pretrained predictions.
    """
    from ase.data import atomic_numbers

    shift = model.rescale_atomic_energy.shift
    with torch.no_grad():
        for element, delta in e0_delta.items():
            shift[model.type_map[atomic_numbers[element]]] += delta
