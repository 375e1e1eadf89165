import numpy as np
import pytest
from ase import Atoms

from mlipopt.data import DataError, Frames, fit_energy_references, isolated_atom_energies, reference_energy


def test_isolated_atoms_file(shared_data):
    e0 = isolated_atom_energies(shared_data / "3BPA" / "iso_atoms.xyz")
    assert set(e0) == {"H", "C", "N", "O"}
    assert e0["H"] == pytest.approx(-13.587222780835477)


def test_isolated_atoms_rejects_molecules(tmp_path):
    (tmp_path / "iso.xyz").write_text(
        '2\nProperties=species:S:1:pos:R:3 energy=-1.0 pbc="F F F"\nH 0 0 0\nH 0 0 0.7\n'
    )
    with pytest.raises(DataError, match="frame 0 has 2 atoms"):
        isolated_atom_energies(tmp_path / "iso.xyz")


def test_least_squares_recovers_references():
    rng = np.random.default_rng(0)
    truth = {"H": -13.6, "C": -1029.5, "O": -2042.0}
    atoms, energies = [], []
    for _ in range(30):
        symbols = list(rng.choice(list(truth), size=rng.integers(2, 9)))
        atoms.append(Atoms(symbols, positions=rng.normal(size=(len(symbols), 3))))
        energies.append(sum(truth[s] for s in symbols))
    frames = Frames(atoms, np.array(energies), [None] * len(atoms))
    fitted = fit_energy_references(frames)
    for el, value in truth.items():
        assert fitted[el] == pytest.approx(value, abs=1e-8)
    np.testing.assert_allclose(reference_energy(frames, fitted), energies, atol=1e-8)
    with pytest.raises(DataError, match="no reference energy for element"):
        reference_energy(frames, {"H": 0.0})
