"""Architectures and training-set sizes as study axes: learning curves, Pareto front, report (issue 14)."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from mlipopt.report.aggregate import mean_std
from mlipopt.report.architectures import fit_power_law, make_architectures_report, pareto_front
from mlipopt.study import ResultsDB, load_study, run_study
from mlipopt.study.axes import cells
from mlipopt.study.db import run_flags
from mlipopt.train.config import ConfigError
from mlipopt.train.diagnostics import verdicts

from .helpers import tiny_study


def test_a_planted_power_law_is_recovered_with_its_uncertainty():
    sizes = np.repeat([25, 50, 100, 200, 400], 3)
    exact = 3.0 * sizes**-0.6
    slope, err, prefactor = fit_power_law(sizes, exact)
    assert slope == pytest.approx(-0.6, abs=1e-12) and prefactor == pytest.approx(3.0, rel=1e-10)
    assert err < 1e-10
    rng = np.random.default_rng(0)
    slopes, errs = [], []
    for _ in range(200):  # 5 % log-normal noise: the reported error is the spread of the fitted slopes
        s, e, _ = fit_power_law(sizes, exact * np.exp(0.05 * rng.standard_normal(len(sizes))))
        slopes.append(s)
        errs.append(e)
    assert np.mean(slopes) == pytest.approx(-0.6, abs=0.01)
    assert np.std(slopes) == pytest.approx(np.mean(errs), rel=0.25)
    with pytest.raises(ValueError, match="two training-set sizes"):
        fit_power_law([10, 10], [1.0, 2.0])


def test_pareto_front_keeps_exactly_the_undominated_points():
    points = [(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (4.0, 1.0), (2.5, 3.0), (0.5, 9.0)]
    assert pareto_front(points) == [5, 0, 1, 3]  # (3, 4) and (2.5, 3) are beaten by (2, 3)


def _study(tmp_path):
    return tiny_study(
        tmp_path,
        models=["nequip-tiny", "cartesian-tiny"],
        train_sizes=[4, 8],
        optimizers={"adamw": {"lr": [5e-3]}},
        force_fractions=[1.0],
        seeds=[1, 2],
        loss_ratios=[[1.0, 1.0]],
        step_cost=None,
        architecture_checks={"cost_batch_sizes": [1], "cost_repeats": 2, "cost_warmup": 1, "cost_blocks": 2,
                             "cost_min_sample_s": 0.0, "equivariance_frames": 1, "equivariance_rotations": 2,
                             "symmetrize_order": 1, "symmetrized_test_frames": 1000, "nve_steps": 20},
        published={"figures": [{"source": "Planted 2099", "model": "big", "train_size": 8, "f_mae": 1.0,
                                "note": "a planted figure"}], "differences": ["planted difference"]},
    )  # fmt: skip


def test_cells_are_nested_training_sets_of_each_model(tmp_path):
    spec = load_study(_study(tmp_path))
    grid = cells(spec)
    assert [(c.model, c.size) for c in grid] == [
        ("nequip-tiny", 4), ("nequip-tiny", 8), ("cartesian-tiny", 4), ("cartesian-tiny", 8)
    ]  # fmt: skip
    assert grid[0].spec.name == "tiny__nequip-tiny__N4" and grid[0].spec.database == spec.database_url
    assert grid[3].spec.base["model"]["preset"] == "cartesian-tiny"
    assert grid[3].spec.base["data"]["train_subset"] == 8


def test_an_architectures_study_runs_every_cell_and_reports_curves_cost_and_equivariance(tmp_path):
    spec = load_study(_study(tmp_path))
    outcome = run_study(spec, progress=lambda _: None)
    assert outcome.failed == []
    db = ResultsDB(spec.database_url)
    finals = [r for r in db.runs() if r.stage == "final" and r.status == "done"]
    assert len(finals) == 2 * 2 * 2  # models × sizes × seeds
    small = [r for r in finals if r.study == "tiny__cartesian-tiny__N4"]
    assert all(len(__import__("json").loads(r.final)["frames"] and [0]) for r in small)
    assert {r.study for r in finals} == {
        f"tiny__{m}__N{n}" for m in ("nequip-tiny", "cartesian-tiny") for n in (4, 8)
    }
    # every run carries its cell as columns, which the report selects by
    assert {(r.parent, r.model, r.train_size) for r in finals} == {
        ("tiny", m, n) for m in ("nequip-tiny", "cartesian-tiny") for n in (4, 8)
    }
    assert db.cells("tiny")["tiny__cartesian-tiny__N8"] == ("cartesian-tiny", 8)
    costs = db.checks("tiny", "inference_cost")
    assert set(costs) == {"nequip-tiny", "cartesian-tiny"}
    assert {r["structure"] for r in costs["cartesian-tiny"][0]} == {"3bpa", "water-96", "diamond-256"}
    for row in costs["cartesian-tiny"][0]:  # quoted: 5th-95th percentiles of two blocks' samples
        assert row["blocks"] == 2 and row["low_us"] <= row["high_us"] and row["median_us"] > 0
        assert row["p05_us"] <= row["median_us"] <= row["p95_us"]
    equivariance = db.checks("tiny", "equivariance")
    assert len(equivariance) == 2  # largest N, first seed, per model
    by_model = {r["model"]: r for r, _ in equivariance.values()}
    assert "symmetrized" in by_model["cartesian-tiny"] and "symmetrized" not in by_model["nequip-tiny"]
    assert (
        by_model["nequip-tiny"]["raw"]["energy_std"] < 1e-2 < by_model["cartesian-tiny"]["raw"]["energy_std"]
    )
    # the symmetrized model is scored on the run's test split; raw, the score is the run's own test error
    run_id = next(k for k, (r, _) in equivariance.items() if r["model"] == "cartesian-tiny")
    stored = __import__("json").loads(next(r for r in finals if r.id == run_id).final)["test"]
    scored = by_model["cartesian-tiny"]
    assert scored["test_raw"]["f_mae"] == pytest.approx(stored["f_mae"], rel=1e-4)
    assert scored["test_raw"]["e_mae"] == pytest.approx(stored["e_mae"], rel=1e-3, abs=1e-3)
    assert np.isfinite(scored["test_symmetrized"]["f_mae"]) and "test_raw" not in by_model["nequip-tiny"]
    for r in by_model.values():  # a short NVE run of every trained model
        assert r["nve"]["steps"] == 20 and np.isfinite(r["nve"]["max_deviation_meV_per_atom"])

    index = make_architectures_report(spec.database_url, "tiny", tmp_path / "report").read_text()
    # the published figure sits beside the measured adamw error at its N, with the ratio
    n8 = [r.test_f_mae for r in finals if r.study == "tiny__nequip-tiny__N8"]
    assert (f"| Planted 2099 | big | 8 | 1 | — | nequip-tiny | {np.mean(n8):.1f} | measured, 2 seeds | "
            f"{np.mean(n8):.1f}× |") in index  # fmt: skip
    assert "- planted difference" in index and "- Planted 2099: a planted figure" in index
    for part in ("## Learning curves", "learning_curves.png", "## Accuracy against cost", "Pareto front:",
                 "## Inference cost", "## Equivariance", "cells/cartesian-tiny/N8/index.md",
                 "Accuracy of the symmetrized models", "Geometry optimisation and vibrations",
                 "NVE molecular dynamics"):  # fmt: skip
        assert part in index, part
    assert index.count("| 100 % | nequip-tiny | adamw |") == 1  # one slope row per curve
    assert (tmp_path / "report" / "cells" / "nequip-tiny" / "N4" / "index.md").is_file()

    # a run that did not train (planted flag) leaves the means, the curve and its slope; the report says so
    untrained = next(r for r in finals if r.study == "tiny__cartesian-tiny__N4" and r.seed == 2)
    db._write(lambda session: setattr(session.get(type(untrained), untrained.id), "flags", "no_progress"))
    curve = [r for r in finals if r.study.startswith("tiny__cartesian-tiny")]
    kept = [r for r in curve if r.id != untrained.id and "did not train" not in verdicts(run_flags(r))]
    slope, err, _ = fit_power_law([int(r.study[-1]) for r in kept], [r.test_f_mae for r in kept])
    index = make_architectures_report(spec.database_url, "tiny", tmp_path / "report2").read_text()
    n4 = next(line for line in index.splitlines() if line.startswith("| cartesian-tiny | 4 | 100 % | adamw"))
    kept4 = [r.test_f_mae for r in kept if r.study.endswith("N4")]
    assert f"| {len(kept4)} (+{2 - len(kept4)} left out) |" in n4
    assert f"| {mean_std(kept4, 1) if kept4 else '—'} |" in n4  # the mean of the runs that trained
    assert f"| 100 % | cartesian-tiny | adamw | {slope:.2f} ± {err:.2f} |" in index
    assert f"{len(curve) - len(kept)} run(s) that did not train left out" in index
    db._write(lambda session: setattr(session.get(type(untrained), untrained.id), "flags", ""))
    # a rerun finds everything done: no run trained twice, no check measured again
    assert run_study(spec, progress=lambda _: None).failed == []
    assert len([r for r in ResultsDB(spec.database_url).runs() if r.stage == "final"]) == 8


def test_a_model_of_another_environment_trains_and_is_measured_in_that_python(tmp_path):
    """``models.X.python``: the model's runs train in a subprocess of that interpreter (a family installed
    in another environment, e.g. MACE's); its checks are measured there. Shown here with this very Python
    against the same study run in-process: the path is proven, the results are the same."""
    outcomes = {}
    for where, python in (("here", None), ("there", sys.executable)):
        entry = {"model": {"preset": "cartesian-tiny"}} | ({"python": python} if python else {})
        raw = tiny_study(
            tmp_path / where,
            models={"m": entry},
            train_sizes=[4],
            optimizers={"adamw": {"lr": [5e-3]}},
            force_fractions=[1.0],
            seeds=[1],
            loss_ratios=[[1.0, 1.0]],
            step_cost={"repeats": 2, "warmup": 1},
            architecture_checks={"cost_batch_sizes": [1], "cost_repeats": 1, "cost_warmup": 1,
                                 "cost_blocks": 1, "cost_min_sample_s": 0.0, "equivariance_frames": 1,
                                 "equivariance_rotations": 2, "symmetrize_order": 1,
                                 "symmetrized_test_frames": 2, "geometry": False, "nve_steps": 5},
        )  # fmt: skip
        spec = load_study(raw)
        lines: list[str] = []
        assert run_study(spec, progress=lines.append).failed == []
        db = ResultsDB(spec.database_url)
        final = next(r for r in db.runs() if r.stage == "final" and r.status == "done")
        (checks,) = [r for r, _ in db.checks("tiny", "equivariance").values()]
        outcomes[where] = (spec, lines, final, checks, db.checks("tiny", "inference_cost"))
    spec, lines, there, checks, costs = outcomes["there"]
    _, here_lines, here, here_checks, _ = outcomes["here"]
    assert Path(spec.models["m"].python).samefile(sys.executable)
    # a subprocess trained it (its output is in train.log); in-process, no train.log
    assert (Path(there.run_dir) / "train.log").is_file() and not (Path(here.run_dir) / "train.log").exists()
    assert there.test_f_mae == pytest.approx(here.test_f_mae, rel=1e-5)  # same config and seed
    assert checks["raw"]["energy_std"] == pytest.approx(here_checks["raw"]["energy_std"], rel=1e-4)
    assert checks["nve"]["steps"] == 5 and set(costs) == {"m"}
    # the step cost is measured in the study's own process: skipped, and said so
    assert any("step cost: not measured" in line for line in lines)
    assert not any("step cost: not measured" in line for line in here_lines)


def test_a_model_python_that_is_missing_or_lacks_mlipopt_fails_the_study_at_once(tmp_path):
    raw = tiny_study(tmp_path, models={"m": {"model": {"preset": "cartesian-tiny"}, "python": "no/python"}})
    with pytest.raises(ConfigError, match=r"models.m.python: no/python is not an executable Python"):
        load_study(raw)
    bare = tmp_path / "bare-python"
    bare.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named mlipopt' >&2\nexit 1\n")
    bare.chmod(0o755)
    raw["models"]["m"]["python"] = str(bare)
    with pytest.raises(ConfigError, match="cannot import mlipopt .*No module named mlipopt.*pip install"):
        load_study(raw)


MACE_PYTHON = os.environ.get("MLIPOPT_MACE_PYTHON")


@pytest.mark.skipif(not MACE_PYTHON, reason="MLIPOPT_MACE_PYTHON (the MACE environment's python) not set")
def test_a_mace_cell_trains_and_is_measured_in_its_own_environment_beside_a_nequip_cell(tmp_path):
    """One architectures study over two environments: nequip here, MACE (e3nn 0.4.4) in its venv. .ci/run
    builds that venv first and sets MLIPOPT_MACE_PYTHON, so CI runs this."""
    raw = tiny_study(
        tmp_path,
        models={"nequip-tiny": "nequip-tiny",
                "mace-tiny": {"model": {"preset": "mace-tiny"}, "python": MACE_PYTHON}},
        train_sizes=[4, 8],
        optimizers={"adamw": {"lr": [5e-3]}},
        force_fractions=[1.0],
        seeds=[1],
        loss_ratios=[[1.0, 1.0]],
        step_cost={"repeats": 2, "warmup": 1},
        architecture_checks={"cost_batch_sizes": [1], "cost_repeats": 1, "cost_warmup": 1, "cost_blocks": 2,
                             "cost_min_sample_s": 0.0, "equivariance_frames": 1, "equivariance_rotations": 2,
                             "geometry": False, "nve_steps": 5},
    )  # fmt: skip
    lines: list[str] = []
    spec = load_study(raw)
    assert run_study(spec, progress=lines.append).failed == []
    assert any("step cost: not measured (the runs train in" in line for line in lines)
    db = ResultsDB(spec.database_url)
    finals = [r for r in db.runs() if r.stage == "final" and r.status == "done"]
    assert sorted(r.study for r in finals) == sorted(
        f"tiny__{m}__N{n}" for m in ("nequip-tiny", "mace-tiny") for n in (4, 8)
    )
    assert all(np.isfinite(r.test_f_mae) for r in finals)
    costs = db.checks("tiny", "inference_cost")
    assert {r["structure"] for r in costs["mace-tiny"][0]} == {"3bpa", "water-96", "diamond-256"}
    mace = next(r for r, _ in db.checks("tiny", "equivariance").values() if r["model"] == "mace-tiny")
    assert mace["unconstrained"] is False and mace["raw"]["energy_std"] < 1e-2  # MACE is equivariant
    index = make_architectures_report(spec.database_url, "tiny", tmp_path / "report").read_text()
    assert "| 100 % | mace-tiny | adamw |" in index and "cells/mace-tiny/N8/index.md" in index


def test_a_published_figure_outside_the_trained_sizes_is_read_off_the_fitted_curve_and_labelled():
    from mlipopt.report.architectures import ArchitectureCell, baseline_at, published_section

    def cell(size, optimizer="adamw", fraction=1.0):  # err = 100·N^-0.5 exactly, two seeds
        return ArchitectureCell("m", size, optimizer, fraction, f_mae=[100 * size**-0.5] * 2)

    cells = [cell(50), cell(250), cell(50, "soap"), cell(250, "adamw", 0.1)]
    value, how = baseline_at(cells, "m", "adamw", 1000)
    assert value == pytest.approx(100 / 1000**0.5) and how.startswith("extrapolated along err ∝ N^-0.50")
    assert baseline_at(cells, "m", "adamw", 100)[1].startswith("interpolated")
    assert baseline_at(cells, "m", "adamw", 250) == (pytest.approx(100 / 250**0.5), "measured, 2 seeds")
    assert baseline_at([cell(50)], "m", "adamw", 1000) is None  # one size: no curve to read
    figure = {"source": "S", "model": "big", "train_size": 1000, "f_mae": 1.0, "e_mae": 0.1}
    lines = published_section(cells, {"figures": [figure], "baseline": "adamw", "differences": []})
    row = next(line for line in lines if line.startswith("| S |"))
    assert row.endswith("| 3.2× |") and "| m | 3.2 | extrapolated" in row
    assert published_section(cells, {"figures": [figure], "baseline": "lbfgs"}) == []  # no such cells
