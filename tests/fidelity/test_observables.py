"""Observables against known answers."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.eos import EquationOfState
from ase.units import GPa

from mlipopt.fidelity.observables import (
    BOLTZMANN_EV,
    arrhenius_fit,
    bulk_modulus_from_elastic,
    diffusion_coefficient,
    distance_distribution,
    elastic_constants,
    energy_drift,
    integrated_absolute_difference,
    mean_squared_displacement,
    phonon_frequencies,
    rdf,
)


def test_ideal_gas_rdf_tends_to_one():
    rng = np.random.default_rng(0)
    frames = [
        Atoms("Ar500", positions=rng.uniform(0, 20, (500, 3)), cell=[20] * 3, pbc=True) for _ in range(10)
    ]
    r, g = rdf(frames, rmax=8.0, nbins=40)
    assert np.mean(np.abs(g[10:] - 1)) < 0.05
    assert integrated_absolute_difference(r, g, np.ones_like(g)) < 0.6


def test_distance_distribution_is_normalised():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.pbc = False
    r, p = distance_distribution([atoms], rmax=12.0, nbins=120)
    assert np.trapezoid(p, r) == pytest.approx(1.0, rel=0.02)
    assert r[np.argmax(p > 0)] == pytest.approx(3.6 / np.sqrt(2), abs=0.1)  # nearest neighbour


def test_random_walk_msd_gives_the_planted_diffusion_coefficient():
    rng = np.random.default_rng(1)
    D, dt, steps = 0.5, 0.01, 4000  # Å²/ps, ps
    jumps = rng.normal(scale=np.sqrt(2 * D * dt), size=(steps, 200, 3))
    positions = np.cumsum(jumps, axis=0)
    msd = mean_squared_displacement(positions, max_lag=400, step=5)
    lags = dt * np.arange(len(msd))
    fit = diffusion_coefficient(lags, msd)
    assert fit.D == pytest.approx(D, rel=0.05)
    assert fit.loglog_slope == pytest.approx(1.0, abs=0.05)
    assert fit.D_err < 0.05 * D


def test_arrhenius_recovers_the_planted_activation_energy():
    rng = np.random.default_rng(2)
    T = np.array([300.0, 400.0, 500.0, 600.0, 800.0])
    Ea, D0 = 0.25, 10.0
    D = D0 * np.exp(-Ea / (BOLTZMANN_EV * T)) * (1 + 0.02 * rng.normal(size=T.size))
    fit = arrhenius_fit(T, D, D_err=0.02 * D)
    assert fit.Ea == pytest.approx(Ea, abs=3 * fit.Ea_err + 1e-3)
    assert fit.Ea_err < 0.02
    exact = arrhenius_fit(T, D0 * np.exp(-Ea / (BOLTZMANN_EV * T)))
    assert exact.Ea == pytest.approx(Ea, rel=1e-9) and exact.D0 == pytest.approx(D0, rel=1e-9)


def test_energy_drift_units():
    t = np.linspace(0, 2, 50)  # ps
    assert energy_drift(t, 10 * (1.0 + 0.003 * t), n_atoms=10) == pytest.approx(3.0)  # meV/atom/ps


def test_emt_copper_elastic_constants_agree_with_the_equation_of_state():
    atoms = bulk("Cu", "fcc", a=3.59, cubic=True)  # near EMT's equilibrium
    atoms.calc = EMT()
    C = elastic_constants(atoms)
    assert C[0, 0] > C[0, 1] > 0 and C[3, 3] > 0  # cubic stability
    assert np.allclose(C, C.T, atol=1.0)
    volumes, energies = [], []
    for x in np.linspace(0.98, 1.02, 7):
        a = atoms.copy()
        a.calc = EMT()
        a.set_cell(atoms.cell * x, scale_atoms=True)
        volumes.append(a.get_volume())
        energies.append(a.get_potential_energy())
    eos = EquationOfState(volumes, energies)
    _, _, B = eos.fit()
    assert bulk_modulus_from_elastic(C) == pytest.approx(B / GPa, rel=0.05)


def test_phonons_of_emt_copper():
    atoms = bulk("Cu", "fcc", a=3.59)
    atoms.calc = EMT()
    freqs = phonon_frequencies(atoms, supercell=3)
    assert np.abs(freqs[0]).max() < 0.05  # acoustic modes vanish at Γ
    assert 5.0 < freqs[1].max() < 9.0  # X point, THz (experiment: 7.25 THz)
