"""`mlipopt fidelity` on tiny trained runs against EMT, the calculator that labelled their data."""

import json

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import all_changes
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
        "--database",  # storing is asked for, with the database named: never guessed from the run paths
        f"sqlite:///{root / 'results.db'}",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| adamw s=100% seed 3 |" in out and "| soap s=100% seed 3 |" in out
    saved = json.loads((tmp_path / "fidelity.json").read_text())
    assert len(saved["results"]) == 2 and saved["references"][0]["structure_error"] == 0.0
    for result in saved["results"]:
        # every trajectory either survived or has its failure recorded; a trained toy model is not EMT
        assert result["survived"] == 1 - len(result["failures"]) / 2 and result["structure_error"] > 0
    assert (tmp_path / "structure_overlay_600K.png").stat().st_size > 0
    saved_trajectories = sorted(p.name for p in (tmp_path / "trajectories" / "600K").glob("*.xyz"))
    assert len(saved_trajectories) == 5 and "reference.xyz" in saved_trajectories  # 2 runs × 2 seeds + EMT
    stored = ResultsDB(f"sqlite:///{root / 'results.db'}").fidelity("adamw-run", "molecule", 600.0)
    assert stored["label"] == "adamw s=100% seed 3"


def test_reference_against_itself_has_no_structure_error():
    """The protocol's error is a distance: the reference calculator scores ≈ 0 against its own trajectory."""
    copper = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    settings = FidelitySettings(temperature_K=300, steps=100, seeds=1, interval=5, timestep_fs=2.0)
    from mlipopt.md import run_md

    reference = run_md(copper, EMT(), 300, 100, 2.0, "langevin", 5, seed=0).frames
    result = evaluate("emt", EMT(), copper, "crystal", reference, settings, reference_calc=EMT())
    assert result.survived == 1.0
    assert result.structure_error < 0.5
    assert result.extra["C11_relative_error"] == pytest.approx(0.0, abs=1e-9)


def test_unknown_protocol():
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate("x", EMT(), bulk("Cu"), "gas", [bulk("Cu")], FidelitySettings())


def test_liquid_protocol_gives_diffusion_and_arrhenius(tmp_path):
    """Hot EMT copper as its own reference: D from the MSD, E_a from two temperatures, plots written."""
    from mlipopt.fidelity.protocols import FidelityResult
    from mlipopt.fidelity.report import arrhenius_summary, write_report
    from mlipopt.md import run_md

    liquid = bulk("Cu", "fcc", a=3.7, cubic=True).repeat(2)
    results, references = [], []
    for temperature in (2500.0, 3500.0):
        settings = FidelitySettings(
            temperature_K=temperature, steps=300, seeds=1, interval=5, timestep_fs=2.0
        )
        reference = run_md(liquid, EMT(), temperature, 300, 2.0, "langevin", 5, seed=7).frames
        result = evaluate("emt", EMT(), liquid, "liquid", reference, settings)
        assert result.extra["D_A2_per_ps"] > 0 and result.msd[0]
        # per-pair curves of model and reference on the total g(r)'s grid, and the reference's MSD
        assert (
            len(result.pair_curves["Cu-Cu"])
            == len(result.curve[0])
            == len(result.reference_pair_curves["Cu-Cu"])
        )
        assert result.reference_msd[0] and result.reference_msd[1][-1] > 0
        results.append(result)
        references.append(FidelityResult("reference", 1.0, 0.6, 0.6, 0.0, temperature_K=temperature))
    rows = arrhenius_summary(results)
    assert [r["label"] for r in rows] == ["reference", "emt"]
    assert np.isfinite(rows[1]["Ea"]) and "Ea_relative_error" in rows[1]
    index = write_report(results, references, settings, "liquid", tmp_path, [2500.0, 3500.0])
    assert (tmp_path / "msd.png").is_file() and (tmp_path / "arrhenius.png").is_file()
    assert "E_a [eV]" in index.read_text()


def test_crystal_protocol_compares_elastic_constants_and_phonon_bands(tmp_path):
    """A model that is 3 % stiffer than EMT shows up in C11 and in the phonon frequencies."""
    from mlipopt.fidelity.report import write_report
    from mlipopt.md import run_md

    class StiffEMT(EMT):
        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            for key in ("energy", "forces", "stress"):
                if key in self.results:
                    self.results[key] = 1.03 * self.results[key]

    cell = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)  # 32 atoms: its own phonopy supercell
    settings = FidelitySettings(
        temperature_K=300, steps=60, seeds=1, interval=5, timestep_fs=2.0, ensemble="nve"
    )
    reference = run_md(cell, EMT(), 300, 60, 2.0, "nve", 5, seed=0).frames
    result = evaluate("stiff", StiffEMT(), cell, "crystal", reference, settings, reference_calc=EMT())
    assert result.extra["C11_relative_error"] == pytest.approx(0.03, abs=1e-6)
    assert 0 < result.extra["phonon_frequency_MAE_THz"] < 0.5
    assert "nve_drift_meV_atom_ps" in result.extra
    write_report([result], [result], settings, "crystal", tmp_path)
    assert (tmp_path / "phonon_bands.png").stat().st_size > 0


def test_an_xtb_reference_for_a_model_trained_on_other_data_is_warned(tmp_path):
    from mlipopt.fidelity.references import reference_mismatch

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("data:\n  train: /data/dft/3BPA/train_300K.xyz\n")
    warning = reference_mismatch([run], "xtb")
    assert "train_300K.xyz" in warning and "another level of theory" in warning
    assert reference_mismatch([run], "emt") is None


class _Stretched(EMT):
    """EMT evaluated on positions scaled by ``factor``: its minimum is EMT's shrunk by 1/factor."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        scaled = atoms.copy()
        scaled.positions *= self.factor
        super().calculate(scaled, properties, ["positions", "numbers", "cell", "pbc"])
        self.results["forces"] = self.results["forces"] * self.factor
        self.atoms = atoms.copy()


def test_geometry_optimisation_against_the_reference():
    from ase.build import molecule

    from mlipopt.fidelity.protocols import geometry_errors

    start = molecule("CH3CH2OH")
    same = geometry_errors(EMT(), EMT(), start)
    assert same["geometry_rmsd_A"] < 1e-6 and abs(same["geometry_energy_meV_atom"]) < 1e-6
    assert same["geometry_converged"] == 1.0
    off = geometry_errors(_Stretched(1.03), EMT(), start)
    assert off["geometry_rmsd_A"] > 1e-2  # a 3 % smaller molecule
    assert off["geometry_energy_meV_atom"] > 0.1 and off["geometry_ref_fmax_eV_A"] > 0.05


def test_the_reference_diffusion_is_read_at_the_reference_trajectorys_own_spacing():
    """A recorded reference (frames every 20 fs, ``time_fs`` in their info) against model MD sampled every
    5 fs: both random walks have D = 0.5 Å²/ps, and so must both estimates."""
    from ase import Atoms

    from mlipopt.fidelity.protocols import _diffusion, reference_spacing_ps
    from mlipopt.md import MDResult

    rng = np.random.default_rng(4)

    def walk(n: int, dt_ps: float, time_fs: bool) -> list[Atoms]:
        positions = np.cumsum(rng.normal(scale=np.sqrt(2 * 0.5 * dt_ps), size=(n, 300, 3)), axis=0)
        frames = [Atoms("H300", positions=x) for x in positions]
        for i, f in enumerate(frames):
            if time_fs:
                f.info["time_fs"] = 1000 * dt_ps * i
        return frames

    settings = FidelitySettings(timestep_fs=0.5, interval=10)  # model frames every 5 fs
    model = [MDResult(frames=walk(801, 0.005, False))]
    reference = walk(400, 0.020, True)  # 8 ps at 20 fs: covers the model's 4 ps
    assert reference_spacing_ps(reference) == pytest.approx(0.020)
    assert reference_spacing_ps(model[0].frames) is None
    stats, _, reference_msd = _diffusion(model, reference, settings)
    assert stats["D_A2_per_ps"] == pytest.approx(0.5, rel=0.1)
    assert stats["D_reference"] == pytest.approx(0.5, rel=0.1)
    assert reference_msd[0][-1] == pytest.approx(2.0)  # lags to half the model's 4 ps
    # a model whose MD failed has no D, but the reference's is still reported (over the planned 1 ps)
    failed = [MDResult(frames=model[0].frames[:50], failed_at_ps=0.25, reason="blow-up")]
    stats, msd, reference_msd = _diffusion(failed, reference, settings)
    assert "D_A2_per_ps" not in stats and msd == ((), ())
    assert stats["D_reference"] == pytest.approx(0.5, rel=0.25) and reference_msd[0][-1] == pytest.approx(0.5)


def test_rdf_drift_windows_span_the_same_time_for_model_and_reference():
    """Model frames every 5 fs against a reference every 20 fs: the model's window holds 4× the frames
    (200 fs each), so its correlated frames are judged against the noise of an equally long stretch."""
    from ase import Atoms

    from mlipopt.fidelity.protocols import rdf_windows

    settings = FidelitySettings(timestep_fs=0.5, interval=10)
    recorded = [Atoms("H", info={"time_fs": 20.0 * i}) for i in range(30)]
    assert rdf_windows(recorded, settings) == (40, 10)
    assert rdf_windows([Atoms("H") for _ in range(30)], settings) == (10, 10)  # no spacing recorded
    coarse = FidelitySettings(timestep_fs=2.0, interval=20)  # model frames every 40 fs
    assert rdf_windows(recorded, coarse) == (10, 20)


def test_a_recorded_reference_selects_frames_and_a_liquid_starts_from_its_first(tmp_path):
    """``FILE@2:`` skips a reference MD's first frames (its equilibration), and a liquid's MD then starts
    from the first kept frame, not from the unequilibrated first data frame; a molecule keeps its own."""
    import ase.io

    from mlipopt.fidelity.references import md_start, reference_trajectory

    box = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    frames = []
    for i in range(5):
        frame = box.copy()
        frame.positions += 0.01 * i
        frames.append(frame)
    path = tmp_path / "trajectory.extxyz"
    ase.io.write(path, frames, format="extxyz")
    kept, calc, runs = reference_trajectory(f"{path}@2:", box, "liquid", FidelitySettings())
    assert len(kept) == 3 and calc is None and runs == []
    assert np.allclose(kept[0].positions, frames[2].positions)
    start = md_start("liquid", frames[0], kept, None)
    assert np.allclose(start.positions, frames[2].positions) and start.pbc.all()
    assert md_start("molecule", frames[0], kept, None) is frames[0]
    assert md_start("liquid", frames[0].repeat((2, 1, 1)), kept, None).positions.shape[0] == 64  # another box
    with pytest.raises(FileNotFoundError, match="does not exist"):
        reference_trajectory(f"{tmp_path / 'missing.extxyz'}@2:", box, "liquid", FidelitySettings())
