"""Where runs execute: local worker processes (default) or Ray tasks on a cluster.

A worker trains one run and writes its result to the results database itself, so the study process
holds no result that a kill could lose. Both executors yield results as runs finish.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from ..spectrum.analysis import analyse_run
from ..train import Trainer, load_config
from ..train.checkpoint import load_torch, save_text
from ..train.config import dump_config
from ..train.refine import refine
from .db import ResultsDB, lease_duration
from .halving import HalvingTrial, TrialRef
from .spec import ExecutorSpec


def execute_run(
    task: dict[str, Any], owner: str | None = None, succeeding: str | None = None
) -> dict[str, Any]:
    """Train (or resume) one run and record it; never raises, failures are recorded and returned.
    ``owner``: who claims the run (default ``host:pid:token``); ``succeeding``: see
    :meth:`ResultsDB.claim`."""
    import torch

    torch.set_num_threads(int(task.get("threads", 1)))
    db = ResultsDB(task["db_url"])
    run_id = task["run_id"]
    if task.get("kind") == "refine":
        return _execute_refinement(task, db)
    if task.get("kind") == "spectrum":
        return _execute_spectrum(task, db)
    status = db.status(run_id)
    if status == "done" or (status == "pruned" and task.get("halving")):
        return {"run_id": run_id, "status": status, "skipped": True}
    owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    if not db.claim(run_id, owner, succeeding=succeeding):
        return {"run_id": run_id, "status": "claimed"}  # another process trains it
    trial = HalvingTrial(TrialRef(**task["halving"])) if task.get("halving") else None
    try:
        with heartbeat(db, run_id, owner):
            if int(task.get("ranks", 1)) > 1 or task.get("python"):
                db.note_resumed(run_id, owner, checkpoint_epoch(load_config(task["config"]).run_dir))
                final, history = train_in_subprocess(task)
            else:
                trainer = Trainer(load_config(task["config"]), log=lambda _: None)
                trainer.resume()
                db.note_resumed(run_id, owner, trainer.epoch)
                if trial is not None:
                    trial.resume(trainer.history)
                final, history = trainer.fit(prune=trial and trial.prune), trainer.history
        if not db.record_result(run_id, final, history, owner=owner):
            return {"run_id": run_id, "status": "claimed"}  # our claim lapsed; the new holder reports
        if trial is not None:
            trial.finish(final)
        status = "pruned" if final.get("stop_reason") == "pruned" else "done"
        return {"run_id": run_id, "status": status, "final": final}
    except Exception as exc:  # recorded, reported, and the study goes on with the other runs
        message = f"{type(exc).__name__}: {exc}"
        db.mark_failed(run_id, message + "\n" + traceback.format_exc(), owner=owner)
        if trial is not None:
            trial.finish(None)
        return {"run_id": run_id, "status": "failed", "error": message}


def execute_ray_task(task: dict[str, Any]) -> dict[str, Any]:
    """:func:`execute_run` as a Ray task: the claim's owner names the task (``ray-task-<id>:``, the same
    for every attempt) and the node, so a retry after its node died takes the run over at once."""
    import ray

    context = ray.get_runtime_context()
    prefix = ray_owner_prefix(context.get_task_id())
    owner = f"{prefix}{context.get_node_id()[:12]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return execute_run(task, owner=owner, succeeding=prefix)


def ray_owner_prefix(task_id: str) -> str:
    return f"ray-task-{task_id}:"


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


def train_in_subprocess(task: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train one run in a subprocess (resumed if interrupted): on ``task["ranks"]`` data-parallel
    processes, and/or in another environment's Python (``task["python"]``); returns its final metrics and
    per-epoch history as written by rank 0. Output goes to ``train.log``."""
    config = load_config(task["config"])  # checked here, so a bad config fails before any launch
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "launch.yaml"
    save_text(dump_config(config), config_path)
    command = [*launch_command(int(task.get("ranks", 1)), task.get("launcher"), task.get("python")),
               "-m", "mlipopt.cli", "train", str(config_path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(int(task.get("threads", 1)))}
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


def die_with_parent(parent: int) -> None:
    """Worker initializer: end this worker when the study process ``parent`` dies, however it dies
    (``kill -9`` included), instead of training on into a folder the next study also uses. Linux
    delivers SIGKILL on the parent's death (``PR_SET_PDEATHSIG``); elsewhere, and for a parent that
    died while this worker was still starting, a watchdog thread exits once the parent is gone."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(1.0)

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _execute_spectrum(task: dict[str, Any], db: Any) -> dict[str, Any]:
    run_id, checkpoint = task["run_id"], task["checkpoint"]
    try:
        result = analyse_run(task["run_dir"], checkpoint, progress=lambda _: None, **task["spectrum"])
        db.record_spectrum(run_id, checkpoint, result)
        summary = {key: s["kappa_top"] for key, s in result["spectra"].items()}
        return {
            "run_id": run_id,
            "status": "done",
            "kind": "spectrum",
            "checkpoint": checkpoint,
            "summary": summary,
        }
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        return {
            "run_id": run_id,
            "status": "failed",
            "kind": "spectrum",
            "checkpoint": checkpoint,
            "error": message,
        }


def _execute_refinement(task: dict[str, Any], db: Any) -> dict[str, Any]:
    run_id = task["run_id"]
    existing = db.refinement(run_id)
    if existing is not None and existing.status == "done":
        return {"run_id": run_id, "status": "done", "skipped": True, "kind": "refine"}
    try:
        summary = refine(task["run_dir"], log=lambda _: None, **task["refine"])
        db.record_refinement(run_id, summary)
        return {"run_id": run_id, "status": "done", "kind": "refine", "summary": summary}
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        db.record_refinement(run_id, None, message + "\n" + traceback.format_exc())
        return {"run_id": run_id, "status": "failed", "kind": "refine", "error": message}


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return os.cpu_count() or 1


class LocalExecutor:
    """Runs in parallel worker processes (spawned: no forked OpenMP state), sized to the machine."""

    def __init__(self, spec: ExecutorSpec) -> None:
        self.threads = max(1, spec.threads_per_run)
        self.ranks = max(1, spec.ranks_per_run)
        self.launcher = spec.launcher
        self.python = spec.python
        self.workers = spec.workers or max(1, available_cpus() // (self.threads * self.ranks))

    def map(self, tasks: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        if not tasks:
            return
        tasks = [{**t, **_placement(t, self.threads, self.ranks, self.launcher, self.python)} for t in tasks]
        if self.workers == 1:
            for task in tasks:  # in-process: simplest to debug, no start-up cost
                yield execute_run(task)
            return
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=min(self.workers, len(tasks)),
            mp_context=context,
            initializer=die_with_parent,
            initargs=(os.getpid(),),
        ) as pool:
            futures = [pool.submit(execute_run, t) for t in tasks]
            for future in as_completed(futures):
                yield future.result()

    def describe(self) -> str:
        ranks = f" × {self.ranks} data-parallel processes" if self.ranks > 1 else ""
        return f"local executor: {self.workers} parallel runs{ranks} × {self.threads} thread(s)"


class RayExecutor:
    """Each run is a Ray task asking for ``threads_per_run`` CPUs and ``num_gpus`` GPUs."""

    def __init__(self, spec: ExecutorSpec) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ImportError("the Ray executor needs `pip install mlipopt[ray]`") from exc
        self.ray = ray
        self.spec = spec
        if not ray.is_initialized():
            ray.init(address=spec.address, ignore_reinit_error=True, log_to_driver=False)

    def map(self, tasks: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Runs as Ray tasks, yielded as they finish. A task whose worker or node dies is re-run by Ray
        (``max_retries`` times, on any live node; it resumes from the checkpoint in the shared study
        folder); one that Ray gives up on is marked failed, to be retried when the study is re-run."""
        threads, ranks = max(1, self.spec.threads_per_run), max(1, self.spec.ranks_per_run)
        remote = self.ray.remote(
            num_cpus=threads * ranks, num_gpus=self.spec.num_gpus, max_retries=self.spec.max_retries
        )(execute_ray_task)
        where = (self.spec.launcher, self.spec.python)
        submitted = {}
        for task in tasks:
            submitted[remote.remote({**task, **_placement(task, threads, ranks, *where)})] = task
        pending = list(submitted)
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            try:
                yield self.ray.get(done[0])
            except self.ray.exceptions.RayError as exc:  # the task's last attempt died: not a training fault
                yield self._lost(submitted[done[0]], done[0], exc)

    def _lost(self, task: dict[str, Any], ref: Any, exc: Exception) -> dict[str, Any]:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        message = (
            f"{type(exc).__name__}: Ray lost the task after {self.spec.max_retries} retries: {first_line}"
        )
        if task.get("kind") is None:  # a training run: release the dead attempt's claim
            ResultsDB(task["db_url"]).abandon(task["run_id"], ray_owner_prefix(ref.task_id().hex()), message)
        lost = {"run_id": task["run_id"], "status": "failed", "error": message}
        return {**lost, "kind": task["kind"]} if task.get("kind") else lost

    def describe(self) -> str:
        resources = self.ray.cluster_resources()
        return (
            f"ray executor: cluster with {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs"
        )


def _placement(
    task: dict[str, Any], threads: int, ranks: int, launcher: str | None, python: str | None = None
) -> dict[str, Any]:
    """How a task runs: threads per process, and — training runs only — data-parallel processes and the
    interpreter (another environment's, for a model family installed there)."""
    if task.get("kind") in ("refine", "spectrum"):
        return {"threads": threads}
    return {"threads": threads, "ranks": ranks, "launcher": launcher, "python": python}


def make_executor(spec: ExecutorSpec) -> LocalExecutor | RayExecutor:
    return RayExecutor(spec) if spec.kind == "ray" else LocalExecutor(spec)
