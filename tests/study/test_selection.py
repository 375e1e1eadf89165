"""Hyperparameter selection: flagged runs are not chosen silently, grids grow past an edge optimum,
default grids run, and the step cost is measured in a controlled way."""

import json
import sqlite3

from mlipopt.study import ResultsDB, load_study, run_study
from mlipopt.study.runner import StudyRunner
from mlipopt.study.spec import run_config

from .helpers import tiny_study


def _fake_results(runner, runs, metrics, flags):
    runner.db.register(runner.spec.name, runs)
    for run, metric, flag in zip(runs, metrics, flags):
        runner.db.mark_running(run.run_id)
        runner.db.record_result(run.run_id, {"best_val_metric": metric, "flags": flag, "test": {}}, [])


def test_selection_skips_flagged_runs_and_says_so(tmp_path):
    spec = load_study(tiny_study(tmp_path))
    lines = []
    runner = StudyRunner(spec, progress=lines.append)
    runs = [run_config(spec, "adamw", 1.0, 7, lr, 0.0, (1.0, 1.0), 1, "sweep") for lr in (1e-3, 3e-3, 1e-2)]
    _fake_results(runner, runs, [50.0, 10.0, 30.0], [[], ["early_best"], []])
    best, note = runner._select(runs, "adamw at s=1")
    assert best.lr == 1e-2 and "0.003" in note and "did not train" in note  # not the flagged 3e-3
    assert any("not selected" in line for line in lines)


def test_selection_among_flagged_runs_only_warns(tmp_path):
    spec = load_study(tiny_study(tmp_path))
    lines = []
    runner = StudyRunner(spec, progress=lines.append)
    runs = [run_config(spec, "adamw", 0.0, 7, lr, 0.0, (1.0, 1.0), 1, "sweep") for lr in (1e-3, 3e-3)]
    _fake_results(runner, runs, [50.0, 10.0], [["constant_energy"], ["early_best", "no_progress"]])
    best, note = runner._select(runs, "adamw at s=0")
    assert best.lr == 3e-3 and "every run flagged" in note and "did not train" in note
    assert any(line.strip().startswith("WARNING") for line in lines)


def test_an_energy_drift_does_not_hand_the_selection_to_a_far_worse_run(tmp_path):
    """Seen in architectures-3bpa: the drifting rates scored 4e2, the one clean rate 5e5 (diverging)."""
    spec = load_study(tiny_study(tmp_path))
    runner = StudyRunner(spec, progress=lambda _: None)
    runs = [run_config(spec, "soap", 1.0, 7, lr, 0.0, (1.0, 1.0), 1, "sweep") for lr in (1e-2, 3e-2, 1e-1)]
    _fake_results(runner, runs, [406.9, 457.1, 496750.6], [["energy_drift"], ["energy_drift"], []])
    best, note = runner._select(runs, "soap at s=1")
    assert best.lr == 1e-2 and note == "selected lr 0.01 shows energy drift"


def test_a_best_rate_on_the_grid_edge_extends_the_grid(tmp_path):
    """After one epoch a larger small rate always wins, so 3e-5 (the top of the grid) is best; the sweep
    adds 1e-4 and then 3e-4 (two extensions), and the selection records where the pick lies."""
    raw = tiny_study(
        tmp_path,
        optimizers={"adamw": {"lr": [1e-5, 3e-5]}},
        force_fractions=[1.0],
        seeds=[1],
        loss_ratios=[[1.0, 1.0]],
        sweep_extensions=2,
    )
    lines = []
    run_study(load_study(raw), progress=lines.append)
    db = ResultsDB(load_study(raw).database_url)
    swept = sorted(r.lr for r in db.runs("tiny", stage="sweep"))
    assert swept == [1e-5, 3e-5, 1e-4, 3e-4]
    (selection,) = db.selections("tiny", "sweep")
    assert json.loads(selection.grid) == swept and selection.extensions == 2
    assert selection.lr == 3e-4 and selection.position == "upper edge"  # the limit was reached
    assert sum("on the grid's edge" in line for line in lines) == 2


def test_a_study_without_grids_runs_on_the_default_grids_and_measures_step_cost(tmp_path):
    from mlipopt.optim.registry import optimizer_spec

    raw = tiny_study(tmp_path, optimizers={"adamw": {}, "soap": {}}, force_fractions=[1.0], seeds=[1])
    raw["loss_ratios"] = [[1.0, 1.0]]
    run_study(load_study(raw), progress=lambda _: None)
    db = ResultsDB(load_study(raw).database_url)
    for name in ("adamw", "soap"):
        swept = {r.lr for r in db.runs("tiny", stage="sweep") if r.optimizer == name}
        assert swept == set(optimizer_spec(name).lr_grid)
    finals = db.runs("tiny", stage="final")
    assert {r.optimizer for r in finals if r.status == "done"} == {"adamw", "soap"}
    costs = {c.optimizer: c for c in db.step_costs("tiny")}
    assert set(costs) == {"adamw", "soap"}
    assert costs["adamw"].ratio_median == 1.0 and costs["soap"].median_s > 0
    # 2 steps asked for, rounded up to one whole refresh period of SOAP (precondition_frequency 10)
    assert costs["soap"].repeats == 10 and costs["soap"].period == 10
    assert "interleaved" in costs["soap"].description and "1 period(s) of 10" in costs["soap"].description
    assert costs["adamw"].ratio_mean == 1.0
    for cost in costs.values():
        assert cost.period_min_s <= cost.mean_s <= cost.period_max_s <= cost.slowest_s


def test_an_old_database_gains_the_new_columns(tmp_path):
    """A results database written before `flags` and `val_e_bias` existed opens and keeps its rows."""
    spec = load_study(tiny_study(tmp_path))
    db = ResultsDB(spec.database_url)
    run = run_config(spec, "adamw", 1.0, 7, 1e-3, 0.0, (1.0, 1.0), 1, "final")
    db.register("tiny", [run])
    path = spec.database_url.removeprefix("sqlite:///")
    connection = sqlite3.connect(path)
    connection.execute("ALTER TABLE runs DROP COLUMN flags")
    connection.execute("ALTER TABLE epochs DROP COLUMN val_e_bias")
    connection.commit()
    connection.close()
    reopened = ResultsDB(spec.database_url)
    (old,) = reopened.runs("tiny")
    assert old.id == run.run_id and old.flags is None
    reopened.mark_running(run.run_id)
    reopened.record_result(run.run_id, {"best_val_metric": 1.0, "flags": ["energy_drift"], "test": {}}, [])
    assert reopened.runs("tiny")[0].flags == "energy_drift"


def test_final_runs_of_an_earlier_selection_are_superseded_not_mixed_into_the_table(tmp_path):
    from mlipopt.report.aggregate import final_runs

    def study(lr):
        raw = tiny_study(tmp_path, optimizers={"adamw": {"lr": [lr]}}, force_fractions=[1.0], seeds=[1],
                         loss_ratios=[[1.0, 1.0]], step_cost=None)  # fmt: skip
        spec = load_study(raw)
        run_study(spec, progress=lambda _: None)
        return ResultsDB(spec.database_url)

    study(1e-3)
    db = study(5e-3)  # the selection changed: the 1e-3 final run no longer belongs to the table
    assert [r.lr for r in final_runs(db, "tiny")] == [5e-3]
    assert [r.lr for r in db.runs("tiny") if r.stage == "superseded"] == [1e-3]
    db = study(1e-3)  # and back: the old run counts again, not retrained
    assert [r.lr for r in final_runs(db, "tiny")] == [1e-3]
    assert [r.attempts for r in final_runs(db, "tiny")] == [1]
