import numpy as np
import pytest
from ase import units
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet

from mlipopt.calculator import load, load_model
from mlipopt.train import train

from .train.helpers import tiny_config


@pytest.fixture(scope="module")
def copper_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("copper")
    config = tiny_config(
        run,
        data={"generate": {"system": "copper", "n_frames": 10}, "split": [6, 2, 2], "batch_size": 2},
        model={"dtype": "float64"},
        training={"max_epochs": 2},
    )
    train(config, log=lambda _: None)
    return run


def test_forces_and_stress_are_energy_derivatives(copper_run):
    from mlipopt.data import generate_frames

    atoms = generate_frames("copper", 1, seed=11).atoms[0]
    atoms.calc = load(copper_run)
    forces, stress = atoms.get_forces(), atoms.get_stress()
    assert forces.shape == (32, 3) and stress.shape == (6,)
    h = 1e-4
    for i, k in ((0, 0), (5, 2)):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, k] += h
        minus.positions[i, k] -= h
        plus.calc = minus.calc = atoms.calc
        numeric = -(plus.get_potential_energy() - minus.get_potential_energy()) / (2 * h)
        assert forces[i, k] == pytest.approx(numeric, rel=1e-5, abs=1e-7)
    # σ_xx = (1/V) ∂E/∂ε_xx
    plus, minus = atoms.copy(), atoms.copy()
    for a, sign in ((plus, 1), (minus, -1)):
        strain = np.eye(3)
        strain[0, 0] += sign * h
        a.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
        a.calc = atoms.calc
    numeric = (plus.get_potential_energy() - minus.get_potential_energy()) / (2 * h) / atoms.get_volume()
    assert stress[0] == pytest.approx(numeric, rel=1e-4, abs=1e-7)


def test_nve_energy_drift_is_bounded(copper_run):
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    atoms.calc = load(copper_run)
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    total = []
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    dyn.attach(lambda: total.append(atoms.get_total_energy()), interval=1)
    dyn.run(20)
    drift = (max(total) - min(total)) / len(atoms)
    assert np.isfinite(total).all()
    assert drift < 1e-3, drift


def test_load_errors(tmp_path, copper_run):
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        load(tmp_path)
    with pytest.raises(ValueError, match="'best', 'last' or 'refined'"):
        load_model(copper_run, weights="final")
    model, config = load_model(copper_run, weights="last")
    assert config.model.type_names == ["Cu"] and not model.training


def test_a_molecule_has_no_stress_and_missing_refined_weights_point_to_refine(tmp_path):
    from ase.build import molecule
    from ase.calculators.calculator import PropertyNotImplementedError

    train(tiny_config(tmp_path, training={"max_epochs": 1}), log=lambda _: None)
    atoms = molecule("CH3CH2OH")
    atoms.calc = load(tmp_path)
    assert np.isfinite(atoms.get_potential_energy()) and np.isfinite(atoms.get_forces()).all()
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()  # not a NaN array: a molecule has no stress
    with pytest.raises(FileNotFoundError, match="mlipopt refine"):
        load(tmp_path, weights="refined")
