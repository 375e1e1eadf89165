"""Energy-only data (s = 0, one of the seeds' three regimes) end to end: an extxyz whose frames carry no
forces trains, runs a study, reports and goes through the fidelity check (issue 22: the run trained,
then `mlipopt train` exited 1 formatting the missing force error)."""

import json

import ase.io
import numpy as np
import pytest
import yaml
from ase.build import molecule
from ase.calculators.emt import EMT

from mlipopt.cli import main


@pytest.fixture(scope="module")
def energy_only(tmp_path_factory):
    """16 rattled ethanols with EMT energies and no forces at all in the file."""
    folder = tmp_path_factory.mktemp("energy_only")
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(16):
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
        atoms.calc = EMT()
        energy = atoms.get_potential_energy()
        atoms.calc = None
        atoms.info["energy"] = energy
        frames.append(atoms)
    ase.io.write(folder / "energies.xyz", frames)
    assert "forces" not in (folder / "energies.xyz").read_text()
    return folder


def test_train_on_a_file_without_forces(energy_only, capsys):
    config = {
        "seed": 1,
        "data": {"train": str(energy_only / "energies.xyz"), "split": [10, 3, 3], "batch_size": 4,
                 "force_fraction": 0},
        "model": {"preset": "nequip-tiny"},
        "optimizer": {"name": "soap", "lr": 3e-3},
        "training": {"max_epochs": 2, "progress": False},
    }  # fmt: skip
    (energy_only / "train.yaml").write_text(yaml.safe_dump(config))
    run = energy_only / "run"
    assert main(["train", str(energy_only / "train.yaml"), "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["test"]["f_mae"] is None and final["test"]["e_mae"] > 0
    assert final["cpu_model"] and final["torch_threads"] >= 1  # what a bitwise re-run needs the same
    assert "test: E MAE" in out and "F MAE" not in out.split("test: E MAE")[1].splitlines()[0]


def test_study_report_and_fidelity_on_a_file_without_forces(energy_only, tmp_path, capsys):
    study = {
        "name": "energy-only",
        "study_dir": str(tmp_path / "study"),
        "base": {"data": {"train": str(energy_only / "energies.xyz"), "split": [10, 3, 3], "batch_size": 4},
                 "model": {"preset": "nequip-tiny"}, "training": {"max_epochs": 2}},
        "optimizers": {"adamw": {"lr": [1e-3, 3e-3]}, "soap": {"lr": [3e-3]}},
        "force_fractions": [0.0],
        "seeds": [1, 2],
        "loss_ratios": [[1, 1]],
        "sweep_epochs": 1,
        "sweep_extensions": 0,
        "step_cost": {"repeats": 2, "warmup": 1},
        "executor": {"workers": 1},
    }  # fmt: skip
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    assert main(["study", str(tmp_path / "study.yaml")]) == 0
    table = (tmp_path / "study" / "mae_table.md").read_text()
    assert "| 0 % | adamw | 2 | " in table and "| 0 % | soap | 2 | " in table
    assert all(row.split("|")[5].strip() == "—" for row in table.splitlines()[2:])  # no force error
    capsys.readouterr()
    assert main(["report", str(tmp_path / "study")]) == 0
    assert "| 0 % | soap | 2 |" in capsys.readouterr().out
    run = next((tmp_path / "study" / "runs").glob("soap-s0-seed1-*"))
    args = ["fidelity", str(run), "--reference", "emt", "--steps", "20", "--seeds", "1", "--out",
            str(tmp_path / "fidelity")]  # fmt: skip
    assert main(args) == 0
    [result] = json.loads((tmp_path / "fidelity" / "fidelity.json").read_text())["results"]
    assert result["label"].startswith("soap s=0% seed 1") and 0 <= result["survived"] <= 1
