"""Studies: grids × seeds × force fractions, executors, and the results database."""

from .db import ResultsDB
from .executors import LocalExecutor, RayExecutor, execute_run, make_executor
from .runner import StudyOutcome, run_study
from .spec import ExecutorSpec, OptimizerGrid, RunSpec, StudySpec, load_study, run_config

__all__ = [
    "ExecutorSpec",
    "LocalExecutor",
    "OptimizerGrid",
    "RayExecutor",
    "ResultsDB",
    "RunSpec",
    "StudyOutcome",
    "StudySpec",
    "execute_run",
    "load_study",
    "make_executor",
    "run_config",
    "run_study",
]
