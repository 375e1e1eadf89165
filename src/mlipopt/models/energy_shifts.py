"""Per-type energy shifts: how a model holds the per-atom energy offset, the cause of energy drift.

A model predicts ``E = Σ_i (σ_{Z_i} · ε_i + μ_{Z_i})`` with a network output ε, per-type scales σ and
shifts μ. Forces do not see a constant added to the per-atom energies, and the per-atom energy term of
eq. 11 penalises it weakly: on 3BPA at 300 K the configurational energy spread is 6 meV/atom while
forces carry ~1 eV/Å, so an offset of 100 meV/atom costs 0.01 in the loss against ~0.5 for forces.
While the network's weights move to fit forces, the mean of σ·ε moves with them and nothing pulls it
back fast: the validation energy MAE grows (65 → 166 meV/atom in five epochs on 3BPA, s = 0.1) as a
*bias* common to every frame, and a selection metric with 10 × E-MAE then prefers epoch 1.

The energy is linear in the shifts, so their best values given the network are a least-squares fit,
exactly as the E0 references are fitted before training. Three ways to hold them (``model.energy_shifts``):

* ``refit`` (default): shifts are not trained; after every epoch they are refitted in closed form on the
  training split's residuals ``E − E_pred`` (one energy-only pass), so the offset cannot drift.
* ``fixed``: shifts stay at the E0 references (nequip's and MACE's default: non-trainable E0).
* ``trainable``: shifts are parameters trained by the optimizer with everything else (Harari et al. table 3).
"""

from __future__ import annotations

import torch

from .family import family

SHIFT_MODES = ("refit", "fixed", "trainable")


def add_energy_shifts(model: torch.nn.Module, family_name: str, delta: dict[str, float]) -> None:
    """Add ``delta`` (eV per atom of each element) to the model's per-type energy shifts."""
    family(family_name).add_energy_shifts(model, delta)


def energy_shifts(model: torch.nn.Module, family_name: str) -> dict[str, float]:
    """The model's current per-type energy shifts (eV per atom), by element."""
    return family(family_name).energy_shifts(model)
