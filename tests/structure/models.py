"""Tiny real NequIP and Allegro models built through the nequip packages."""

from __future__ import annotations

import pytest

TYPES = ["H", "C", "O"]


def _common():
    pytest.importorskip("nequip")
    from nequip.utils.global_state import set_global_state

    set_global_state()
    return dict(
        seed=1,
        model_dtype="float64",
        type_names=TYPES,
        r_max=4.0,
        avg_num_neighbors=5.0,
        per_type_energy_shifts=dict.fromkeys(TYPES, 0.0),
        per_type_energy_scales=dict.fromkeys(TYPES, 1.0),
    )


def tiny_nequip(l_max: int = 1, num_features: int = 8):
    from nequip.model import NequIPGNNModel

    return NequIPGNNModel(
        l_max=l_max,
        num_layers=2,
        num_features=num_features,
        radial_mlp_depth=2,
        radial_mlp_width=16,
        **_common(),
    )


def tiny_allegro():
    pytest.importorskip("allegro")
    common = _common()
    from allegro.model import AllegroModel

    return AllegroModel(
        l_max=1,
        num_layers=2,
        num_scalar_features=8,
        num_tensor_features=4,
        radial_chemical_embed={"_target_": "allegro.nn.TwoBodyBesselScalarEmbed", "num_bessels": 8},
        allegro_mlp_hidden_layers_depth=1,
        allegro_mlp_hidden_layers_width=16,
        **common,
    )


def water_batch(model_r_max: float = 4.0):
    """A small periodic-free molecule batch as a nequip AtomicDataDict with neighbour list."""
    import torch
    from ase.build import molecule
    from nequip.data import AtomicDataDict, from_ase
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform

    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=3)
    data = from_ase(atoms)
    data = ChemicalSpeciesToAtomTypeMapper(model_type_names=TYPES)(data)
    data = NeighborListTransform(r_max=model_r_max)(data)
    data = AtomicDataDict.with_batch_(data)
    return {k: (v.double() if torch.is_floating_point(v) else v) for k, v in data.items()}
