"""From the results database to numbers: per-(optimizer, force fraction) statistics over seeds,
validation curves on a common wall-clock grid, time-to-target and per-step cost (design §5)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from ..study.db import ResultsDB, Run


@dataclass
class Cell:
    """Test errors of one (optimizer, force fraction) over seeds."""

    optimizer: str
    force_fraction: float
    seeds: list[int] = field(default_factory=list)
    e_mae: list[float] = field(default_factory=list)
    f_mae: list[float] = field(default_factory=list)
    e_rmse: list[float] = field(default_factory=list)
    f_rmse: list[float] = field(default_factory=list)
    lr: float = 0.0
    weight_decay: float = 0.0
    loss_ratio: tuple[float, float] = (1.0, 1.0)

    @staticmethod
    def stats(values: list[float]) -> tuple[float, float]:
        """Mean and sample standard deviation (0 for a single seed)."""
        a = np.asarray(values, dtype=float)
        return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def final_cells(db: ResultsDB, study: str) -> dict[tuple[str, float], Cell]:
    cells: dict[tuple[str, float], Cell] = {}
    for run in db.runs(study, status="done"):
        if run.stage != "final" or run.test_e_mae is None:
            continue
        cell = cells.setdefault(
            (run.optimizer, run.force_fraction),
            Cell(
                run.optimizer,
                run.force_fraction,
                lr=run.lr,
                weight_decay=run.weight_decay,
                loss_ratio=(run.energy_weight, run.force_weight),
            ),
        )
        cell.seeds.append(run.seed)
        cell.e_mae.append(run.test_e_mae)
        cell.e_rmse.append(run.test_e_rmse)
        if run.test_f_mae is not None:
            cell.f_mae.append(run.test_f_mae)
            cell.f_rmse.append(run.test_f_rmse)
    return cells


def final_runs(db: ResultsDB, study: str) -> list[Run]:
    return [r for r in db.runs(study, status="done") if r.stage == "final"]


@dataclass
class Curves:
    """Median and IQR of a validation error over seeds, against training wall-clock and epochs."""

    metric: str  # "val_f_mae" or "val_e_mae"
    time: np.ndarray
    median: np.ndarray
    q25: np.ndarray
    q75: np.ndarray
    epoch_median: np.ndarray  # median over seeds at each epoch index
    steps_per_epoch: int


def curves(db: ResultsDB, runs: list[Run], n_points: int = 200) -> Curves | None:
    """Step-interpolated validation curves (a value is known from the end of its epoch on).

    Uses the force MAE when the validation frames carry forces, else the energy MAE (s = 0).
    """
    per_run = [db.curve(r.id) for r in runs]
    per_run = [c for c in per_run if c]
    if not per_run:
        return None
    metric = "val_f_mae" if all(c[0].val_f_mae is not None for c in per_run) else "val_e_mae"
    end = min(c[-1].train_time_s for c in per_run)
    start = max(c[0].train_time_s for c in per_run)
    grid = np.linspace(start, end, n_points) if end > start else np.array([end])
    values = []
    for c in per_run:
        t = np.array([e.train_time_s for e in c])
        v = np.array([getattr(e, metric) for e in c], dtype=float)
        index = np.searchsorted(t, grid, side="right") - 1
        values.append(v[np.clip(index, 0, len(v) - 1)])
    values = np.array(values)
    n_epochs = min(len(c) for c in per_run)
    by_epoch = np.array([[getattr(e, metric) for e in c[:n_epochs]] for c in per_run], dtype=float)
    return Curves(
        metric,
        grid,
        np.median(values, axis=0),
        np.percentile(values, 25, axis=0),
        np.percentile(values, 75, axis=0),
        np.median(by_epoch, axis=0),
        int(runs[0].steps_per_epoch or 1),
    )


@dataclass
class TimeToTarget:
    seconds: float | None
    epochs: int | None
    gradient_evaluations: int | None

    @property
    def reached(self) -> bool:
        return self.seconds is not None


def time_to_target(curve: Curves, target: float) -> TimeToTarget:
    """First wall-clock time (and epoch) at which the median curve reaches ``target``; None if never."""
    hit = np.nonzero(curve.median <= target)[0]
    hit_epoch = np.nonzero(curve.epoch_median <= target)[0]
    epochs = int(hit_epoch[0]) + 1 if len(hit_epoch) else None
    return TimeToTarget(
        float(curve.time[hit[0]]) if len(hit) else None,
        epochs,
        None if epochs is None else epochs * curve.steps_per_epoch,
    )


def step_cost(runs: list[Run]) -> dict[str, float]:
    """Median training wall-clock per optimizer step (forward, backward, update) in ms, per optimizer."""
    out: dict[str, list[float]] = {}
    for r in runs:
        if r.train_time_s and r.epochs and r.steps_per_epoch:
            out.setdefault(r.optimizer, []).append(1e3 * r.train_time_s / (r.epochs * r.steps_per_epoch))
    return {k: float(np.median(v)) for k, v in out.items()}


def run_config(run: Run) -> dict:
    return json.loads(run.config)
