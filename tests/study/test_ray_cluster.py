"""A study on a Ray cluster of a head and two worker nodes (issue 26): one worker node is killed while it
trains a run. The study finishes; every run is recorded once; the run that was on the dead node is
re-run on the other node from its last checkpoint in the shared study folder, and ends bitwise where
the same run trained without interruption ends; the report is complete."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import torch
import yaml
from sqlalchemy import func, select

from mlipopt.study import ResultsDB, load_study
from mlipopt.study.db import Epoch, Run, lease_duration
from mlipopt.study.jobs import checkpoint_epoch
from mlipopt.train import Trainer, load_config

from .helpers import tiny_study

ray = pytest.importorskip("ray", reason="the Ray executor: pip install 'mlipopt[ray]'")
from ray.cluster_utils import Cluster  # noqa: E402

EPOCHS = 24  # caught past epoch 2: 22 epochs of margin, so the run cannot finish before its node dies


@pytest.fixture
def cluster():
    """A head that schedules nothing (as a login node) and two one-CPU worker nodes, on this machine."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        yield cluster, workers
    finally:
        cluster.shutdown()


def _alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie (a killed node's worker may linger unreaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _running_with_checkpoint(db: ResultsDB, min_epoch: int) -> tuple[Run, int] | None:
    for run in db.runs("tiny", status="running"):
        if (run.owner or "").startswith("ray-task-") and (
            epoch := checkpoint_epoch(run.run_dir)
        ) >= min_epoch:
            return run, epoch
    return None


@dataclass
class Kill:
    """A study started on the cluster and the worker node killed under one of its runs."""

    study: subprocess.Popen
    command: list[str]
    db: ResultsDB
    run: Run  # the run the killed node trained
    epoch: int  # its checkpoint's epoch when the node was killed
    node: str  # the killed node's id (prefix)
    at: float  # when


def _start_and_kill_a_node(tmp_path, cluster, workers, max_retries: int) -> Kill:
    raw = tiny_study(
        tmp_path,
        optimizers={"adamw": {"lr": [1e-3]}, "soap": {"lr": [5e-3]}},
        force_fractions=[1.0],
        loss_ratios=[[1.0, 1.0]],
        seeds=[1, 2],
    )
    raw["base"]["data"]["generate"]["n_frames"] = 40
    raw["base"]["data"]["split"] = [32, 4, 4]
    raw["base"]["training"]["max_epochs"] = EPOCHS
    raw["executor"] = {"kind": "ray", "address": cluster.address, "threads_per_run": 1}
    raw["executor"]["max_retries"] = max_retries
    study_file = tmp_path / "tiny.yaml"
    study_file.write_text(yaml.safe_dump(raw))
    command = [sys.executable, "-m", "mlipopt.cli", "study", str(study_file)]
    study = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    db = ResultsDB(load_study(raw).database_url)

    deadline, victim = time.time() + 300, None
    while time.time() < deadline and study.poll() is None and victim is None:
        time.sleep(0.2)
        victim = _running_with_checkpoint(db, min_epoch=2)
    assert victim is not None, "no run was caught mid-run: " + study.stdout.read().decode()[-3000:]
    run, epoch_at_kill = victim
    _, node, pid, _ = run.owner.split(":")  # ray-task-<task>:<node>:<pid>:<token>
    dead = next(w for w in workers if w.node_id.startswith(node))
    cluster.remove_node(dead, allow_graceful=False)
    killed = time.time()
    while _alive(int(pid)) and time.time() - killed < 60:
        time.sleep(0.2)
    assert not _alive(int(pid)), "the worker process of the killed node is still training"
    return Kill(study, command, db, run, epoch_at_kill, node, killed)


def _assert_complete(db: ResultsDB) -> list[Run]:
    """Every run done and recorded once, with one row per epoch: none lost, none doubled."""
    runs = db.runs("tiny")
    assert len(runs) == 2 * 1 * 2 and all(r.status == "done" for r in runs)
    with db.engine.connect() as connection:
        ids = connection.execute(select(Run.id).where(Run.study == "tiny")).scalars().all()
        rows = connection.execute(
            select(Epoch.run_id, Epoch.epoch, func.count()).group_by(Epoch.run_id, Epoch.epoch)
        ).all()
    assert len(ids) == len(set(ids)) == len(runs)
    assert all(count == 1 for _, _, count in rows)
    for r in runs:
        assert sorted(e for i, e, _ in rows if i == r.id) == list(range(1, EPOCHS + 1)), r.id
    return runs


def test_a_worker_node_killed_mid_run_loses_nothing_and_its_run_resumes_exactly(tmp_path, cluster):
    cluster, workers = cluster
    kill = _start_and_kill_a_node(tmp_path, cluster, workers, max_retries=3)
    db, run, node, epoch_at_kill, killed = kill.db, kill.run, kill.node, kill.epoch, kill.at
    study = kill.study
    output = study.communicate(timeout=900)[0].decode()
    assert study.returncode == 0, output[-3000:]
    runs = _assert_complete(db)

    again = next(r for r in runs if r.id == run.id)
    assert again.attempts == 2 and again.resumed_from >= epoch_at_kill >= 2  # from its checkpoint
    assert node not in again.owner  # finished on the surviving node
    restarted = datetime.fromisoformat(again.started).timestamp() - killed
    assert restarted < lease_duration() / 2, (
        f"re-run {restarted:.0f} s after the kill: it waited for the lease"
    )
    assert all(r.attempts == 1 and r.resumed_from == 0 for r in runs if r.id != run.id)

    config = {**json.loads(again.config), "run_dir": str(tmp_path / "uninterrupted")}
    trainer = Trainer(load_config(config), log=lambda _: None)  # the same run, never interrupted
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as on the worker node (threads_per_run: 1): bitwise needs the same threads
    try:
        reference = trainer.fit()
    finally:
        torch.set_num_threads(threads)
    assert json.loads(again.final)["test"] == reference["test"]
    assert [row["val_f_mae"] for row in trainer.history] == [e.val_f_mae for e in db.curve(again.id)]

    from mlipopt.report import make_report

    make_report(db.url, tmp_path / "report", study="tiny")
    table = (tmp_path / "report" / "mae_table.csv").read_text()
    assert "adamw" in table and "soap" in table


def test_a_run_ray_gives_up_on_is_marked_failed_at_once_and_resumed_by_the_next_study(tmp_path, cluster):
    """With no retries left, the run of the dead node is released (not left "running" until its lease
    lapses), the study finishes the others and says so; started again, it resumes that run."""
    cluster, workers = cluster
    kill = _start_and_kill_a_node(tmp_path, cluster, workers, max_retries=0)
    output = kill.study.communicate(timeout=900)[0].decode()
    lost = kill.db.run(kill.run.id)
    assert lost.status == "failed" and "Ray lost the task" in lost.error, output[-3000:]
    assert datetime.fromisoformat(lost.finished).timestamp() - kill.at < lease_duration() / 2
    assert "FAILED — " in output and "Ray lost the task" in output  # the study says so
    done = [r for r in kill.db.runs("tiny") if r.id != kill.run.id]
    assert len(done) == 3 and all(r.status == "done" for r in done), output[-3000:]

    again = subprocess.run(kill.command, cwd=tmp_path, capture_output=True, timeout=900)
    assert again.returncode == 0, again.stdout.decode()[-3000:] + again.stderr.decode()[-3000:]
    runs = _assert_complete(kill.db)
    resumed = next(r for r in runs if r.id == kill.run.id)
    assert resumed.attempts == 2 and resumed.resumed_from >= kill.epoch >= 2
    assert [r.finished for r in runs if r.id != kill.run.id] == [r.finished for r in done]  # not retrained
