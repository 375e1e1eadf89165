"""Tiny real NequIP and Allegro models built through the nequip packages."""

from __future__ import annotations

import pytest

TYPES = ["H", "C", "O"]


def tiny_nequip(l_max: int = 1, num_features: int = 8):
    pytest.importorskip("nequip")
    from mlipopt.models import build_model

    return build_model(
        "nequip-tiny",
        type_names=TYPES,
        model_dtype="float64",
        seed=1,
        avg_num_neighbors=5.0,
        l_max=l_max,
        num_features=num_features,
    )


def tiny_allegro():
    pytest.importorskip("allegro")
    from mlipopt.models import build_model

    return build_model("allegro-tiny", type_names=TYPES, model_dtype="float64", seed=1, avg_num_neighbors=5.0)


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
