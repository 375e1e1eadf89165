"""From the results database to numbers: per-(optimizer, force fraction) statistics over seeds,
validation curves on a common wall-clock grid, time-to-target and per-step cost (Harari et al.,
appendix B)."""

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


def format_mean_std(mean: float, std: float, n: int, digits: int) -> str:
    """``mean ± std`` with ``digits`` decimals; the spread is left out for a single value."""
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")


def mean_std(values: list[float | None], digits: int) -> str:
    """``mean ± std`` (sample std) of the values that exist; ``—`` when none do."""
    present = [v for v in values if v is not None]
    if not present:
        return "—"
    return format_mean_std(*Cell.stats(present), len(present), digits)


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
    """Validation error per epoch: median and IQR over seeds, against the median training wall-clock.

    Seeds share the epoch structure, so the median curve is taken epoch by epoch; its x-coordinate is
    the median (over seeds) training time at the end of that epoch.
    """

    metric: str  # "val_f_mae" or "val_e_mae"
    time: np.ndarray
    median: np.ndarray
    q25: np.ndarray
    q75: np.ndarray
    steps_per_epoch: int


def curves(db: ResultsDB, runs: list[Run], metric: str | None = None) -> Curves | None:
    """Curves of the runs (one per seed): ``metric``, by default the force MAE, or the energy MAE when
    no force is labelled."""
    per_run = [c for c in (db.curve(r.id) for r in runs) if c]
    if not per_run:
        return None
    if metric is None:
        metric = "val_f_mae" if all(c[0].val_f_mae is not None for c in per_run) else "val_e_mae"
    if any(getattr(c[0], metric) is None for c in per_run):
        return None
    n_epochs = min(len(c) for c in per_run)
    values = np.array([[getattr(e, metric) for e in c[:n_epochs]] for c in per_run], dtype=float)
    times = np.array([[e.train_time_s for e in c[:n_epochs]] for c in per_run], dtype=float)
    return Curves(
        metric,
        np.median(times, axis=0),
        np.median(values, axis=0),
        np.percentile(values, 25, axis=0),
        np.percentile(values, 75, axis=0),
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
    """First epoch (and its median wall-clock) at which the median curve reaches ``target``; None if never."""
    hit = np.nonzero(curve.median <= target)[0]
    if not len(hit):
        return TimeToTarget(None, None, None)
    epoch = int(hit[0]) + 1
    return TimeToTarget(float(curve.time[hit[0]]), epoch, epoch * curve.steps_per_epoch)


def step_cost(runs: list[Run]) -> dict[str, float]:
    """Median training wall-clock per optimizer step (forward, backward, update) in ms, per optimizer."""
    out: dict[str, list[float]] = {}
    for r in runs:
        if r.train_time_s and r.epochs and r.steps_per_epoch:
            out.setdefault(r.optimizer, []).append(1e3 * r.train_time_s / (r.epochs * r.steps_per_epoch))
    return {k: float(np.median(v)) for k, v in out.items()}


def stored_config(run: Run) -> dict:
    return json.loads(run.config)
