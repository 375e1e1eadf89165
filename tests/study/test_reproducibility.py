"""A study's table does not depend on the machine's thread count: each run trains on one torch thread
(issue 16), whatever the number of workers or the parent's threads; the report says what re-runs."""

import json
from types import SimpleNamespace

import torch

from mlipopt.report.trust import reproducibility_line
from mlipopt.study import ResultsDB, load_study, run_study

from .helpers import tiny_study


def _study(tmp_path, workers):
    raw = tiny_study(
        tmp_path,
        optimizers={"soap": {"lr": [5e-3]}, "soap_muon": {"lr": [5e-3]}},
        force_fractions=[0.1],
        seeds=[1],
        loss_ratios=[[1.0, 1.0]],
        executor={"workers": workers},
    )
    spec = load_study(raw)
    run_study(spec, progress=lambda _: None)
    db = ResultsDB(spec.database_url)
    return {(r.optimizer, r.stage): r for r in db.runs("tiny", status="done")}


def test_workers_and_the_parents_threads_do_not_change_a_studys_results(tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        one = _study(tmp_path / "a", workers=1)  # in this process, which had 2 threads
        torch.set_num_threads(1)
        two = _study(tmp_path / "b", workers=2)  # two spawned workers
    finally:
        torch.set_num_threads(before)
    assert set(one) == set(two) and ("soap_muon", "final") in one
    for key in one:
        a, b = json.loads(one[key].final), json.loads(two[key].final)
        assert a["torch_threads"] == b["torch_threads"] == 1
        assert a["test"] == b["test"], key  # bit for bit
        wa = torch.load(f"{one[key].run_dir}/best_model.pt", weights_only=True)["model"]
        wb = torch.load(f"{two[key].run_dir}/best_model.pt", weights_only=True)["model"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _run(threads, cpu="AMD EPYC 7B13"):
    return SimpleNamespace(
        final=json.dumps({"torch_threads": threads, "torch_version": "2.13.0", "cpu_model": cpu})
    )


def test_the_report_says_whether_a_rerun_reproduces_the_table():
    (single, _) = reproducibility_line([_run(1), _run(1)])
    assert "bit for bit" in single and "torch 2.13.0" in single and "Reproducibility:" in single
    # bits hold on the CPU model the runs record; elsewhere only what lies outside the seed spread
    assert "on AMD EPYC 7B13" in single and "On another CPU model" in single
    (two_cpus, _) = reproducibility_line([_run(1), _run(1, "Intel Xeon")])
    assert "on AMD EPYC 7B13 and Intel Xeon" in two_cpus
    (multi, _) = reproducibility_line([_run(1), _run(2)])
    assert (
        multi.startswith("**Reproducibility: runs trained with 1, 2 torch threads")
        and "threads_per_run=1" in multi
    )
    (old, _) = reproducibility_line([SimpleNamespace(final=json.dumps({}))])
    assert "predates" in old
