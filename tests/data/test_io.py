import numpy as np
import pytest
from ase.build import molecule

from mlipopt.data import DataError, Frames, GraphSet, generate_frames, read_frames
from mlipopt.models.nequip import NequIPBackend

ETHANOL_HEADER = 'Properties=species:S:1:pos:R:3:forces:R:3 {info} pbc="F F F"'


def write_xyz(path, frames, props="forces:R:3"):
    """Hand-written extxyz: frames are (info string, [(symbol, x, y, z, *extra)])."""
    lines = []
    for info, atoms in frames:
        lines += [str(len(atoms)), f'Properties=species:S:1:pos:R:3:{props} {info} pbc="F F F"']
        lines += [" ".join(str(v) for v in row) for row in atoms]
    path.write_text("\n".join(lines) + "\n")
    return path


WATER = [
    ("O", 0.0, 0.0, 0.0, 0.1, 0.2, 0.3),
    ("H", 0.96, 0.0, 0.0, -0.1, 0.0, 0.0),
    ("H", -0.2, 0.93, 0.0, 0, -0.2, -0.3),
]


def test_reads_shared_ethanol(shared_data):
    frames = read_frames(shared_data / "ethanol" / "train.xyz", index=":5")
    assert len(frames) == 5
    assert frames.elements() == ["H", "C", "O"]
    assert frames.energy[0] == pytest.approx(-4209.4657843064815)
    assert frames.forces[0].shape == (9, 3)
    assert frames.forces[0][0, 0] == pytest.approx(-4.15950961)


def test_custom_keys(tmp_path):
    path = write_xyz(tmp_path / "w.xyz", [("REF_energy=-14.5", WATER)], props="REF_forces:R:3")
    frames = read_frames(path, energy_key="REF_energy", forces_key="REF_forces")
    assert frames.energy[0] == -14.5
    np.testing.assert_allclose(frames.forces[0][0], [0.1, 0.2, 0.3])


def test_missing_energy_names_file_frame_and_key(tmp_path):
    path = write_xyz(tmp_path / "w.xyz", [("energy=-1.0", WATER), ("other=2.0", WATER)])
    with pytest.raises(DataError, match=r"w\.xyz: frame 1: no energy under key 'energy'.*other"):
        read_frames(path)


def test_missing_forces(tmp_path):
    path = tmp_path / "w.xyz"
    path.write_text('3\nProperties=species:S:1:pos:R:3 energy=-1.0 pbc="F F F"\nO 0 0 0\nH 1 0 0\nH 0 1 0\n')
    with pytest.raises(DataError, match=r"frame 0 has no forces under key 'forces'"):
        read_frames(path)
    assert read_frames(path, require_forces=False).forces == [None]


def test_wrong_force_shape(tmp_path):
    rows = [row[:5] for row in WATER]
    path = write_xyz(tmp_path / "w.xyz", [("energy=-1.0", rows)], props="forces:R:1")
    with pytest.raises(DataError, match=r"frame 0: forces have shape \(3,\), expected \(3, 3\)"):
        read_frames(path)


def test_nan_energy_and_forces(tmp_path):
    path = write_xyz(tmp_path / "e.xyz", [("energy=-1.0", WATER), ("energy=nan", WATER)])
    with pytest.raises(DataError, match=r"frame 1: energy is nan"):
        read_frames(path)
    bad = [WATER[0], ("H", 0.96, 0.0, 0.0, "nan", 0.0, 0.0), WATER[2]]
    path = write_xyz(tmp_path / "f.xyz", [("energy=-1.0", bad)])
    with pytest.raises(DataError, match=r"frame 0: forces contain NaN or inf \(atom 1\)"):
        read_frames(path)


def test_malformed_file_names_file_and_frame(tmp_path):
    path = write_xyz(tmp_path / "w.xyz", [("energy=-1.0", WATER)] * 2)
    text = path.read_text().splitlines()
    text[7] = "H 0.96 zero 0.0 -0.1 0.0 0.0"  # second frame, first H row
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"w\.xyz: cannot parse frame 1"):
        read_frames(path)


def test_absent_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_frames(tmp_path / "nope.xyz")
    (tmp_path / "empty.xyz").write_text("")
    with pytest.raises(DataError, match="empty.xyz"):
        read_frames(tmp_path / "empty.xyz")


def test_unknown_element_for_model():
    frames = generate_frames("ethanol", 2)
    with pytest.raises(
        DataError, match=r"frame 0: element\(s\) O not known to the model \(its types are H, C\)"
    ):
        GraphSet(frames, NequIPBackend(["H", "C"], 4.0), ["H", "C"])


def test_from_atoms_reads_calculator_labels():
    frames = generate_frames("copper", 2)
    assert frames.forces[0].shape == (32, 3)
    again = Frames.from_atoms(frames.atoms)
    np.testing.assert_array_equal(again.energy, frames.energy)
    with pytest.raises(DataError, match="no energy"):
        Frames.from_atoms([molecule("H2O")])
