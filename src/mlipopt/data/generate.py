"""Small datasets labelled on the fly by ASE's EMT potential: no download, seconds on a CPU.

EMT is a toy for molecules (it is an effective-medium model for metals) but it gives smooth, exactly
consistent energies and forces, which is what tests and the quick-start need. ``copper`` is periodic
and strained, so stress and cell handling get exercised.
"""

from __future__ import annotations

import numpy as np
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from .io import DataError, Frames

SYSTEMS = ("ethanol", "copper")


def generate_frames(
    system: str = "ethanol", n_frames: int = 64, rattle: float = 0.08, seed: int = 0
) -> Frames:
    """``n_frames`` randomly displaced structures of ``system`` with EMT energies and forces."""
    if system not in SYSTEMS:
        raise DataError(f"unknown generated system {system!r}; choose one of {', '.join(SYSTEMS)}")
    if n_frames < 1:
        raise ValueError(f"n_frames must be ≥ 1, got {n_frames}")
    rng = np.random.default_rng(seed)
    structures = []
    for _ in range(n_frames):
        if system == "ethanol":
            atoms = molecule("CH3CH2OH")
        else:
            atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
            strain = np.eye(3) + rng.normal(scale=0.01, size=(3, 3))
            atoms.set_cell(atoms.cell[:] @ (0.5 * (strain + strain.T)), scale_atoms=True)
        atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_forces()
        structures.append(atoms)
    return Frames.from_atoms(structures, source=f"<generated {system} EMT>")
