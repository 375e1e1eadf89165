"""A study on a real PostgreSQL server (issue 26): two study processes share one database, one is
killed with SIGKILL mid-run and started again; every run is trained and recorded once, and the report
equals the one of the same study on SQLite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from sqlalchemy import func, select

from mlipopt.study import ResultsDB, load_study, run_study
from mlipopt.study.db import Epoch, Run, database_url

from .helpers import tiny_study
from .postgres_server import postgres_server, server_binaries
from .test_halving import registering_at_once_gives_one_live_trial_per_run

pytest.importorskip("psycopg", reason="the PostgreSQL driver: pip install 'mlipopt[postgres]'")
if server_binaries() is None:
    pytest.skip(
        "no PostgreSQL server binaries (initdb) on this machine: apt-get install postgresql",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def postgres_url():
    with postgres_server() as url:
        yield url


def _study(tmp_path, database: str | None) -> dict:
    raw = tiny_study(tmp_path, seeds=[1, 2, 3])
    raw["base"]["training"]["max_epochs"] = 4
    if database:
        raw["database"] = database
    return raw


def test_a_bare_postgresql_url_gets_the_installed_driver():
    assert database_url("postgresql://u@h:5/d") == "postgresql+psycopg://u@h:5/d"
    assert database_url("postgresql+psycopg2://u@h/d") == "postgresql+psycopg2://u@h/d"  # named: kept
    assert database_url("sqlite:///x.db") == "sqlite:///x.db"


def test_halving_trials_registered_at_once_on_postgresql_are_one_per_run(postgres_url):
    """Three processes register one sweep's trials at once under PostgreSQL's advisory lock."""
    registering_at_once_gives_one_live_trial_per_run(postgres_url)


def test_two_studies_on_postgresql_survive_a_kill_and_report_what_sqlite_does(tmp_path, postgres_url):
    raw = _study(tmp_path / "pg", postgres_url)
    study_file = tmp_path / "tiny.yaml"
    study_file.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "mlipopt.cli", "study", str(study_file)]

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )

    victim, survivor = start(), start()
    db = ResultsDB(postgres_url)
    deadline, done_before = time.time() + 300, {}
    while time.time() < deadline and victim.poll() is None:
        time.sleep(0.5)
        done_before = {r.id: r.finished for r in db.runs("tiny", status="done") if r.stage == "final"}
        if done_before:
            break
    assert victim.poll() is None, "finished before it could be killed: " + victim.stderr.read().decode()
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True, timeout=900)  # the killed one, again
    assert survivor.wait(timeout=900) == 0, survivor.stderr.read().decode()[-2000:]

    runs = db.runs("tiny")
    assert runs and all(r.status == "done" for r in runs)
    assert len([r for r in runs if r.stage == "final"]) == 2 * 2 * 3  # (adamw, soap) × 2 fractions × 3 seeds
    for run_id, finished in done_before.items():  # finished before the kill: not trained again
        assert [r.finished for r in runs if r.id == run_id] == [finished]
    with db.engine.connect() as connection:  # no row lost or duplicated
        ids = connection.execute(select(Run.id).where(Run.study == "tiny")).scalars().all()
        assert len(ids) == len(set(ids)) == len(runs)
        per_epoch = connection.execute(
            select(Epoch.run_id, Epoch.epoch, func.count()).group_by(Epoch.run_id, Epoch.epoch)
        ).all()
    assert per_epoch and all(count == 1 for _, _, count in per_epoch)
    epochs = {}
    for run_id, epoch, _ in per_epoch:
        epochs.setdefault(run_id, set()).add(epoch)
    for r in runs:  # every epoch the run trained has its row, from 1 to its last
        assert epochs[r.id] == set(range(1, r.epochs + 1)), r.id

    sqlite = load_study(_study(tmp_path / "sqlite", None))
    run_study(sqlite, progress=lambda _: None)
    from mlipopt.report import make_report

    make_report(postgres_url, tmp_path / "report-pg", study="tiny")
    make_report(sqlite.database_url, tmp_path / "report-sqlite", study="tiny")
    table = "mae_table.csv"
    assert (tmp_path / "report-pg" / table).read_text() == (tmp_path / "report-sqlite" / table).read_text()
