"""Several studies on one database share the work; a killed study leaves no worker behind."""

import os
import signal
import subprocess
import sys
import time
from multiprocessing import get_context

import psutil
import pytest
import yaml

from mlipopt.study import ResultsDB, load_study, run_config

from ..study.helpers import tiny_study


def _runs(tmp_path, n):
    spec = load_study(tiny_study(tmp_path))
    return spec, [
        run_config(spec, "adamw", 1.0, seed, 1e-3, 0.0, (1.0, 1.0), 2, "final") for seed in range(n)
    ]


def test_a_run_is_claimed_by_exactly_one_owner_until_its_lease_lapses(tmp_path):
    spec, runs = _runs(tmp_path, 1)
    db = ResultsDB(spec.database_url)
    db.register("tiny", runs)
    run_id = runs[0].run_id
    assert db.claim(run_id, "hostA:1:a", lease_seconds=60)
    assert not db.claim(run_id, "hostB:2:b", lease_seconds=60)  # held
    assert db.renew(run_id, "hostA:1:a", lease_seconds=0.01) and not db.renew(run_id, "hostB:2:b")
    time.sleep(0.05)  # hostA stopped renewing: its lease lapsed
    assert db.claim(run_id, "hostB:2:b", lease_seconds=60)
    assert not db.record_result(run_id, {"test": {}, "best_val_metric": 1.0}, [], owner="hostA:1:a")
    assert db.record_result(run_id, {"test": {}, "best_val_metric": 1.0}, [], owner="hostB:2:b")
    (row,) = db.runs("tiny")
    assert row.status == "done" and row.attempts == 2


def test_a_claim_of_a_dead_process_on_this_machine_is_taken_over_at_once(tmp_path):
    import socket

    spec, runs = _runs(tmp_path, 1)
    db = ResultsDB(spec.database_url)
    db.register("tiny", runs)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid is free now
    assert db.claim(runs[0].run_id, f"{socket.gethostname()}:{child.pid}:x", lease_seconds=3600)
    assert db.claimable(runs[0].run_id)
    assert db.claim(runs[0].run_id, f"{socket.gethostname()}:{os.getpid()}:y")


def test_a_retried_ray_task_takes_over_its_dead_attempt_and_no_other_claim(tmp_path):
    """Ray re-runs a task only after its attempt died (on a node this process cannot look at): the
    retry, same task id, takes the claim at once; a claim of another task, or a prefix with LIKE
    wildcards in it, does not."""
    spec, runs = _runs(tmp_path, 2)
    db = ResultsDB(spec.database_url)
    db.register("tiny", runs)
    first, other = runs[0].run_id, runs[1].run_id
    assert db.claim(first, "ray-task-aa01:node1:7:x", lease_seconds=3600)
    assert db.claim(other, "ray-task-bb02:node1:8:y", lease_seconds=3600)
    assert not db.claim(first, "ray-task-cc03:node2:9:z", succeeding="ray-task-cc03:")  # another task
    assert not db.claim(first, "ray-task-a_01:node2:9:z", succeeding="ray-task-a_01:")  # _ is no wildcard
    assert db.claim(first, "ray-task-aa01:node2:9:z", succeeding="ray-task-aa01:")  # its retry
    assert db.holder(first) == "ray-task-aa01:node2:9:z"
    db.note_resumed(first, "ray-task-aa01:node2:9:z", 3)
    db.note_resumed(first, "ray-task-aa01:node1:7:x", 99)  # the dead attempt: ignored
    assert db.run(first).resumed_from == 3 and db.run(first).attempts == 2
    # Ray gave up on a task: its claim is released at once; nobody else's is touched
    assert not db.abandon(other, "ray-task-aa01:", "lost")
    assert db.abandon(other, "ray-task-bb02:", "NodeDiedError: lost") and db.status(other) == "failed"
    assert db.claimable(other) and not db.claimable(first)


def _claim_all(url, run_ids, owner, queue):
    db = ResultsDB(url)
    queue.put([run_id for run_id in run_ids if db.claim(run_id, owner, lease_seconds=60)])


def test_processes_racing_for_the_same_runs_each_get_disjoint_claims(tmp_path):
    spec, runs = _runs(tmp_path, 12)
    ResultsDB(spec.database_url).register("tiny", runs)
    ids = [r.run_id for r in runs]
    context = get_context("spawn")
    queue = context.Queue()
    procs = [
        context.Process(target=_claim_all, args=(spec.database_url, ids, f"h:{i}:t", queue)) for i in range(4)
    ]
    for p in procs:
        p.start()
    claimed = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    flat = [run_id for got in claimed for run_id in got]
    assert sorted(flat) == sorted(ids)  # every run claimed once, none twice


def _study_file(tmp_path, **changes):
    raw = tiny_study(tmp_path, **changes)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return raw, path


def test_two_studies_started_at_once_train_each_run_once(tmp_path):
    raw, path = _study_file(
        tmp_path, optimizers={"adamw": {"lr": [1e-3, 5e-3]}}, seeds=[1, 2, 3], loss_ratios=[[1.0, 1.0]]
    )
    cmd = [sys.executable, "-m", "mlipopt.cli", "study", str(path)]
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    runs = ResultsDB(load_study(raw).database_url).runs("tiny")
    assert runs and all(r.status == "done" for r in runs)
    assert [r.attempts for r in runs] == [1] * len(runs), [(r.id, r.attempts) for r in runs]
    # both processes did some of the work (neither trained everything)
    trained = [sum(line.count("] adamw") for line in out.splitlines()) for out in outputs]
    assert sum(trained) == len(runs) and all(t < len(runs) for t in trained), (trained, outputs)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process-group kill test is for Linux")
def test_kill_9_of_a_study_leaves_no_worker_behind(tmp_path):
    raw, path = _study_file(tmp_path, seeds=[1, 2, 3, 4], executor={"workers": 2})
    raw["base"]["training"]["max_epochs"] = 30
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlipopt.cli", "study", str(path)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    parent = psutil.Process(proc.pid)
    deadline = time.time() + 120
    children = []
    while time.time() < deadline:
        children = [c for c in parent.children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]
        training = list((tmp_path / "study" / "runs").glob("*/config.yaml"))  # written as training starts
        if len(children) >= 2 and training:
            break
        time.sleep(0.2)
    assert len(children) >= 2, "the study never started its two workers"
    descendants = parent.children(recursive=True)
    proc.send_signal(signal.SIGKILL)  # only the study process: its workers must follow by themselves
    proc.wait()
    gone, alive = psutil.wait_procs(descendants, timeout=15)
    assert not alive, [" ".join(p.cmdline()) for p in alive]
