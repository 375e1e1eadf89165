"""The results database: every run's config, status, per-epoch curve and final metrics (SQLAlchemy).

An SQLite file by default (WAL journal and a busy timeout, so several worker processes can write at
once); any SQLAlchemy URL — e.g. ``postgresql://host/db`` — lets several machines share one study.
Each run's result is written in one transaction when the run ends, so killing a study at any moment
loses no finished result.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    and_,
    create_engine,
    event,
    func,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from .._filelock import exclusive


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(120), primary_key=True)
    study: Mapped[str] = mapped_column(String(200), index=True)
    stage: Mapped[str] = mapped_column(String(20))
    optimizer: Mapped[str] = mapped_column(String(40))
    force_fraction: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(Integer)
    lr: Mapped[float] = mapped_column(Float)
    weight_decay: Mapped[float] = mapped_column(Float)
    energy_weight: Mapped[float] = mapped_column(Float)
    force_weight: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    config: Mapped[str] = mapped_column(Text)
    run_dir: Mapped[str] = mapped_column(Text)
    final: Mapped[str | None] = mapped_column(Text, nullable=True)
    test_e_mae: Mapped[float | None] = mapped_column(Float, nullable=True)
    test_e_rmse: Mapped[float | None] = mapped_column(Float, nullable=True)
    test_f_mae: Mapped[float | None] = mapped_column(Float, nullable=True)
    test_f_rmse: Mapped[float | None] = mapped_column(Float, nullable=True)
    best_val_metric: Mapped[float | None] = mapped_column(Float, nullable=True)
    train_time_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    epochs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    steps_per_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # training diagnostics (mlipopt.train.diagnostics), comma-separated; "" when the run looks sound
    flags: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # an architectures study's cell (mlipopt.study.axes): the parent study, model label, training frames
    parent: Mapped[str | None] = mapped_column(String(120), nullable=True)
    model: Mapped[str | None] = mapped_column(String(120), nullable=True)
    train_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # a final run re-run at the next lower learning rate after this run diverged (study.runner)
    retry_of: Mapped[str | None] = mapped_column(String(120), nullable=True)
    # who trains it (host:pid:token) and until when (epoch seconds) the claim holds without a heartbeat
    owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # the epoch after which the attempt that finished the run resumed from its checkpoint (0: from scratch)
    resumed_from: Mapped[int | None] = mapped_column(Integer, nullable=True)
    host: Mapped[str | None] = mapped_column(String(200), nullable=True)
    started: Mapped[str | None] = mapped_column(String(40), nullable=True)
    finished: Mapped[str | None] = mapped_column(String(40), nullable=True)


#: Errors that mean the loss or a gradient became non-finite: a result of the learning rate, not a fault.
DIVERGENCE_ERRORS = ("TrainingDiverged", "NonFiniteGradientError")


def is_divergence(error: str | None) -> bool:
    """The stored error of a run says its training diverged (loss or gradient not finite)."""
    return (error or "").startswith(DIVERGENCE_ERRORS)


def run_status(run: Run) -> str:
    """The run's status, with a divergence stored as ``failed`` by an older mlipopt read as ``diverged``."""
    return "diverged" if run.status == "failed" and is_divergence(run.error) else run.status


def run_flags(run: Run) -> list[str]:
    """The diagnostics flags stored with a run (empty when it looks sound or was never checked)."""
    return [f for f in (run.flags or "").split(",") if f]


class Epoch(Base):
    __tablename__ = "epochs"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    train_time_s: Mapped[float] = mapped_column(Float)
    eval_time_s: Mapped[float] = mapped_column(Float)
    lr: Mapped[float] = mapped_column(Float)
    train_loss: Mapped[float] = mapped_column(Float)
    val_e_mae: Mapped[float | None] = mapped_column(Float, nullable=True)
    val_e_rmse: Mapped[float | None] = mapped_column(Float, nullable=True)
    val_e_bias: Mapped[float | None] = mapped_column(Float, nullable=True)
    val_f_mae: Mapped[float | None] = mapped_column(Float, nullable=True)
    val_f_rmse: Mapped[float | None] = mapped_column(Float, nullable=True)
    val_metric: Mapped[float | None] = mapped_column(Float, nullable=True)


class Refinement(Base):
    """L-BFGS refinement of a finished run (study stage "then refine")."""

    __tablename__ = "refinements"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    summary: Mapped[str | None] = mapped_column(Text, nullable=True)
    test_e_mae: Mapped[float | None] = mapped_column(Float, nullable=True)
    test_f_mae: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    finished: Mapped[str | None] = mapped_column(String(40), nullable=True)


class Selection(Base):
    """The hyperparameters a study stage chose for one (optimizer, force fraction), and why."""

    __tablename__ = "selections"

    study: Mapped[str] = mapped_column(String(200), primary_key=True)
    stage: Mapped[str] = mapped_column(String(20), primary_key=True)
    optimizer: Mapped[str] = mapped_column(String(40), primary_key=True)
    force_fraction: Mapped[float] = mapped_column(Float, primary_key=True)
    run_id: Mapped[str | None] = mapped_column(String(120), nullable=True)
    lr: Mapped[float | None] = mapped_column(Float, nullable=True)
    weight_decay: Mapped[float | None] = mapped_column(Float, nullable=True)
    grid: Mapped[str] = mapped_column(Text)  # JSON list of the learning rates tried, extensions included
    extensions: Mapped[int] = mapped_column(Integer, default=0)
    position: Mapped[str] = mapped_column(String(20))  # interior, lower edge, upper edge, single point
    note: Mapped[str | None] = mapped_column(Text, nullable=True)  # e.g. selected among flagged runs


class StepCost(Base):
    """A controlled measurement of one optimizer's training-step time (same batch, interleaved)."""

    __tablename__ = "step_costs"

    study: Mapped[str] = mapped_column(String(200), primary_key=True)
    optimizer: Mapped[str] = mapped_column(String(40), primary_key=True)
    with_forces: Mapped[int] = mapped_column(Integer, primary_key=True)
    median_s: Mapped[float] = mapped_column(Float)
    q25_s: Mapped[float] = mapped_column(Float)
    q75_s: Mapped[float] = mapped_column(Float)
    ratio_median: Mapped[float | None] = mapped_column(Float, nullable=True)  # paired, vs the baseline
    repeats: Mapped[int] = mapped_column(Integer)
    # means over whole refresh periods (an older database has only the median, which skips refreshes)
    mean_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    period_min_s: Mapped[float | None] = mapped_column(Float, nullable=True)  # spread of the period means
    period_max_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    slowest_s: Mapped[float | None] = mapped_column(Float, nullable=True)  # e.g. a SOAP basis refresh
    ratio_mean: Mapped[float | None] = mapped_column(Float, nullable=True)  # mean / the baseline's mean
    period: Mapped[int | None] = mapped_column(Integer, nullable=True)  # steps per refresh period
    description: Mapped[str] = mapped_column(Text)  # batch, threads, machine
    recorded: Mapped[str] = mapped_column(String(40))


class SpectrumRecord(Base):
    """Hessian spectra of a run at a checkpoint (``mlipopt spectrum`` or the study's spectrum stage)."""

    __tablename__ = "spectra"

    run_id: Mapped[str] = mapped_column(String(120), primary_key=True)
    checkpoint: Mapped[str] = mapped_column(String(40), primary_key=True)
    result: Mapped[str] = mapped_column(Text)
    recorded: Mapped[str] = mapped_column(String(40))


class Fidelity(Base):
    """Physical-fidelity results of a run under a protocol at a temperature (``mlipopt fidelity``)."""

    __tablename__ = "fidelity_results"

    run_id: Mapped[str] = mapped_column(String(120), primary_key=True)
    protocol: Mapped[str] = mapped_column(String(20), primary_key=True)
    temperature_K: Mapped[float] = mapped_column(Float, primary_key=True)
    result: Mapped[str] = mapped_column(Text)
    recorded: Mapped[str] = mapped_column(String(40))


class ArchitectureCheck(Base):
    """What an architectures study measures besides test errors (issue 14): a model's inference cost
    (``kind="inference_cost"``, ``key`` the model label) or a run's equivariance (``kind="equivariance"``,
    ``key`` the run id)."""

    __tablename__ = "architecture_checks"

    study: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    result: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text)  # the machine, for costs
    recorded: Mapped[str] = mapped_column(String(40))


def cell_columns(cell: Any) -> dict[str, Any]:
    """The columns of an architectures study's cell (none for an ordinary study)."""
    if cell is None:
        return {}
    return {"parent": cell.parent, "model": cell.model, "train_size": cell.train_size}


def lease_duration() -> float:
    """Seconds a claim on a run holds without a heartbeat (``MLIPOPT_LEASE_SECONDS``, default 120)."""
    return float(os.environ.get("MLIPOPT_LEASE_SECONDS", 120))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _finite(value: Any) -> float | None:
    return None if value is None or value != value or value in (float("inf"), float("-inf")) else float(value)


def database_url(url: str) -> str:
    """``url`` with the PostgreSQL driver mlipopt installs (``mlipopt[postgres]``: psycopg 3) named in it.

    SQLAlchemy reads a bare ``postgresql://`` as psycopg2, which the extra does not install; a URL that
    names its driver (``postgresql+psycopg2://``) is left as it is. Without any driver the error says
    what to install instead of SQLAlchemy's ``No module named 'psycopg2'``."""
    from importlib.util import find_spec

    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres") or not sep:
        return url
    if find_spec("psycopg") is not None:
        return f"postgresql+psycopg://{rest}"
    if find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    raise ValueError(
        f"{scheme}://…: no PostgreSQL driver is installed; pip install 'mlipopt[postgres]' (psycopg 3)"
    )


class ResultsDB:
    """Thin access layer over the tables; safe to open from several processes (and machines) at once:
    runs are claimed atomically with an expiring lease (:meth:`claim`), so concurrent studies on one
    database share the work and train each run once."""

    def __init__(self, url: str) -> None:
        url = database_url(url)
        self.url = url
        sqlite = url.startswith("sqlite")
        if sqlite and url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url, connect_args={"timeout": 60} if sqlite else {})
        if sqlite:

            @event.listens_for(self.engine, "connect")
            def _pragmas(connection: Any, _record: Any) -> None:
                cursor = connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA busy_timeout=60000")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.close()

        try:
            self._create_tables()
        except DatabaseError as exc:
            raise ValueError(
                f"{url}: not an mlipopt results database ({str(exc.orig).splitlines()[0]})"
            ) from None

    def _create_tables(self) -> None:
        """Create missing tables. Processes opening a new SQLite file at once would race (each sees a
        table missing; the second CREATE fails), so creation is serialised with a lock file beside it."""
        path = self.url.removeprefix("sqlite:///") if self.url.startswith("sqlite:///") else None
        if path is None or path == ":memory:":
            Base.metadata.create_all(self.engine)
            self._add_missing_columns()
            return
        with exclusive(f"{path}.lock"):
            Base.metadata.create_all(self.engine)
            self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Databases written by an older mlipopt lack newer nullable columns: add them (no data lost)."""
        existing = inspect(self.engine)
        with self.engine.begin() as connection:
            for table in Base.metadata.sorted_tables:
                have = {c["name"] for c in existing.get_columns(table.name)}
                for column in table.columns:
                    if column.name not in have and column.nullable:
                        kind = column.type.compile(dialect=self.engine.dialect)
                        connection.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))
        self._copy_old_fidelity_table(existing)
        self._fill_cells_of_old_runs()

    def _fill_cells_of_old_runs(self) -> None:
        """Databases written before runs had cell columns knew a cell only by its sub-study's name,
        ``<parent>__<model>[__N<size>]``: read once here, so the report needs nothing but the columns."""
        with Session(self.engine) as session, session.begin():
            names = session.scalars(
                select(Run.study)
                .where(Run.parent.is_(None), Run.study.contains("__", autoescape=True))
                .distinct()
            ).all()
            for name in names:
                parts = name.split("__")
                size = parts[2][1:] if len(parts) == 3 and parts[2][1:].isdigit() else None
                values = {"parent": parts[0], "model": parts[1], "train_size": int(size) if size else None}
                session.execute(update(Run).where(Run.study == name, Run.parent.is_(None)).values(**values))

    def _copy_old_fidelity_table(self, existing: Any) -> None:
        """mlipopt < 0.2 kept fidelity results in a table ``fidelity`` keyed by (run, protocol); the
        temperature is now part of the key. Old rows are copied once (their temperature read from the
        stored result) and the old table is left as it was."""
        if "fidelity" not in existing.get_table_names():
            return
        with Session(self.engine) as session, session.begin():
            if session.scalar(select(func.count()).select_from(Fidelity)):
                return
            old = session.execute(text("SELECT run_id, protocol, result, recorded FROM fidelity")).all()
            for run_id, protocol, result, recorded in old:
                temperature = json.loads(result).get("temperature_K", 0.0)
                session.merge(
                    Fidelity(run_id=run_id, protocol=protocol, temperature_K=float(temperature),
                             result=result, recorded=recorded)
                )  # fmt: skip

    def _write(self, write: Callable[[Session], None]) -> None:
        """Run one insert-or-replace transaction. ``session.merge`` reads, then inserts: when another
        process (a second study on the same database) inserts the same key in between, the insert
        fails on the primary key; the retry then reads that row and replaces it."""
        for attempt in range(10):
            try:
                with Session(self.engine) as session, session.begin():
                    write(session)
                return
            except IntegrityError:
                time.sleep(0.05 * (attempt + 1))
        with Session(self.engine) as session, session.begin():
            write(session)

    def retire_finals(self, study: str, keep: set[str]) -> int:
        """Mark final runs of ``study`` outside ``keep`` as ``superseded`` (kept, out of every report): a
        selection that changed (a fixed rule, a longer sweep) must not leave the old rate's runs mixed
        into the table. Registering such a run as final again restores it. Returns how many."""
        changed = 0

        def write(session: Session) -> None:
            nonlocal changed
            changed = 0  # a retried transaction counts afresh
            stale = session.scalars(select(Run).where(Run.study == study, Run.stage == "final"))
            for run in stale:
                if run.id not in keep:
                    run.stage = "superseded"
                    changed += 1

        self._write(write)
        return changed

    def register(self, study: str, runs: list[Any]) -> None:
        """Insert runs not yet known (by id); known runs keep their status and results. Another process
        registering the same runs at the same moment makes one attempt fail on the unique id: retried."""
        for attempt in range(10):
            try:
                return self._register(study, runs)
            except IntegrityError:
                time.sleep(0.05 * (attempt + 1))
        self._register(study, runs)

    def _register(self, study: str, runs: list[Any]) -> None:
        with Session(self.engine) as session, session.begin():
            known = {
                run.id: run
                for run in session.scalars(select(Run).where(Run.id.in_([r.run_id for r in runs])))
            }
            for r in runs:
                retry_of = getattr(r, "retry_of", None)
                if r.run_id in known:
                    # one config serves several stages (e.g. a sweep run on a final seed with the final
                    # schedule); reports read the final stage, so that label wins
                    if r.stage == "final":
                        known[r.run_id].stage = "final"
                    if retry_of and known[r.run_id].retry_of is None:
                        known[r.run_id].retry_of = retry_of
                    if known[r.run_id].parent is None:
                        for key, value in cell_columns(getattr(r, "cell", None)).items():
                            setattr(known[r.run_id], key, value)
                    continue
                session.add(
                    Run(
                        id=r.run_id,
                        study=study,
                        stage=r.stage,
                        optimizer=r.optimizer,
                        force_fraction=r.force_fraction,
                        seed=r.seed,
                        lr=r.lr,
                        weight_decay=r.weight_decay,
                        energy_weight=r.loss_ratio[0],
                        force_weight=r.loss_ratio[1],
                        status="pending",
                        config=json.dumps(r.config),
                        run_dir=r.config["run_dir"],
                        retry_of=retry_of,
                        **cell_columns(getattr(r, "cell", None)),
                    )
                )

    def run(self, run_id: str) -> Run | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(Run, run_id)

    def status(self, run_id: str) -> str | None:
        """pending, running, done, pruned (stopped by a halving sweep), failed or diverged (None: not
        registered). A run that diverged
        before ``diverged`` was a status of its own reads ``diverged`` too."""
        with Session(self.engine) as session:
            run = session.get(Run, run_id)
            return None if run is None else run_status(run)

    def _claimable(self, now: float) -> Any:
        """SQL condition: a run nobody holds — pending, failed, or running under an expired lease."""
        expired = and_(Run.status == "running", or_(Run.lease_until.is_(None), Run.lease_until < now))
        # a pruned run is finished for a halving sweep (which does not claim it again), and resumed to its
        # full schedule by a grid sweep: its checkpoint is the first epochs of that run
        return or_(Run.status.in_(("pending", "failed", "pruned")), expired)

    def claim(
        self, run_id: str, owner: str, lease_seconds: float | None = None, succeeding: str | None = None
    ) -> bool:
        """Take ``run_id`` for ``owner`` if nobody holds it, in one atomic UPDATE (SQLite and PostgreSQL
        alike): of several processes claiming at once exactly one succeeds. The claim lapses after
        ``lease_seconds`` unless renewed (:meth:`renew`), so a killed holder cannot block a run forever.
        ``succeeding``: an owner prefix whose claims are known dead — an earlier attempt of the same Ray
        task, which Ray re-runs only once that attempt's worker or node has died — taken over at once
        rather than after the lease (its node may be another machine, whose processes cannot be checked)."""
        now = time.time()
        lease = lease_seconds or lease_duration()
        condition = self._claimable(now)
        stale = self._dead_local_owner(run_id)
        if stale is not None:  # its holder on this machine is gone: no need to wait for the lease
            condition = or_(condition, and_(Run.status == "running", Run.owner == stale))
        if succeeding:
            condition = or_(
                condition, and_(Run.status == "running", Run.owner.startswith(succeeding, autoescape=True))
            )
        with self.engine.begin() as connection:
            result = connection.execute(
                update(Run)
                .where(Run.id == run_id, condition)
                .values(
                    status="running",
                    owner=owner,
                    lease_until=now + lease,
                    started=_now(),
                    host=socket.gethostname(),
                    error=None,
                    attempts=func.coalesce(Run.attempts, 0) + 1,
                )  # fmt: skip
            )
            return result.rowcount == 1

    def claimable(self, run_id: str) -> bool:
        """Nobody holds ``run_id`` (or its holder on this machine has died)."""
        with Session(self.engine) as session:
            query = select(Run.id).where(Run.id == run_id, self._claimable(time.time()))
            if session.scalar(query) is not None:
                return True
        return self._dead_local_owner(run_id) is not None

    def holder(self, run_id: str) -> str | None:
        with Session(self.engine) as session:
            return session.scalar(select(Run.owner).where(Run.id == run_id, Run.status == "running"))

    def _dead_local_owner(self, run_id: str) -> str | None:
        """The owner string of a running claim held by a process of this machine that no longer exists."""
        owner = self.holder(run_id)
        if not owner or owner.count(":") < 2:
            return None
        host, pid, _ = owner.rsplit(":", 2)
        if host != socket.gethostname() or not pid.isdigit():
            return None
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return owner
        except PermissionError:
            return None
        return None

    def renew(self, run_id: str, owner: str, lease_seconds: float | None = None) -> bool:
        """Extend ``owner``'s claim; False if the claim was lost (it lapsed and another process took it)."""
        with self.engine.begin() as connection:
            result = connection.execute(
                update(Run)
                .where(Run.id == run_id, Run.owner == owner, Run.status == "running")
                .values(lease_until=time.time() + (lease_seconds or lease_duration()))
            )
            return result.rowcount == 1

    def mark_running(self, run_id: str) -> None:
        """Claim for this process without a lease check (single-process use and tests)."""
        self.claim(
            run_id, f"{socket.gethostname()}:{os.getpid()}:direct", lease_seconds=10 * lease_duration()
        )
        with Session(self.engine) as session, session.begin():
            run = session.get(Run, run_id)
            run.status, run.started, run.host, run.error = "running", _now(), socket.gethostname(), None

    def abandon(self, run_id: str, owner_prefix: str, error: str) -> bool:
        """Mark ``run_id`` failed if it is still held by an owner starting with ``owner_prefix`` (a Ray
        task that Ray gave up on: its last attempt died with its node), so the study can retry it at once;
        False when someone else holds or finished it."""
        with self.engine.begin() as connection:
            result = connection.execute(
                update(Run)
                .where(
                    Run.id == run_id,
                    Run.status == "running",
                    Run.owner.startswith(owner_prefix, autoescape=True),
                )
                .values(status="failed", error=error[-4000:], finished=_now(), lease_until=None)
            )
            return result.rowcount == 1

    def note_resumed(self, run_id: str, owner: str, epoch: int) -> None:
        """Record that ``owner``'s attempt starts after ``epoch`` (0: from scratch)."""
        with self.engine.begin() as connection:
            connection.execute(
                update(Run).where(Run.id == run_id, Run.owner == owner).values(resumed_from=int(epoch))
            )

    def mark_failed(self, run_id: str, error: str, owner: str | None = None) -> None:
        """Status ``failed`` (a fault: retried when the study is re-run) or, for a divergence, ``diverged``
        (a deterministic result of the learning rate: never re-run, so a retry cannot waste its time)."""
        with Session(self.engine) as session, session.begin():
            run = session.get(Run, run_id)
            if owner is not None and run.owner != owner:
                return  # the claim was lost: the new holder reports
            status = "diverged" if is_divergence(error) else "failed"
            run.status, run.error, run.finished = status, error[-4000:], _now()
            run.lease_until = None

    def record_result(
        self, run_id: str, final: dict[str, Any], history: list[dict[str, Any]], owner: str | None = None
    ) -> bool:
        """Store final metrics and the per-epoch curve and mark the run done, in one transaction.
        With ``owner``, only while that owner holds the run (False otherwise: nothing stored)."""
        with Session(self.engine) as session, session.begin():
            run = session.get(Run, run_id)
            if owner is not None and run.owner != owner:
                return False
            run.lease_until = None
            test = final.get("test") or {}
            run.status, run.finished = "pruned" if final.get("stop_reason") == "pruned" else "done", _now()
            run.final = json.dumps(final, default=str)
            run.test_e_mae, run.test_e_rmse = _finite(test.get("e_mae")), _finite(test.get("e_rmse"))
            run.test_f_mae, run.test_f_rmse = _finite(test.get("f_mae")), _finite(test.get("f_rmse"))
            run.best_val_metric = _finite(final.get("best_val_metric"))
            run.train_time_s, run.epochs = final.get("train_time_s"), final.get("epochs")
            run.steps_per_epoch = final.get("steps_per_epoch")
            run.flags = ",".join(final.get("flags") or [])
            for old in session.scalars(select(Epoch).where(Epoch.run_id == run_id)):
                session.delete(old)
            session.flush()
            for row in history:
                session.add(
                    Epoch(
                        run_id=run_id,
                        epoch=int(row["epoch"]),
                        train_time_s=float(row["train_time_s"]),
                        eval_time_s=float(row["eval_time_s"]),
                        lr=float(row["lr"]),
                        train_loss=float(row["train_loss"]),
                        **{
                            k: _finite(row.get(k))
                            for k in ("val_e_mae", "val_e_rmse", "val_e_bias", "val_f_mae", "val_f_rmse")
                        },
                        val_metric=_finite(row.get("val_metric")),
                    )
                )
        return True

    def record_selection(
        self, study: str, stage: str, optimizer: str, force_fraction: float, **values: Any
    ) -> None:
        """Store (replace) the selection of one stage for one (optimizer, force fraction)."""

        def write(session: Session) -> None:
            row = Selection(study=study, stage=stage, optimizer=optimizer, force_fraction=force_fraction)
            for key, value in values.items():
                setattr(row, key, json.dumps(value) if key == "grid" else value)
            session.merge(row)

        self._write(write)

    def selections(self, study: str, stage: str | None = None) -> list[Selection]:
        with Session(self.engine, expire_on_commit=False) as session:
            query = select(Selection).where(Selection.study == study)
            if stage is not None:
                query = query.where(Selection.stage == stage)
            return list(session.scalars(query.order_by(Selection.optimizer, Selection.force_fraction)))

    def record_step_costs(self, study: str, rows: list[dict[str, Any]]) -> None:

        def write(session: Session) -> None:
            for row in rows:
                session.merge(StepCost(study=study, recorded=_now(), **row))

        self._write(write)

    def step_costs(self, study: str) -> list[StepCost]:
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.scalars(select(StepCost).where(StepCost.study == study)))

    def refinement(self, run_id: str) -> Refinement | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(Refinement, run_id)

    def record_refinement(
        self, run_id: str, summary: dict[str, Any] | None, error: str | None = None
    ) -> None:
        """Store a refinement's summary (status done) or its error (status failed)."""

        def write(session: Session) -> None:
            row = session.get(Refinement, run_id) or Refinement(run_id=run_id)
            row.finished, row.error = _now(), error
            row.status = "failed" if error else "done"
            if summary is not None:
                after = summary.get("test_after") or {}
                row.summary = json.dumps(summary, default=str)
                row.test_e_mae, row.test_f_mae = _finite(after.get("e_mae")), _finite(after.get("f_mae"))
            session.merge(row)

        self._write(write)

    def record_spectrum(self, run_id: str, checkpoint: str, result: dict[str, Any]) -> None:

        def write(session: Session) -> None:
            session.merge(
                SpectrumRecord(
                    run_id=run_id, checkpoint=checkpoint, result=json.dumps(result), recorded=_now()
                )
            )

        self._write(write)

    def spectra(self, run_ids: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
        """(run id, checkpoint, result) of every stored spectrum of these runs."""
        with Session(self.engine) as session:
            rows = session.scalars(select(SpectrumRecord).where(SpectrumRecord.run_id.in_(run_ids)))
            return [(r.run_id, r.checkpoint, json.loads(r.result)) for r in rows]

    def record_check(self, study: str, kind: str, key: str, result: Any, description: str = "") -> None:
        def write(session: Session) -> None:
            session.merge(ArchitectureCheck(
                study=study, kind=kind, key=key, result=json.dumps(result), description=description,
                recorded=_now(),
            ))  # fmt: skip

        self._write(write)

    def checks(self, study: str, kind: str) -> dict[str, tuple[Any, str]]:
        """key → (result, description) of the architecture checks of ``kind`` in ``study``."""
        with Session(self.engine) as session:
            rows = session.scalars(
                select(ArchitectureCheck).where(
                    ArchitectureCheck.study == study, ArchitectureCheck.kind == kind
                )
            )
            return {r.key: (json.loads(r.result), r.description) for r in rows}

    def record_fidelity(
        self, run_id: str, protocol: str, temperature_K: float, result: dict[str, Any]
    ) -> None:

        def write(session: Session) -> None:
            session.merge(
                Fidelity(
                    run_id=run_id, protocol=protocol, temperature_K=float(temperature_K),
                    result=json.dumps(result), recorded=_now(),
                )
            )  # fmt: skip

        self._write(write)

    def fidelity_results(self, run_ids: list[str]) -> list[tuple[str, str, float, dict[str, Any]]]:
        """(run id, protocol, temperature, result) of every fidelity evaluation of these runs."""
        with Session(self.engine) as session:
            rows = session.scalars(
                select(Fidelity).where(Fidelity.run_id.in_(run_ids)).order_by(Fidelity.run_id)
            )
            return [(r.run_id, r.protocol, r.temperature_K, json.loads(r.result)) for r in rows]

    def fidelity(self, run_id: str, protocol: str, temperature_K: float) -> dict[str, Any] | None:
        with Session(self.engine) as session:
            row = session.get(Fidelity, (run_id, protocol, float(temperature_K)))
            return None if row is None else json.loads(row.result)

    def runs(
        self, study: str | None = None, stage: str | None = None, status: str | None = None
    ) -> list[Run]:
        with Session(self.engine, expire_on_commit=False) as session:
            query = select(Run)
            if study is not None:
                query = query.where(Run.study == study)
            if stage is not None:
                query = query.where(Run.stage == stage)
            if status is not None:
                query = query.where(Run.status == status)
            return list(session.scalars(query.order_by(Run.id)))

    def curve(self, run_id: str) -> list[Epoch]:
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.scalars(select(Epoch).where(Epoch.run_id == run_id).order_by(Epoch.epoch)))

    def cells(self, parent: str) -> dict[str, tuple[str, int | None]]:
        """Sub-study → (model label, training frames) of the architectures study ``parent``."""
        with Session(self.engine) as session:
            rows = session.execute(
                select(Run.study, Run.model, Run.train_size).where(Run.parent == parent).distinct()
            ).all()
        return {study: (model, size) for study, model, size in rows}

    def parents(self) -> tuple[set[str], bool]:
        """The architectures studies of this database, and whether every run belongs to one."""
        with Session(self.engine) as session:
            parents = set(session.scalars(select(Run.parent).distinct()))
        return {p for p in parents if p is not None}, None not in parents

    def studies(self) -> list[str]:
        with Session(self.engine) as session:
            return sorted(set(session.scalars(select(Run.study))))
