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
* ``trainable``: shifts are parameters trained by the optimizer with everything else (seed 001 table 3).
"""

from __future__ import annotations

import torch

SHIFT_MODES = ("refit", "fixed", "trainable")


def _nequip_shift_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """nequip's ``PerTypeScaleShift`` modules acting on per-atom energies (found by attributes)."""
    return [
        m
        for m in model.modules()
        if hasattr(m, "shifts")
        and hasattr(m, "type_names")
        and getattr(m, "out_field", "") == "atomic_energy"
    ]


def add_energy_shifts(model: torch.nn.Module, family: str, delta: dict[str, float]) -> None:
    """Add ``delta`` (eV per atom of each element) to the model's per-type energy shifts."""
    if family == "sevennet":
        from .presets import refit_sevennet_shifts

        refit_sevennet_shifts(model, delta)
        return
    modules = _nequip_shift_modules(model)
    if not modules or any(not m.has_shifts or m.shifts.numel() != len(m.type_names) for m in modules):
        raise ValueError("the model has no per-type energy shifts to refit")
    with torch.no_grad():
        for m in modules:
            for i, name in enumerate(m.type_names):
                m.shifts[i] += delta.get(name, 0.0)


def energy_shifts(model: torch.nn.Module, family: str) -> dict[str, float]:
    """The model's current per-type energy shifts (eV per atom), by element."""
    if family == "sevennet":
        from ase.data import chemical_symbols

        shift = model.rescale_atomic_energy.shift.detach()
        return {chemical_symbols[z]: float(shift[i]) for z, i in model.type_map.items()}
    (module, *_) = _nequip_shift_modules(model)
    return {name: float(module.shifts[i].detach()) for i, name in enumerate(module.type_names)}


def make_shifts_trainable(model: torch.nn.Module, family: str) -> None:
    """SevenNet keeps its shifts and scales as frozen parameters; ``trainable`` releases them."""
    if family == "sevennet":
        model.rescale_atomic_energy.shift.requires_grad_(True)
        model.rescale_atomic_energy.scale.requires_grad_(True)
