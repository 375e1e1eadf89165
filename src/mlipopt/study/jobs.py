"""The work a study hands to its executors: typed jobs, each with a ``run`` that does it and records it.

A job is a frozen dataclass (picklable for worker processes and Ray) holding what it needs: the run it
belongs to, the database to record in, and its :class:`Placement` (threads, data-parallel ranks, the
interpreter). An executor decides only where a job runs; it never looks inside one. A job's ``run``
never raises: a failure is recorded and returned as ``{"run_id", "status": "failed", "error"}``.

- :class:`TrainJob`: train (or resume) one run, claimed in the database for its duration.
- :class:`RefineJob`: L-BFGS refinement of a finished run (Liu et al.; :mod:`mlipopt.train.refine`).
- :class:`SpectrumJob`: Hessian spectra of one checkpoint of a finished run (:mod:`mlipopt.spectrum`).
- :class:`FidelityJob`: MD with a finished run's model against a reference (:mod:`mlipopt.fidelity`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..train import Trainer, load_config
from ..train.checkpoint import load_torch, save_text
from ..train.config import dump_config
from .db import ResultsDB, lease_duration
from .halving import HalvingTrial, TrialRef


@dataclass(frozen=True)
class Placement:
    """How a job's processes run: torch threads each; for training, data-parallel ranks, the command
    that starts them (``launcher``, e.g. ``srun python``) and another environment's ``python``."""

    threads: int = 1
    ranks: int = 1
    launcher: str | None = None
    python: str | None = None


def _failure(run_id: str, exc: Exception) -> tuple[str, dict[str, Any]]:
    message = f"{type(exc).__name__}: {exc}"
    return message + "\n" + traceback.format_exc(), {"run_id": run_id, "status": "failed", "error": message}


@dataclass(frozen=True)
class TrainJob:
    run_id: str
    config: dict[str, Any]
    db_url: str
    halving: TrialRef | None = None  # a trial of a halving sweep: pruned epoch by epoch
    placement: Placement = field(default_factory=Placement)

    def placed(self, placement: Placement) -> TrainJob:
        return dataclasses.replace(self, placement=placement)

    @property
    def in_subprocess(self) -> bool:
        return self.placement.ranks > 1 or bool(self.placement.python)

    def run(self, owner: str | None = None, succeeding: str | None = None) -> dict[str, Any]:
        """Train (or resume) the run and record it. ``owner``: who claims it (default
        ``host:pid:token``); ``succeeding``: see :meth:`ResultsDB.claim`. A run another process holds
        returns status ``claimed``; a finished one is skipped."""
        db, run_id = ResultsDB(self.db_url), self.run_id
        status = db.status(run_id)
        if status == "done" or (status == "pruned" and self.halving is not None):
            return {"run_id": run_id, "status": status, "skipped": True}
        owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        if not db.claim(run_id, owner, succeeding=succeeding):
            return {"run_id": run_id, "status": "claimed"}  # another process trains it
        trial = HalvingTrial(self.halving) if self.halving is not None else None
        try:
            with heartbeat(db, run_id, owner):
                if self.in_subprocess:
                    db.note_resumed(run_id, owner, checkpoint_epoch(load_config(self.config).run_dir))
                    final, history = train_in_subprocess(self.config, self.placement)
                else:
                    trainer = Trainer(load_config(self.config), log=lambda _: None)
                    trainer.resume()
                    db.note_resumed(run_id, owner, trainer.epoch)
                    if trial is not None:
                        trial.resume(trainer.history)
                    final = trainer.fit() if trial is None else trainer.fit(prune=trial.prune)
                    history = trainer.history
            if not db.record_result(run_id, final, history, owner=owner):
                return {"run_id": run_id, "status": "claimed"}  # our claim lapsed; the new holder reports
            if trial is not None:
                trial.finish(final)
            status = "pruned" if final.get("stop_reason") == "pruned" else "done"
            return {"run_id": run_id, "status": status, "final": final}
        except Exception as exc:  # recorded, reported, and the study goes on with the other runs
            detail, result = _failure(run_id, exc)
            db.mark_failed(run_id, detail, owner=owner)
            if trial is not None:
                trial.finish(None)
            return result

    def lost(self, owner_prefix: str, message: str) -> dict[str, Any]:
        """The executor lost the job (its node died and no retry is left): release the dead claim."""
        ResultsDB(self.db_url).abandon(self.run_id, owner_prefix, message)
        return {"run_id": self.run_id, "status": "failed", "error": message}


class _AnalysisJob:
    """A job on a finished run: one process of this interpreter, on the placement's threads only."""

    def placed(self, placement: Placement) -> Any:
        return dataclasses.replace(self, placement=Placement(threads=placement.threads))


@dataclass(frozen=True)
class RefineJob(_AnalysisJob):
    run_id: str
    run_dir: str
    options: dict[str, Any]  # mlipopt.train.refine.refine's settings
    db_url: str
    placement: Placement = field(default_factory=Placement)

    def run(self, owner: str | None = None, succeeding: str | None = None) -> dict[str, Any]:
        from ..train.refine import refine

        db = ResultsDB(self.db_url)
        existing = db.refinement(self.run_id)
        if existing is not None and existing.status == "done":
            return {"run_id": self.run_id, "status": "done", "skipped": True}
        try:
            summary = refine(self.run_dir, log=lambda _: None, **self.options)
            db.record_refinement(self.run_id, summary)
            return {"run_id": self.run_id, "status": "done", "summary": summary}
        except Exception as exc:
            detail, result = _failure(self.run_id, exc)
            db.record_refinement(self.run_id, None, detail)
            return result

    def lost(self, owner_prefix: str, message: str) -> dict[str, Any]:
        return {"run_id": self.run_id, "status": "failed", "error": message}


@dataclass(frozen=True)
class SpectrumJob(_AnalysisJob):
    run_id: str
    run_dir: str
    checkpoint: str
    options: dict[str, Any]  # mlipopt.spectrum.analysis.analyse_run's settings
    db_url: str
    placement: Placement = field(default_factory=Placement)

    def run(self, owner: str | None = None, succeeding: str | None = None) -> dict[str, Any]:
        from ..spectrum.analysis import analyse_run

        try:
            result = analyse_run(self.run_dir, self.checkpoint, progress=lambda _: None, **self.options)
            ResultsDB(self.db_url).record_spectrum(self.run_id, self.checkpoint, result)
            summary = {key: s["kappa_top"] for key, s in result["spectra"].items()}
            return {
                "run_id": self.run_id,
                "status": "done",
                "checkpoint": self.checkpoint,
                "summary": summary,
            }
        except Exception as exc:
            return {**_failure(self.run_id, exc)[1], "checkpoint": self.checkpoint}

    def lost(self, owner_prefix: str, message: str) -> dict[str, Any]:
        return {"run_id": self.run_id, "status": "failed", "error": message, "checkpoint": self.checkpoint}


@dataclass(frozen=True)
class FidelityJob(_AnalysisJob):
    run_id: str
    run_dir: str
    protocol: str
    reference: str
    settings: dict[str, Any]  # mlipopt.fidelity.FidelitySettings
    db_url: str
    placement: Placement = field(default_factory=Placement)
    observed: str | None = None  # an experimental reference the report compares with (fidelity.experiment)

    def run(self, owner: str | None = None, succeeding: str | None = None) -> dict[str, Any]:
        from ..fidelity.protocols import FidelitySettings
        from ..fidelity.references import evaluate_runs

        try:
            settings = FidelitySettings(**self.settings)
            [result], _ = evaluate_runs(
                [self.run_dir], self.protocol, self.reference, settings, lambda _: None
            )
            record = dataclasses.asdict(result) | {"observed": self.observed}
            ResultsDB(self.db_url).record_fidelity(self.run_id, self.protocol, settings.temperature_K, record)
            return {"run_id": self.run_id, "status": "done", "survived": result.survived,
                    "structure_error": result.structure_error}  # fmt: skip
        except Exception as exc:
            return _failure(self.run_id, exc)[1]

    def lost(self, owner_prefix: str, message: str) -> dict[str, Any]:
        return {"run_id": self.run_id, "status": "failed", "error": message}


Job = TrainJob | RefineJob | SpectrumJob | FidelityJob


def execute(job: Job, owner: str | None = None, succeeding: str | None = None) -> dict[str, Any]:
    """Run ``job`` in this process on its placement's threads (a worker's or a Ray task's entry point)."""
    import torch

    torch.set_num_threads(job.placement.threads)
    return job.run(owner=owner, succeeding=succeeding)


def checkpoint_epoch(run_dir: str | Path) -> int:
    """The last epoch in ``run_dir``'s checkpoint (0 when it has none): where a resumed run goes on."""
    path = Path(run_dir) / "checkpoint.pt"
    return int(load_torch(path)["epoch"]) if path.exists() else 0


def launch_command(ranks: int, launcher: str | None, python: str | None = None) -> list[str]:
    """The command that starts one run's ranks; ``-m mlipopt.cli train CONFIG`` is appended. Default:
    ``torchrun --standalone`` on this machine; e.g. ``srun python`` inside a Slurm allocation. ``python``:
    another environment's interpreter (a model family installed there), this one's by default."""
    if launcher:
        return shlex.split(launcher)
    python = python or sys.executable
    if ranks == 1:
        return [python]
    return [python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]


def train_in_subprocess(
    config_dict: dict[str, Any], placement: Placement
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train one run in a subprocess (resumed if interrupted): on ``placement.ranks`` data-parallel
    processes, and/or in another environment's Python (``placement.python``); returns its final metrics
    and per-epoch history as written by rank 0. Output goes to ``train.log``."""
    config = load_config(config_dict)  # checked here, so a bad config fails before any launch
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "launch.yaml"
    save_text(dump_config(config), config_path)
    command = [*launch_command(placement.ranks, placement.launcher, placement.python),
               "-m", "mlipopt.cli", "train", str(config_path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(placement.threads)}
    with open(run_dir / "train.log", "ab") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        tail = (run_dir / "train.log").read_text(errors="replace").splitlines()[-5:]
        raise RuntimeError(
            f"training in a subprocess exited with status {done.returncode}: {' | '.join(tail)} "
            f"(full output: {run_dir / 'train.log'}; `{' '.join(command)}`)"
        )
    final = json.loads((run_dir / "final_metrics.json").read_text())
    return final, load_torch(run_dir / "checkpoint.pt")["history"]


@contextlib.contextmanager
def heartbeat(db: Any, run_id: str, owner: str) -> Iterator[None]:
    """Renew the claim on ``run_id`` every quarter lease while the body runs (a daemon thread)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(lease_duration() / 4):
            try:
                db.renew(run_id, owner)
            except Exception:  # a transient database error: the next beat retries
                pass

    thread = threading.Thread(target=beat, name=f"heartbeat-{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
