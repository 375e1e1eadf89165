"""Where jobs run: local worker processes (default) or Ray tasks on a cluster.

An executor places a job (:mod:`mlipopt.study.jobs`: threads, ranks, interpreter) and runs it; the job
records its own result in the results database, so the study process holds no result that a kill could
lose. Both executors yield results as jobs finish.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from .jobs import Job, Placement, execute
from .spec import ExecutorSpec


def execute_ray_task(job: Job) -> dict[str, Any]:
    """:func:`~mlipopt.study.jobs.execute` as a Ray task: the claim's owner names the task
    (``ray-task-<id>:``, the same for every attempt) and the node, so a retry after its node died takes
    the run over at once."""
    import ray

    context = ray.get_runtime_context()
    prefix = ray_owner_prefix(context.get_task_id())
    owner = f"{prefix}{context.get_node_id()[:12]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return execute(job, owner=owner, succeeding=prefix)


def ray_owner_prefix(task_id: str) -> str:
    return f"ray-task-{task_id}:"


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


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return os.cpu_count() or 1


class LocalExecutor:
    """Runs in parallel worker processes (spawned: no forked OpenMP state), sized to the machine."""

    def __init__(self, spec: ExecutorSpec) -> None:
        self.placement = placement_of(spec)
        self.threads, self.ranks = self.placement.threads, self.placement.ranks
        self.workers = spec.workers or max(1, available_cpus() // (self.threads * self.ranks))

    def map(self, jobs: list[Job]) -> Iterator[dict[str, Any]]:
        if not jobs:
            return
        jobs = [job.placed(self.placement) for job in jobs]
        if self.workers == 1:
            for job in jobs:  # in-process: simplest to debug, no start-up cost
                yield execute(job)
            return
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=min(self.workers, len(jobs)),
            mp_context=context,
            initializer=die_with_parent,
            initargs=(os.getpid(),),
        ) as pool:
            futures = [pool.submit(execute, job) for job in jobs]
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

    def map(self, jobs: list[Job]) -> Iterator[dict[str, Any]]:
        """Jobs as Ray tasks, yielded as they finish. A task whose worker or node dies is re-run by Ray
        (``max_retries`` times, on any live node; a training run resumes from the checkpoint in the shared
        study folder); one that Ray gives up on is recorded as failed, to be retried when the study is
        re-run."""
        placement = placement_of(self.spec)
        remote = self.ray.remote(
            num_cpus=placement.threads * placement.ranks,
            num_gpus=self.spec.num_gpus,
            max_retries=self.spec.max_retries,
        )(execute_ray_task)
        submitted = {remote.remote(job.placed(placement)): job for job in jobs}
        pending = list(submitted)
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            try:
                yield self.ray.get(done[0])
            except self.ray.exceptions.RayError as exc:  # the task's last attempt died: not a job's fault
                first_line = (str(exc).strip().splitlines() or [""])[0]
                message = (
                    f"{type(exc).__name__}: Ray lost the task after {self.spec.max_retries} retries: "
                    f"{first_line}"
                )
                yield submitted[done[0]].lost(ray_owner_prefix(done[0].task_id().hex()), message)

    def describe(self) -> str:
        resources = self.ray.cluster_resources()
        return (
            f"ray executor: cluster with {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs"
        )


def placement_of(spec: ExecutorSpec) -> Placement:
    return Placement(max(1, spec.threads_per_run), max(1, spec.ranks_per_run), spec.launcher, spec.python)


def make_executor(spec: ExecutorSpec) -> LocalExecutor | RayExecutor:
    return RayExecutor(spec) if spec.kind == "ray" else LocalExecutor(spec)
