"""The numbers of docs/architectures.md on inference-time symmetrization, loop work and NVE drift, for an
untrained ``cartesian-tiny`` (float64, seed 0) on ethanol. About 30 s on one core.

    python benchmarks/symmetrization.py
"""

from __future__ import annotations

import torch
from ase.build import molecule

from mlipopt.fidelity.symmetry import SymmetrizedCalculator, equivariance_errors, loop_work, nve_energy_drift
from mlipopt.models import build_model
from mlipopt.models.cartesian import CartesianBackend, CartesianCalculator

TYPES = ["H", "C", "O"]


def calculator(direct: bool) -> CartesianCalculator:
    torch.manual_seed(0)
    model = build_model("cartesian-tiny", type_names=TYPES, model_dtype="float64", direct_forces=direct)
    return CartesianCalculator(model, CartesianBackend(TYPES, 4.0, torch.float64))


def main() -> None:
    torch.set_num_threads(1)
    atoms = molecule("CH3CH2OH")
    raw = calculator(False)
    print("| calculator | energy spread [meV/atom] | force error [meV/Å] |")
    print("|---|---|---|")
    errors = equivariance_errors(raw, atoms, rotations=16)
    print(f"| raw | {errors['energy_std']:.2g} | {errors['force_error']:.2g} |")
    for order in (2, 4, 8):
        errors = equivariance_errors(SymmetrizedCalculator(raw, order), atoms, rotations=4)
        print(f"| symmetrized, order {order} | {errors['energy_std']:.2g} | {errors['force_error']:.2g} |")
    print()
    for direct in (False, True):
        head = "direct force head" if direct else "conservative (−∇E)"
        calc = calculator(direct)
        work = loop_work(calc, atoms, index=2)
        excursions = [nve_energy_drift(calc, atoms, dt, int(25 / dt))["max_deviation_meV_per_atom"]
                      for dt in (0.5, 0.25)]  # fmt: skip
        print(f"{head}: loop work {work:.2g} eV; NVE excursion Δt = 0.5 fs / Δt = 0.25 fs: "
              f"{excursions[0] / excursions[1]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
