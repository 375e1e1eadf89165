"""Extra test sets: out-of-distribution paths and 'frames not in training' (seed 002 table 1)."""

import csv
import json

import ase.io
import numpy as np
import pytest

from mlipopt.data import generate_frames
from mlipopt.train import ConfigError, Trainer, train
from mlipopt.train.refine import refine

from .helpers import tiny_config


def _write(frames, path, coordinate=None, forces=True):
    images = []
    for i, (atoms, energy, f) in enumerate(zip(frames.atoms, frames.energy, frames.forces)):
        atoms = atoms.copy()
        atoms.calc = None
        atoms.info = {"energy": float(energy)}
        if coordinate:
            atoms.info[coordinate] = 0.1 * i
        if forces:
            atoms.arrays["forces"] = f
        images.append(atoms)
    ase.io.write(path, images, format="extxyz")


def test_extra_tests_drop_training_frames_and_report_paths(tmp_path):
    pool = generate_frames("ethanol", 20, seed=0)
    _write(pool, tmp_path / "train.xyz")
    # every training-file frame, then three new ones along a "path" without forces
    extra = generate_frames("ethanol", 3, seed=11)
    mixed = tmp_path / "mixed.xyz"
    _write(pool, tmp_path / "pool_copy.xyz")
    _write(extra, tmp_path / "path.xyz", coordinate="d", forces=False)
    ase.io.write(
        mixed, ase.io.read(tmp_path / "pool_copy.xyz", ":") + ase.io.read(tmp_path / "path.xyz", ":")
    )
    config = tiny_config(
        tmp_path / "run",
        data={
            "generate": None,
            "train": str(tmp_path / "train.xyz"),
            "extra_tests": {
                "unseen": {"file": str(mixed), "exclude_training": True},
                "path": {"file": str(tmp_path / "path.xyz"), "coordinate": "d"},
            },
        },
        training={"max_epochs": 1},
    )
    final = train(config, log=lambda _: None)
    unseen, path = final["extra_tests"]["unseen"], final["extra_tests"]["path"]
    assert unseen["frames"] == 4 + 3  # the 4 test-split frames and the 3 new ones; 16 train/val dropped
    assert path["frames"] == 3 and path["f_mae"] is None  # energy-only frames: no force error
    rows = list(csv.DictReader(open(tmp_path / "run" / "extra_test_path.csv")))
    assert [float(r["coordinate"]) for r in rows] == pytest.approx([0.0, 0.1, 0.2])
    err = np.array([(float(r["energy_pred"]) - float(r["energy_ref"])) / int(r["n_atoms"]) for r in rows])
    assert path["e_mae"] == pytest.approx(1e3 * np.abs(err).mean())
    assert path["e_mae_offset_free"] == pytest.approx(1e3 * np.abs(err - err.mean()).mean())
    assert json.loads((tmp_path / "run" / "final_metrics.json").read_text())["extra_tests"]["path"] == path
    # L-BFGS refinement reports the same sets before and after
    summary = refine(tmp_path / "run", iterations=1, memory=3, patience=1, log=lambda _: None)
    assert summary["extra_tests_before"]["path"] == path
    assert summary["extra_tests_after"]["unseen"]["frames"] == 7
    assert (tmp_path / "run" / "extra_test_path_refined.csv").is_file()


def test_an_extra_test_made_only_of_training_frames_is_refused(tmp_path):
    pool = generate_frames("ethanol", 20, seed=0)
    _write(pool, tmp_path / "train.xyz")
    config = tiny_config(
        tmp_path / "run",
        data={
            "generate": None,
            "train": str(tmp_path / "train.xyz"),
            "split": [16, 4, 0],
            "extra_tests": {"again": {"file": str(tmp_path / "train.xyz"), "exclude_training": True}},
        },
    )
    with pytest.raises(ConfigError, match="every frame .* is in train/val"):
        Trainer(config, log=lambda _: None)


def test_extra_tests_need_a_file_and_a_new_name(tmp_path):
    with pytest.raises(ConfigError, match="file is required"):
        tiny_config(tmp_path, data={"extra_tests": {"x": {"coordinate": "d"}}}).check()
    with pytest.raises(ConfigError, match="split name"):
        tiny_config(tmp_path, data={"extra_tests": {"test": {"file": "a.xyz"}}}).check()
