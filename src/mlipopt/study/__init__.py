"""Studies: grids × seeds × force fractions, executors, and the results database."""

from .._lazy import lazy_exports

_EXPORTS = {
    "ResultsDB": ".db",
    "LocalExecutor": ".executors",
    "RayExecutor": ".executors",
    "TrainJob": ".jobs",
    "RefineJob": ".jobs",
    "SpectrumJob": ".jobs",
    "execute": ".jobs",
    "make_executor": ".executors",
    "StudyOutcome": ".runner",
    "run_study": ".runner",
    "ExecutorSpec": ".spec",
    "OptimizerGrid": ".spec",
    "RunSpec": ".spec",
    "StudySpec": ".spec",
    "load_study": ".spec",
    "run_config": ".spec",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
