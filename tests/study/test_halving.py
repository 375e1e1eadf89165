"""Successive-halving sweeps (issue 26, part 3): Optuna's ASHA pruner decides, each trial is a normal
run of the study, a re-run trains nothing again, and the same study as a grid finishes the pruned runs
exactly where a grid of its own ends."""

from __future__ import annotations

import pytest

from mlipopt.study import ResultsDB, load_study, run_study
from mlipopt.train.config import ConfigError

from .helpers import tiny_study

optuna = pytest.importorskip("optuna", reason="halving sweeps: pip install 'mlipopt[study]'")

RATES = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]


def _raw(tmp_path, method: str) -> dict:
    return tiny_study(
        tmp_path,
        optimizers={"adamw": {"lr": RATES, "weight_decay": [0.0, 1e-2]}},
        force_fractions=[1.0],
        loss_ratios=[[1.0, 1.0]],
        seeds=[1],
        sweep_epochs=4,
        sweep_extensions=0,
        sweep={"method": method, "reduction_factor": 2, "min_epochs": 1},
        step_cost=None,
    )


def _promotable(value: float, competing: list[float], eta: int) -> bool:
    """ASHA's rule (Li et al. 2020, as Optuna applies it without suspending trials): among the values
    reported at the rung so far, this one included, go on if within the best ⌊n/η⌋ (the best at least)."""
    k = max(len(competing) // eta, 1)
    return value <= sorted(competing)[k - 1]


def test_a_halving_sweep_prunes_by_the_asha_rule_and_resumes_to_nothing(tmp_path):
    raw = _raw(tmp_path / "halving", "halving")
    spec = load_study(raw)
    run_study(spec, progress=lambda _: None)
    db = ResultsDB(spec.database_url)
    swept = db.runs("tiny", stage="sweep")
    assert len(swept) == len(RATES) * 2
    pruned = [r for r in swept if r.status == "pruned"]
    done = [r for r in swept if r.status == "done"]
    assert pruned and done and len(pruned) + len(done) == len(swept)
    assert {r.epochs for r in pruned} <= {1, 2} and {r.epochs for r in done} == {4}  # rungs 1, 2
    assert sum(r.epochs for r in swept) < 4 * len(swept)

    # The Optuna study in the same database holds one trial per run, in the state of its run, and the
    # pruning decisions replay by the rule in the order the trials reported
    (summary,) = optuna.get_all_study_summaries(spec.database_url)
    trials = optuna.load_study(study_name=summary.study_name, storage=spec.database_url).get_trials()
    by_run = {t.user_attrs["run_id"]: t for t in trials}
    assert sorted(by_run) == sorted(r.id for r in swept) and len(trials) == len(swept)
    for r in swept:
        assert by_run[r.id].state.name == {"pruned": "PRUNED", "done": "COMPLETE"}[r.status]
        assert by_run[r.id].params["lr"] == r.lr and by_run[r.id].params["weight_decay"] == r.weight_decay
    for rung in (1, 2):
        reached = [t for t in sorted(trials, key=lambda t: t.number) if rung in t.intermediate_values]
        seen: list[float] = []
        for t in reached:
            seen.append(t.intermediate_values[rung])
            went_on = max(t.intermediate_values) > rung
            assert went_on == _promotable(seen[-1], seen, eta=2), (rung, t.number)

    # selection among the completed runs only
    (selection,) = db.selections("tiny", "sweep")
    best = min(done, key=lambda r: r.best_val_metric)
    assert (selection.lr, selection.weight_decay) == (best.lr, best.weight_decay)

    before = {r.id: (r.status, r.finished) for r in db.runs("tiny")}
    lines: list[str] = []
    run_study(load_study(raw), progress=lines.append)  # resumed: nothing to train, no new trial
    assert {r.id: (r.status, r.finished) for r in db.runs("tiny")} == before
    assert any("0 to run" in line for line in lines)
    assert len(optuna.load_study(study_name=summary.study_name, storage=spec.database_url).trials) == len(
        trials
    )

    from mlipopt.report import make_report

    make_report(spec.database_url, tmp_path / "report", study="tiny")
    index = (tmp_path / "report" / "index.md").read_text()
    assert "## Successive halving" in index and (tmp_path / "report" / "halving.png").is_file()
    row = next(line for line in index.splitlines() if line.startswith("| 100 % | adamw | sweep |"))
    assert f"| {sum(r.epochs for r in swept)} | {4 * len(swept)} |" in row


def test_a_grid_sweep_finishes_the_pruned_runs_as_a_grid_of_its_own(tmp_path):
    """A pruned run's checkpoint holds the first epochs of the full run: switched to a grid, the study
    resumes it, and every sweep run ends bitwise where the same run of a grid-only study ends."""
    halving = _raw(tmp_path / "a", "halving")
    run_study(load_study(halving), progress=lambda _: None)
    switched = {**halving, "sweep": {"method": "grid"}}
    run_study(load_study(switched), progress=lambda _: None)
    grid = _raw(tmp_path / "b", "grid")
    run_study(load_study(grid), progress=lambda _: None)
    resumed = {r.id: r for r in ResultsDB(load_study(switched).database_url).runs("tiny")}
    fresh = {r.id: r for r in ResultsDB(load_study(grid).database_url).runs("tiny")}
    assert sorted(resumed) == sorted(fresh)
    assert all(r.status == "done" and r.epochs == 4 for r in resumed.values() if r.stage == "sweep")
    for run_id, run in fresh.items():
        assert (resumed[run_id].best_val_metric, resumed[run_id].test_f_mae) == (
            run.best_val_metric,
            run.test_f_mae,
        ), run_id


@pytest.mark.parametrize(
    "sweep, executor, message",
    [
        ({"method": "bisect"}, {}, "must be grid or halving"),
        ({"method": "halving", "reduction_factor": 1}, {}, "reduction_factor must be ≥ 2"),
        ({"method": "halving", "min_epochs": 4}, {}, "below the sweep's 4 epochs"),
        ({"method": "halving"}, {"ranks_per_run": 2}, "needs executor.ranks_per_run=1"),
    ],
)
def test_a_sweep_that_cannot_run_says_why(tmp_path, sweep, executor, message):
    raw = _raw(tmp_path, "grid")
    raw["sweep"] = sweep
    raw["executor"] = {**raw["executor"], **executor}
    with pytest.raises(ConfigError, match=message):
        load_study(raw)


def _register(url, runs, queue):
    from mlipopt.study.halving import register_trials

    queue.put({k: v.trial for k, v in register_trials(url, "race", runs, 3, 1).items()})


def test_study_processes_registering_trials_at_once_agree_on_one_live_trial_per_run(tmp_path):
    """Several study processes on one database register the same sweep at once (a lock serialises it):
    each run is served by one trial, the same in every process, and no run has a second live trial.
    (On PostgreSQL, with its advisory lock: tests/study/test_postgres.py.)"""
    registering_at_once_gives_one_live_trial_per_run(f"sqlite:///{tmp_path / 'race.db'}")


def registering_at_once_gives_one_live_trial_per_run(url: str) -> None:
    import multiprocessing

    from mlipopt.study.db import database_url

    runs = [(f"run-{k}", {"lr": 10.0**-k, "weight_decay": 0.0}) for k in range(12)]
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_register, args=(url, runs, queue)) for _ in range(3)]
    for w in workers:
        w.start()
    maps = [queue.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    assert maps[0] == maps[1] == maps[2] and sorted(maps[0]) == sorted(k for k, _ in runs)
    trials = optuna.load_study(study_name="race", storage=database_url(url)).get_trials()
    live = [t for t in trials if t.state.name != "FAIL"]
    assert sorted(t.user_attrs["run_id"] for t in live) == sorted(k for k, _ in runs)
    assert {maps[0][t.user_attrs["run_id"]] for t in live} == {t.number for t in live}
