import multiprocessing

from mlipopt.study import ResultsDB, load_study, run_config

from .helpers import tiny_study


def _runs(tmp_path, n):
    spec = load_study(tiny_study(tmp_path))
    return [run_config(spec, "adamw", 1.0, seed, 1e-3, 0.0, (1.0, 1.0), 2, "final") for seed in range(n)]


def _history(n_epochs):
    return [
        {"epoch": e, "train_time_s": 0.1 * e, "eval_time_s": 0.01, "lr": 1e-3, "train_loss": 1.0 / e,
         "val_e_mae": 10.0 / e, "val_e_rmse": 12.0 / e, "val_f_mae": None, "val_f_rmse": None,
         "val_metric": 100.0 / e}
        for e in range(1, n_epochs + 1)
    ]  # fmt: skip


def test_register_record_and_read_back(tmp_path):
    db = ResultsDB(f"sqlite:///{tmp_path / 'r.db'}")
    runs = _runs(tmp_path, 2)
    db.register("tiny", runs)
    db.register("tiny", runs)  # idempotent
    assert [r.status for r in db.runs("tiny")] == ["pending", "pending"]
    db.mark_running(runs[0].run_id)
    final = {"test": {"e_mae": 1.5, "e_rmse": 2.0, "f_mae": 30.0, "f_rmse": 40.0}, "best_val_metric": 45.0,
             "train_time_s": 3.0, "epochs": 3, "steps_per_epoch": 2}  # fmt: skip
    db.record_result(runs[0].run_id, final, _history(3))
    db.record_result(runs[0].run_id, final, _history(3))  # a rewrite replaces the curve, no duplicates
    done = db.runs("tiny", status="done")
    assert len(done) == 1 and done[0].test_f_mae == 30.0 and done[0].steps_per_epoch == 2
    assert [e.epoch for e in db.curve(runs[0].run_id)] == [1, 2, 3]
    db.mark_failed(runs[1].run_id, "TrainingDiverged: loss is nan")
    assert db.status(runs[1].run_id) == "diverged"  # a result of the rate: never claimed again
    assert not db.claimable(runs[1].run_id)
    db.mark_failed(runs[1].run_id, "OSError: disk full")
    assert db.status(runs[1].run_id) == "failed" and db.claimable(runs[1].run_id)  # a fault: retried
    assert db.studies() == ["tiny"]


def _writer(url, run_ids, worker):
    db = ResultsDB(url)
    for i, run_id in enumerate(run_ids):
        if i % 4 == worker:
            db.mark_running(run_id)
            db.record_result(run_id, {"test": {"e_mae": float(i)}, "best_val_metric": float(i)}, _history(20))


def test_concurrent_writers_do_not_corrupt_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    runs = _runs(tmp_path, 24)
    ResultsDB(url).register("tiny", runs)
    ids = [r.run_id for r in runs]
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_writer, args=(url, ids, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    db = ResultsDB(url)
    done = {r.id: r for r in db.runs("tiny", status="done")}
    assert len(done) == 24
    for i, run_id in enumerate(ids):
        assert done[run_id].test_e_mae == float(i)
        assert len(db.curve(run_id)) == 20


def test_a_config_shared_by_a_sweep_and_the_final_stage_is_reported_as_final(tmp_path):
    spec = load_study(tiny_study(tmp_path))
    sweep = run_config(spec, "adamw", 1.0, 7, 1e-3, 0.0, (1.0, 1.0), 2, "sweep")
    final = run_config(spec, "adamw", 1.0, 7, 1e-3, 0.0, (1.0, 1.0), 2, "final")
    db = ResultsDB(f"sqlite:///{tmp_path / 'r.db'}")
    db.register("tiny", [sweep])
    db.register("tiny", [final])
    assert [(r.id, r.stage) for r in db.runs("tiny")] == [(sweep.run_id, "final")]


def _open(url, barrier):
    barrier.wait()
    ResultsDB(url).studies()


def test_processes_opening_a_new_database_at_once(tmp_path):
    """Table creation races between processes that open a fresh database simultaneously."""
    context = multiprocessing.get_context("spawn")
    for trial in range(3):
        url = f"sqlite:///{tmp_path / f'new{trial}.db'}"
        barrier = context.Barrier(4)
        procs = [context.Process(target=_open, args=(url, barrier)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
            assert p.exitcode == 0


def test_a_selection_written_by_another_study_in_between_is_replaced_not_an_error(tmp_path):
    """``merge`` reads then inserts: a second study inserting the same key in between made the insert fail
    on the primary key (seen in CI with two studies started at once). The write is retried and replaces."""
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    url = f"sqlite:///{tmp_path / 'r.db'}"
    mine, other = ResultsDB(url), ResultsDB(url)
    raced = []

    def other_study_writes_first(session, flush_context, instances):
        if not raced and session.bind is mine.engine:
            raced.append(True)
            other.record_selection(
                "tiny", "sweep", "adamw", 1.0, lr=5e-3, grid=[1e-3, 5e-3], position="upper edge"
            )

    event.listen(Session, "before_flush", other_study_writes_first)
    try:
        mine.record_selection(
            "tiny", "sweep", "adamw", 1.0, lr=1e-3, grid=[1e-3, 5e-3], position="lower edge"
        )
    finally:
        event.remove(Session, "before_flush", other_study_writes_first)
    assert raced == [True]
    [row] = ResultsDB(url).selections("tiny")
    assert (row.lr, row.position) == (1e-3, "lower edge")


def test_fidelity_results_of_an_older_database_are_carried_over(tmp_path):
    """Older databases keyed fidelity results by (run, protocol) in a table ``fidelity``; the
    temperature is now part of the key and read from the stored result."""
    import json
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE fidelity (run_id VARCHAR(120), protocol VARCHAR(20), result TEXT, "
            "recorded VARCHAR(40), PRIMARY KEY (run_id, protocol))"
        )
        result = {"label": "r1", "survived": 1.0, "temperature_K": 600.0}
        old.execute("INSERT INTO fidelity VALUES ('r1', 'molecule', ?, 'then')", (json.dumps(result),))
    db = ResultsDB(f"sqlite:///{path}")
    assert db.fidelity_results(["r1"]) == [("r1", "molecule", 600.0, result)]
    assert db.fidelity("r1", "molecule", 600.0) == result
    ResultsDB(f"sqlite:///{path}")  # reopening copies nothing twice
    assert len(db.fidelity_results(["r1"])) == 1


def test_runs_of_an_older_architectures_database_get_their_cell_columns_from_the_name(tmp_path):
    """Databases written before runs had cell columns: filled once when opened, so the report reads
    columns only; an ordinary study stays without a cell."""
    from mlipopt.study.db import Run

    spec = load_study(tiny_study(tmp_path))
    runs = [run_config(spec, "adamw", 1.0, seed, 1e-3, 0.0, (1.0, 1.0), 2, "final") for seed in (1, 2, 3)]
    db = ResultsDB(spec.database_url)
    db.register("arch__nequip-tiny__N50", runs[:1])
    db.register("arch__cartesian-tiny", runs[1:2])
    db.register("tiny", runs[2:])
    assert db.cells("arch") == {}  # registered without a cell, as an older mlipopt did
    assert ResultsDB(spec.database_url).cells("arch") == {
        "arch__nequip-tiny__N50": ("nequip-tiny", 50),
        "arch__cartesian-tiny": ("cartesian-tiny", None),
    }
    plain = ResultsDB(spec.database_url).run(runs[2].run_id)
    assert isinstance(plain, Run) and (plain.parent, plain.model, plain.train_size) == (None, None, None)
    assert ResultsDB(spec.database_url).parents() == ({"arch"}, False)
