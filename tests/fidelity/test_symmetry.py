"""SO(3) quadrature, inference-time symmetrization, equivariance errors and loop work (issue 14)."""

import numpy as np
import pytest
import torch
from ase.build import molecule

from mlipopt.fidelity.symmetry import (
    SymmetrizedCalculator,
    equivariance_errors,
    loop_work,
    nve_energy_drift,
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
