import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from mlipopt.study import ResultsDB, load_study, run_study

from .helpers import tiny_study


def test_stages_select_on_the_validation_metric_and_rerun_skips_finished_runs(tmp_path):
    spec = load_study(tiny_study(tmp_path))
    lines = []
    outcome = run_study(spec, progress=lines.append)
    db = ResultsDB(spec.database_url)
    runs = db.runs("tiny")
    assert all(r.status == "done" for r in runs)
    sweep = [r for r in runs if r.stage == "sweep"]
    assert len(sweep) == 4  # adamw: 2 lrs × 2 force fractions; soap has one point and is not swept
    for s in (1.0, 0.0):
        candidates = [r for r in sweep if r.force_fraction == s]
        best = min(candidates, key=lambda r: r.best_val_metric)
        assert outcome.best_point[("adamw", s)] == (best.lr, best.weight_decay)
    ratio = [r for r in runs if r.stage == "ratio"]
    # the default-ratio point of adamw is its best sweep run (same config, same id), so only 3 new runs
    assert len(ratio) == 3
    finals = [r for r in runs if r.stage == "final"]
    assert len(finals) == 2 * 2 * 2
    assert {(r.energy_weight, r.force_weight) for r in finals if r.optimizer == "soap"} == {
        outcome.best_ratio["soap"]
    }
    finished = {r.id: r.finished for r in runs}

    lines.clear()
    run_study(load_study(tiny_study(tmp_path)), progress=lines.append)
    assert {r.id: r.finished for r in db.runs("tiny")} == finished
    assert all("0 to run" in line for line in lines if "runs (" in line)


def test_a_final_seed_that_diverges_twice_is_reported_as_diverged_and_the_study_succeeds(tmp_path, capsys):
    """SGD at lr 1e9 diverges deterministically: the final runs diverge, each is re-run once at the next
    lower rate (3e8), diverges again, and the cell is reported as diverged with its seeds counted; the
    study writes its report and exits 0 (a divergence is a result, not an error)."""
    from mlipopt.cli import _run_study_and_report

    raw = tiny_study(
        tmp_path, optimizers={"adamw": {"lr": [1e-3]}, "sgd": {"lr": [1e9]}}, loss_ratios=[[1, 1]]
    )
    raw["force_fractions"] = [1.0]
    spec = load_study(raw)
    assert _run_study_and_report(spec, None) == 0
    db = ResultsDB(spec.database_url)
    diverged = db.runs("tiny", status="diverged")
    assert {(r.lr, r.seed) for r in diverged} == {(1e9, 1), (1e9, 2), (3e8, 1), (3e8, 2)}
    assert all("TrainingDiverged" in r.error for r in diverged)
    retries = {r.retry_of for r in diverged if r.retry_of}
    assert retries == {r.id for r in diverged if r.lr == 1e9}
    assert db.runs("tiny", status="failed") == [] and len(db.runs("tiny", status="done")) == 2
    table = (spec.folder / "mae_table.md").read_text()
    assert "| 100 % | sgd | 0 of 2 | — | — | — | ⚠ diverged 2/2 |" in table
    index = (spec.folder / "index.md").read_text()
    out = capsys.readouterr().out
    for line in ("- Final runs: 2 of 4 seeds in the table; 2 did not converge (ended at the epoch cap).",
                 "  - sgd s = 100 % seed 1: diverged at lr 1e+09"):  # fmt: skip
        assert line in index and line in out  # stdout and the report count alike

    # a re-run trains nothing again: a divergence is deterministic, retrying the same rate cannot help
    lines = []
    run_study(load_study(raw), progress=lines.append)
    assert all("0 to run" in line for line in lines if "runs (" in line)


def test_a_final_seed_that_diverges_is_rerun_at_the_next_lower_rate_of_its_grid(tmp_path, monkeypatch):
    """Seed 2 diverges at the selected rate (made to, here): its retry at the grid's next lower rate is
    the run in the table, and the report says so beside it."""
    from mlipopt.study import jobs
    from mlipopt.train import Trainer, TrainingDiverged

    class DivergesAtTheSelectedRate(Trainer):
        def fit(self):
            c = self.config
            if c.seed == 2 and c.optimizer.lr == 5e-3 and c.training.max_epochs == 2:
                raise TrainingDiverged("loss is nan at epoch 2, batch 1; made to diverge")
            return super().fit()

    monkeypatch.setattr(jobs, "Trainer", DivergesAtTheSelectedRate)
    raw = tiny_study(tmp_path, optimizers={"adamw": {"lr": [1e-3, 5e-3]}}, loss_ratios=[[1, 1]])
    raw["force_fractions"] = [1.0]
    spec = load_study(raw)
    db = ResultsDB(spec.database_url)
    run_study(spec, progress=lambda _: None)
    [selection] = db.selections("tiny", "sweep")
    if selection.lr != 5e-3:
        pytest.skip(f"the sweep selected lr {selection.lr:g}, not the rate made to diverge")
    [diverged] = db.runs("tiny", status="diverged")
    [retry] = [r for r in db.runs("tiny", status="done") if r.retry_of == diverged.id]
    assert (diverged.seed, diverged.lr, retry.seed, retry.lr) == (2, 5e-3, 2, 1e-3)
    from mlipopt.report import make_report

    index = make_report(spec.database_url.removeprefix("sqlite:///")).read_text()
    assert "| 100 % | adamw | 2 | " in index and "⚠ lower lr 1/2, not converged 2/2 |" in index
    assert "re-run at lr 0.001, which is the run in the table" in index


def test_a_cell_whose_selected_rate_fails_on_most_seeds_is_rerun_at_the_next_lower_rate(
    tmp_path, monkeypatch, capsys
):
    """Seeds 1 and 2 of 3 diverge at the selected rate 3e-3 (made to): more than half the cell failed, so
    every seed is re-run once at the next lower rate (1e-3) and the table reports the cell at that rate,
    all three seeds, the runs at 3e-3 kept but superseded; a re-run of the study trains nothing."""
    from mlipopt.cli import _run_study_and_report
    from mlipopt.study import jobs
    from mlipopt.train import Trainer, TrainingDiverged

    class DivergesAtTheSelectedRate(Trainer):
        def fit(self):
            c = self.config
            if c.seed in (1, 2) and c.optimizer.lr == 3e-3:
                raise TrainingDiverged("loss is nan at epoch 2, batch 1; made to diverge")
            return super().fit()

    monkeypatch.setattr(jobs, "Trainer", DivergesAtTheSelectedRate)
    raw = tiny_study(tmp_path, optimizers={"adamw": {"lr": [3e-3]}}, loss_ratios=[[1, 1]], seeds=[1, 2, 3])
    raw["force_fractions"] = [1.0]
    spec = load_study(raw)
    assert _run_study_and_report(spec, None) == 0
    db = ResultsDB(spec.database_url)
    [revision] = db.selections("tiny", "revision")
    assert (revision.optimizer, revision.force_fraction, revision.lr) == ("adamw", 1.0, 1e-3)
    finals = db.runs("tiny", stage="final")
    assert sorted((r.seed, r.lr, r.status) for r in finals) == [(s, 1e-3, "done") for s in (1, 2, 3)]
    superseded = db.runs("tiny", stage="superseded")
    assert sorted((r.seed, r.lr) for r in superseded) == [(s, 3e-3) for s in (1, 2, 3)]
    index = (spec.folder / "index.md").read_text()
    out = capsys.readouterr().out
    for line in ("- Final runs: 3 of 3 seeds in the table",
                 "- adamw s = 100 %: the selected lr 0.003 failed on 2 of 3 final seeds (diverged); the cell "
                 "was re-run at lr 0.001, which is the rate in the table"):  # fmt: skip
        assert line in index and line in out
    assert "| 100 % | adamw | 3 | " in index and "re-run at lr 0.001" in index
    assert "0.003 → **0.001**" in index  # the selection table shows the revision

    lines = []
    run_study(load_study(raw), progress=lines.append)
    assert all("0 to run" in line for line in lines if "runs (" in line)
    assert sorted((r.seed, r.lr) for r in db.runs("tiny", stage="final")) == [(s, 1e-3) for s in (1, 2, 3)]

    # a second study process on the database, at the end of its first final runs (at 3e-3), finds the
    # revision the first process recorded: it goes on to the revised runs instead of ending its stage
    from mlipopt.study.runner import StudyRunner
    from mlipopt.study.spec import run_config

    again = load_study(raw)
    runner = StudyRunner(again, progress=lambda _: None)

    def at(lr: float) -> list:
        return [run_config(again, "adamw", 1.0, r.seed, lr, r.weight_decay, (r.energy_weight, r.force_weight),
                           again.final_epochs(), "final") for r in superseded]  # fmt: skip

    assert runner.revise(at(3e-3)) and not runner.revise(at(1e-3))
    assert len(db.selections("tiny", "revision")) == 1  # recorded once


def test_a_run_that_fails_with_an_error_is_recorded_and_the_study_goes_on(tmp_path, monkeypatch, capsys):
    """A fault (not a divergence) is recorded as failed, the other runs go on, the command exits 1 with
    advice that can work, and a re-run retries only the failed run."""
    from mlipopt.cli import _run_study_and_report
    from mlipopt.study import jobs
    from mlipopt.train import Trainer

    class FailsOnce(Trainer):
        def fit(self):
            if self.config.seed == 2 and self.config.optimizer.name == "soap":
                raise OSError(28, "No space left on device")
            return super().fit()

    monkeypatch.setattr(jobs, "Trainer", FailsOnce)
    raw = tiny_study(tmp_path, optimizers={"adamw": {"lr": [1e-3]}, "soap": {"lr": [5e-3]}},
                     loss_ratios=[[1, 1]], force_fractions=[1.0])  # fmt: skip
    spec = load_study(raw)
    assert _run_study_and_report(spec, None) == 1
    err = capsys.readouterr().err
    assert "1 run(s) ended with an error" in err and "rerun the same command" in err
    db = ResultsDB(spec.database_url)
    [failed] = db.runs("tiny", status="failed")
    assert failed.optimizer == "soap" and failed.seed == 2 and "No space left" in failed.error
    assert len(db.runs("tiny", status="done")) == 3
    monkeypatch.setattr(jobs, "Trainer", Trainer)
    assert _run_study_and_report(load_study(raw), None) == 0
    assert len(db.runs("tiny", status="done")) == 4


def test_a_sweep_run_that_diverges_is_left_out_of_the_selection_not_a_failure(tmp_path):
    """A too-high rate is an answer of the sweep (the demo's SOAP at s = 0 diverged at lr 1): the study
    selects among the others and does not report a failure (exit status 0)."""
    raw = tiny_study(tmp_path, optimizers={"adamw": {"lr": [1e-3, 1e9]}}, loss_ratios=[[1, 1]])
    raw["force_fractions"] = [1.0]
    lines = []
    outcome = run_study(load_study(raw), progress=lines.append)
    db = ResultsDB(load_study(raw).database_url)
    [diverged] = db.runs("tiny", status="diverged")
    assert diverged.stage == "sweep" and diverged.lr == 1e9 and outcome.diverged == [diverged.id]
    assert outcome.failed == [] and outcome.best_point[("adamw", 1.0)] == (1e-3, 0.0)
    assert any("diverged (loss not finite) — left out of the selection" in line for line in lines)
    assert {r.lr for r in db.runs("tiny", stage="final", status="done")} == {1e-3}


def test_killing_a_real_study_loses_no_finished_result(tmp_path):
    """Start `mlipopt study`, SIGKILL it once a final run is in the database, restart, and finish."""
    raw = tiny_study(tmp_path, seeds=[1, 2, 3])
    raw["base"]["training"]["max_epochs"] = 4
    study_file = tmp_path / "tiny.yaml"
    study_file.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "mlipopt.cli", "study", str(study_file)]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    url = load_study(raw).database_url
    deadline = time.time() + 300
    done_before: dict[str, str] = {}
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if os.path.exists(url.removeprefix("sqlite:///")):
            done_before = {
                r.id: r.finished for r in ResultsDB(url).runs("tiny", status="done") if r.stage == "final"
            }
            if done_before:
                break
    assert proc.poll() is None, (
        "the study finished before it could be killed: " + proc.stderr.read().decode()[-2000:]
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    db = ResultsDB(url)
    for run_id, finished in done_before.items():
        run = [r for r in db.runs("tiny") if r.id == run_id][0]
        assert run.status == "done" and run.finished == finished and json.loads(run.final)["test"]

    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True, timeout=600)
    runs = db.runs("tiny")
    assert all(r.status == "done" for r in runs)
    assert len([r for r in runs if r.stage == "final"]) == 2 * 2 * 3
    for run_id, finished in done_before.items():  # finished runs were not trained again
        assert [r.finished for r in runs if r.id == run_id] == [finished]
    assert (tmp_path / "study" / "index.md").is_file()


def test_ray_executor(tmp_path):
    ray = pytest.importorskip("ray")
    raw = tiny_study(tmp_path, optimizers={"adamw": {"lr": [1e-3]}}, loss_ratios=[[1, 1]], seeds=[1, 2])
    raw["executor"] = {"kind": "ray", "threads_per_run": 1}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_study(load_study(raw), progress=lambda _: None)
    finally:
        ray.shutdown()
    runs = ResultsDB(load_study(raw).database_url).runs("tiny")
    assert len(runs) == 4 and all(r.status == "done" for r in runs)


def test_then_refine_stage_refines_the_best_optimizers_and_reports_base_vs_lbfgs(tmp_path):
    from mlipopt.report import make_report

    raw = tiny_study(
        tmp_path, optimizers={"adamw": {"lr": [5e-3]}, "soap": {"lr": [5e-3]}}, loss_ratios=[[1, 1]]
    )
    raw["force_fractions"] = [1.0]
    raw["refine"] = {"top": 1, "iterations": 2, "memory": 3, "patience": 2}
    spec = load_study(raw)
    run_study(spec, progress=lambda _: None)
    db = ResultsDB(spec.database_url)
    finals = [r for r in db.runs("tiny") if r.stage == "final"]
    best = min(
        {r.optimizer for r in finals},
        key=lambda o: sum(r.best_val_metric for r in finals if r.optimizer == o),
    )
    refined = {r.optimizer for r in finals if db.refinement(r.id) is not None}
    assert refined == {best}
    assert all(db.refinement(r.id).status == "done" for r in finals if r.optimizer == best)
    text = make_report(spec.database_url.removeprefix("sqlite:///")).read_text()
    assert "## L-BFGS refinement (base → +L-BFGS, test MAE" in text
    assert f"| 100 % | {best} | 2 |" in text


def test_a_study_trains_each_run_on_two_data_parallel_processes(tmp_path):
    """executor.ranks_per_run=2 launches every training run under torchrun; rank 0's results land in
    the database once, and match the single-process study to round-off."""
    from .helpers import TINY_STUDY

    def study(folder, ranks):
        base = {**TINY_STUDY["base"], "model": {"preset": "nequip-tiny", "dtype": "float64"}}
        raw = tiny_study(
            folder, base=base, optimizers={"adamw": {"lr": [5e-3]}}, force_fractions=[0.5], seeds=[1],
            loss_ratios=[[1.0, 1.0]], executor={"workers": 1, "ranks_per_run": ranks},
        )  # fmt: skip
        spec = load_study(raw)
        assert run_study(spec, progress=lambda _: None).failed == []
        return {r.stage: r for r in ResultsDB(spec.database_url).runs("tiny")}

    parallel, single = study(tmp_path / "two", 2), study(tmp_path / "one", 1)
    assert parallel.keys() == single.keys() and "final" in parallel
    for stage, run in parallel.items():
        assert run.status == "done" and run.attempts == 1
        final = json.loads(run.final)
        assert final["world_size"] == 2 and json.loads(single[stage].final)["world_size"] == 1
        assert run.test_f_mae == pytest.approx(single[stage].test_f_mae, rel=1e-8)
        assert "launch.yaml" in os.listdir(run.run_dir) and "train.log" in os.listdir(run.run_dir)


def test_default_grids_try_weight_decays_on_the_selected_rate_so_adam_and_adamw_differ(tmp_path, monkeypatch):
    import dataclasses
    from types import MappingProxyType

    from mlipopt.optim import registry
    from mlipopt.optim.registry import DEFAULT_WEIGHT_DECAYS

    short = {
        n: dataclasses.replace(s, lr_grid=(1e-3, 5e-3)) if n in ("adam", "adamw") else s
        for n, s in registry.OPTIMIZERS.items()
    }  # two rates keep the test short; the decay stage is tested
    monkeypatch.setattr(registry, "OPTIMIZERS", MappingProxyType(short))  # fmt: skip
    raw = tiny_study(tmp_path, optimizers={"adam": {}, "adamw": {}, "soap": {"lr": [5e-3, 1e-2]}},
                     loss_ratios=[[1, 1]], seeds=[1])  # fmt: skip
    raw["force_fractions"] = [1.0]
    spec = load_study(raw)
    run_study(spec, progress=lambda _: None)
    db = ResultsDB(spec.database_url)
    sweeps = {name: [r for r in db.runs("tiny", stage="sweep") if r.optimizer == name] for name in
              ("adam", "adamw", "soap")}  # fmt: skip
    assert {r.weight_decay for r in sweeps["soap"]} == {0.0}  # rates given, decays not: no decay stage
    selections = {s.optimizer: s for s in db.selections("tiny", "sweep")}
    for name in ("adam", "adamw"):
        runs = sweeps[name]
        lr = selections[name].lr
        assert sorted((r.lr, r.weight_decay) for r in runs) == sorted(
            [(1e-3, 0.0), (5e-3, 0.0)] + [(lr, wd) for wd in DEFAULT_WEIGHT_DECAYS if wd]
        )  # the rate sweep without decay, then every default decay on the selected rate
        at_rate = [r for r in runs if r.lr == lr]
        best = min(at_rate, key=lambda r: r.best_val_metric)
        assert selections[name].weight_decay == best.weight_decay  # the best of them is the selection
        [final] = [r for r in db.runs("tiny", stage="final") if r.optimizer == name]
        assert final.weight_decay == best.weight_decay
    # without decay adam and adamw are one optimizer (bitwise the same runs); with it they differ
    metric = {
        name: {(r.lr, r.weight_decay): r.best_val_metric for r in sweeps[name]} for name in ("adam", "adamw")
    }
    assert all(metric["adam"][(lr, 0.0)] == metric["adamw"][(lr, 0.0)] for lr in (1e-3, 5e-3))
    decayed = [k for k in metric["adam"] if k in metric["adamw"] and k[1] > 0]  # both selected that rate
    assert all(metric["adam"][k] != metric["adamw"][k] for k in decayed)
    # a resumed study trains nothing again
    before = len(db.runs("tiny"))
    run_study(spec, progress=lambda _: None)
    assert len(ResultsDB(spec.database_url).runs("tiny")) == before
