"""SO(3) quadrature, inference-time symmetrization, equivariance errors and loop work (issue 14)."""

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.calculators.calculator import Calculator, all_changes

from mlipopt.fidelity.symmetry import (
    SymmetrizedCalculator,
    equivariance_errors,
    loop_work,
    nve_energy_drift,
    orientation_dependence,
    random_rotations,
    rotated,
    so3_quadrature,
)
from mlipopt.models import build_model
from mlipopt.models.cartesian import CartesianBackend, CartesianCalculator

TYPES = ["H", "C", "O"]


def _calculator(direct: bool = False) -> CartesianCalculator:
    torch.manual_seed(0)
    model = build_model("cartesian-tiny", type_names=TYPES, model_dtype="float64", direct_forces=direct)
    return CartesianCalculator(model, CartesianBackend(TYPES, 4.0, torch.float64))


@pytest.mark.parametrize("order", [1, 2, 3])
def test_quadrature_averages_low_degrees_exactly(order):
    rotations, weights = so3_quadrature(order)
    assert len(rotations) == (order + 1) ** 3 and weights.sum() == pytest.approx(1.0, abs=1e-14)
    assert np.allclose(np.einsum("kij,kil->kjl", rotations, rotations), np.eye(3), atol=1e-13)
    assert np.allclose(np.linalg.det(rotations), 1.0)
    assert np.abs(np.einsum("k,kij->ij", weights, rotations)).max() < 1e-14  # ∫ R dR = 0 (degree 1)
    second = np.einsum("k,kij,kab->ijab", weights, rotations, rotations)  # ∫ R⊗R dR = δδ/3 (degree ≤ 2)
    exact = np.einsum("ia,jb->ijab", np.eye(3), np.eye(3)) / 3
    assert (np.abs(second - exact).max() < 1e-14) == (order >= 2)


def test_random_rotations_are_proper_and_reproducible():
    a, b = random_rotations(50, seed=3), random_rotations(50, seed=3)
    assert np.array_equal(a, b) and np.allclose(np.linalg.det(a), 1.0)
    assert np.abs(a.mean(axis=0)).max() < 0.2  # Haar: no preferred orientation


def test_a_symmetrized_model_is_invariant_where_the_raw_one_is_not():
    atoms, raw = molecule("CH3CH2OH"), _calculator()
    energies = {}
    for name, calc in (("raw", raw), ("symmetrized", SymmetrizedCalculator(raw, 4))):
        values = []
        for rotation in random_rotations(5, seed=1):
            image = rotated(atoms, rotation)
            image.calc = calc
            values.append(image.get_potential_energy())
        energies[name] = np.ptp(values) / abs(np.mean(values))
    assert energies["raw"] > 1e-4
    assert energies["symmetrized"] < 1e-6
    errors = equivariance_errors(SymmetrizedCalculator(raw, 6), atoms, rotations=3)
    assert errors["force_error"] < 1e-3 < equivariance_errors(raw, atoms, rotations=3)["force_error"]


def test_loop_work_is_zero_for_conservative_forces_and_not_for_a_direct_head():
    atoms = molecule("CH3CH2OH")
    assert abs(loop_work(_calculator(), atoms, index=2)) < 1e-12
    assert abs(loop_work(_calculator(direct=True), atoms, index=2)) > 1e-8


def test_nve_drift_falls_as_dt_squared_for_conservative_forces_only():
    atoms = molecule("CH3CH2OH")
    deviation = {}
    for direct in (False, True):
        runs = [nve_energy_drift(_calculator(direct), atoms, dt, int(25 / dt)) for dt in (0.5, 0.25)]
        deviation[direct] = [r["max_deviation_meV_per_atom"] for r in runs]
    assert 3.0 < deviation[False][0] / deviation[False][1] < 5.0  # velocity Verlet: error ∝ Δt²
    assert 0.8 < deviation[True][0] / deviation[True][1] < 1.25  # the head's work does not vanish
    assert deviation[True][1] > 1e3 * deviation[False][1]


def test_the_symmetrized_stress_is_the_strain_derivative_of_the_symmetrized_energy():
    from ase.build import bulk
    from ase.calculators.fd import calculate_numerical_stress

    crystal = bulk("C", "diamond", a=3.57)
    crystal.rattle(0.05, seed=3)
    symmetrized = SymmetrizedCalculator(_calculator(), 1)
    crystal.calc = symmetrized
    stress = crystal.get_stress()
    numeric = calculate_numerical_stress(crystal, eps=1e-5)
    assert np.abs(stress).max() > 1e-4
    assert np.abs(stress - numeric).max() < 1e-7 * max(1.0, np.abs(stress).max())
    assert "stress" not in SymmetrizedCalculator(_calculator(direct=True), 1).implemented_properties


class _Anisotropic(Calculator):
    """EMT plus ½k Σ_i (z_i − z̄)²: translation invariant, not rotation invariant (it flattens in z)."""

    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        from ase.calculators.emt import EMT

        super().calculate(atoms, properties, system_changes)
        inner = self.atoms.copy()
        inner.calc = EMT()
        dz = self.atoms.positions[:, 2] - self.atoms.positions[:, 2].mean()
        forces = inner.get_forces()
        forces[:, 2] -= dz  # k = 1 eV/Å²; Σ dz = 0 keeps the mean term out of the gradient
        self.results = {"energy": inner.get_potential_energy() + 0.5 * float(dz @ dz), "forces": forces}


def test_rigid_modes_are_free_for_an_invariant_model_and_stiff_for_an_anisotropic_one():
    from ase.calculators.emt import EMT

    atoms = molecule("CH3CH2OH")
    invariant = orientation_dependence(EMT(), atoms, seed=1)
    assert invariant["converged"] == 1.0
    assert invariant["minimum_rmsd_A"] < 1e-4 and invariant["minimum_energy_meV_atom"] < 1e-4
    assert invariant["rigid_mode_cm1"] < 10.0 < invariant["lowest_vibration_cm1"]
    anisotropic = orientation_dependence(_Anisotropic(), atoms, seed=1)
    assert anisotropic["rigid_mode_cm1"] > 50.0  # rotations out of the xy plane are restored
    assert anisotropic["minimum_rmsd_A"] > 0.1  # turned, it relaxes to another minimum
