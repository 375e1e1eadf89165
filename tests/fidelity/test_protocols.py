"""`mlipopt fidelity` on tiny trained runs against EMT, the calculator that labelled their data."""

import json

import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from mlipopt.cli import main
from mlipopt.fidelity import FidelitySettings, evaluate
from mlipopt.study import ResultsDB
from mlipopt.train import train

from ..train.helpers import tiny_config


@pytest.fixture(scope="module")
def ethanol_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    runs = []
    for name in ("adamw", "soap"):
        run_dir = root / "runs" / f"{name}-run"
        train(tiny_config(run_dir, optimizer={"name": name}, training={"max_epochs": 2}), log=lambda _: None)
        runs.append(run_dir)
    return root, runs


def test_cli_compares_runs_with_the_reference_and_stores_results(ethanol_runs, tmp_path, capsys):
    root, runs = ethanol_runs
    ResultsDB(f"sqlite:///{root / 'results.db'}")  # the runs belong to a study with this database
    args = [
        "fidelity",
        *map(str, runs),
        "--reference",
        "emt",
        "--steps",
        "60",
        "--seeds",
        "2",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| adamw s=100% seed 3 |" in out and "| soap s=100% seed 3 |" in out
    saved = json.loads((tmp_path / "fidelity.json").read_text())
    assert len(saved["results"]) == 2 and saved["reference"]["structure_error"] == 0.0
    for result in saved["results"]:
        assert 0 <= result["survived"] <= 1 and result["structure_error"] >= 0
    assert (tmp_path / "structure_overlay.png").stat().st_size > 0
    stored = ResultsDB(f"sqlite:///{root / 'results.db'}").fidelity("adamw-run", "molecule")
    assert stored["label"] == "adamw s=100% seed 3"


def test_reference_against_itself_has_no_structure_error():
    """The protocol's error is a distance: the reference calculator scores ≈ 0 against its own trajectory."""
    copper = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    settings = FidelitySettings(temperature_K=300, steps=100, seeds=1, interval=5, timestep_fs=2.0)
    from mlipopt.fidelity.md import run_md

    reference = run_md(copper, EMT(), 300, 100, 2.0, "langevin", 5, seed=0).frames
    result = evaluate("emt", EMT(), copper, "crystal", reference, settings, reference_calc=EMT())
    assert result.survived == 1.0
    assert result.structure_error < 0.5
    assert result.extra["C11_relative_error"] == pytest.approx(0.0, abs=1e-9)


def test_unknown_protocol():
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate("x", EMT(), bulk("Cu"), "gas", [bulk("Cu")], FidelitySettings())
