"""Time to AdamW's accuracy, per seed, against a baseline that finished learning (issue 24).

Harari et al. (section 4, figure 2) report the time SOAP needs to reach the best validation error AdamW
reached, with medians and IQR bands over seeds. Such a ratio means what it says only when AdamW had
finished learning: against a run its epoch cap cut short it compares budgets. So:

* the **target** is the median over AdamW's *converged* final runs (stopped by early-stopping patience
  or a learning-rate floor, :mod:`mlipopt.train.diagnostics`) of each run's best validation error; when
  none converged, the median over all of them, and every ratio against it is printed as ``≥``;
* each seed's **time to target** is the first epoch at which its own validation curve reaches the target,
  in epochs, gradient evaluations (epochs × steps per epoch) and, where the study measured step costs,
  gradient evaluations × the controlled mean step cost (the run's wall-clock otherwise); median and IQR
  over seeds, a seed that never reaches it counting as later than every seed that does;
* the **speed-up against the target** repeats the measurement for every target along AdamW's
  best-so-far median curve (what AdamW had reached after each of its epochs), so a figure shows whether
  an advantage grows, holds or fades as training goes on — which one fixed budget cannot show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..optim.registry import BASELINE, baseline_first
from ..study.db import ResultsDB, Run
from .trust import flags_of, measured_step_seconds


@dataclass
class SeedCurve:
    """One final run's validation curve with the cost of reaching each epoch."""

    run: Run
    values: np.ndarray  # validation metric after each epoch
    gradient_evaluations: np.ndarray  # cumulative optimizer steps after each epoch
    seconds: np.ndarray  # measured-step-cost time (or wall-clock) after each epoch
    converged: bool

    def first_reaching(self, target: float) -> int | None:
        """Index of the first epoch whose value is at or below ``target``; None if none is."""
        hit = np.nonzero(self.values <= target)[0]
        return int(hit[0]) if len(hit) else None


def seed_curves(db: ResultsDB, runs: list[Run], metric: str, step_seconds: float | None) -> list[SeedCurve]:
    """The runs' curves of ``metric`` (``val_f_mae`` or ``val_e_mae``); cost in measured-step time when
    ``step_seconds`` is given, else the run's own training wall-clock."""
    out = []
    for run in runs:
        epochs = db.curve(run.id)
        values = [getattr(e, metric) for e in epochs]
        if not epochs or any(v is None for v in values):
            continue
        steps = np.arange(1, len(epochs) + 1) * int(run.steps_per_epoch or 1)
        seconds = (
            steps * step_seconds
            if step_seconds is not None
            else np.array([e.train_time_s for e in epochs], dtype=float)
        )
        out.append(
            SeedCurve(
                run,
                np.asarray(values, dtype=float),
                steps.astype(float),
                np.asarray(seconds, dtype=float),
                "not_converged" not in flags_of(db, run),
            )
        )
    return out


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """25th, 50th and 75th percentiles (linear interpolation); ``inf`` wherever an interpolation touches a
    seed that never reached the target (numpy would give NaN for ``inf - inf``)."""
    a = np.sort(np.asarray(values, dtype=float))
    out = []
    for q in (0.25, 0.5, 0.75):
        position = q * (len(a) - 1)
        low, high = int(math.floor(position)), int(math.ceil(position))
        if not np.isfinite(a[high]):
            out.append(math.inf)
        else:
            out.append(float(a[low] + (a[high] - a[low]) * (position - low)))
    return out[0], out[1], out[2]


@dataclass
class Reach:
    """How the seeds of one cell reach a target: per-seed costs (``inf`` for a seed that never does)."""

    epochs: list[float]
    gradient_evaluations: list[float]
    seconds: list[float]

    @property
    def reached(self) -> int:
        return sum(math.isfinite(e) for e in self.epochs)


def reach(curves: list[SeedCurve], target: float) -> Reach:
    out = Reach([], [], [])
    for c in curves:
        i = c.first_reaching(target)
        out.epochs.append(math.inf if i is None else float(i + 1))
        out.gradient_evaluations.append(math.inf if i is None else float(c.gradient_evaluations[i]))
        out.seconds.append(math.inf if i is None else float(c.seconds[i]))
    return out


def baseline_target(curves: list[SeedCurve]) -> tuple[float, bool]:
    """The median over the baseline's converged runs of their best validation value, and whether any
    converged (when none did, the median over all runs, a target the ratios can only bound)."""
    converged = [c for c in curves if c.converged]
    chosen = converged or curves
    return float(np.median([c.values.min() for c in chosen])), bool(converged)


def _fmt(q: tuple[float, float, float], digits: int) -> str:
    """``median [q25–q75]``; counts (digits 0) keep a half where the interpolation between seeds gives one."""

    def one(x: float) -> str:
        if not math.isfinite(x):
            return "never"
        return f"{x:.1f}" if digits == 0 and not float(x).is_integer() else f"{x:.{digits}f}"

    if not math.isfinite(q[1]):
        return "not reached"
    return f"{one(q[1])} [{one(q[0])}–{one(q[2])}]"


def _ratio(base: float, mine: float, bound: bool) -> str:
    if not (math.isfinite(base) and math.isfinite(mine)) or mine <= 0:
        return "—"
    return f"{'≥ ' if bound else ''}{base / mine:.2f}×"


def _metric(curves_by_opt: dict[str, list[Run]], db: ResultsDB) -> str:
    runs = [r for rs in curves_by_opt.values() for r in rs]
    first = [db.curve(r.id)[:1] for r in runs]
    return "val_f_mae" if all(f and f[0].val_f_mae is not None for f in first) else "val_e_mae"


def time_to_target_section(db: ResultsDB, study: str, runs: list[Run]) -> tuple[list[str], dict]:
    """The time-to-target table (Markdown lines) against AdamW's converged best, and the per-fraction
    curves the speed-up figure draws (``{s: (metric, {optimizer: [SeedCurve]}, target)}``)."""
    fractions = sorted({r.force_fraction for r in runs}, reverse=True)
    measured = {True: measured_step_seconds(db, study, True), False: measured_step_seconds(db, study, False)}
    lines = [
        "| force labels | optimizer | target | seeds reaching it | epochs | gradient evaluations | "
        f"time [s] | speed-up vs {BASELINE} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    drawn: dict = {}  # s -> (metric, curves, target)
    capped: list[str] = []  # fractions where no baseline run converged
    time_is_measured = True
    for s in fractions:
        by_opt: dict[str, list[Run]] = {}
        for r in runs:
            if r.force_fraction == s:
                by_opt.setdefault(r.optimizer, []).append(r)
        if BASELINE not in by_opt:
            continue
        metric = _metric(by_opt, db)
        unit = "meV/Å" if metric == "val_f_mae" else "meV/atom"
        step = measured[s > 0]
        time_is_measured &= all(o in step for o in by_opt)
        curves = {
            o: seed_curves(db, rs, metric, step.get(o) if all(x in step for x in by_opt) else None)
            for o, rs in by_opt.items()
        }
        curves = {o: c for o, c in curves.items() if c}
        if BASELINE not in curves:
            continue
        target, converged = baseline_target(curves[BASELINE])
        drawn[s] = (metric, curves, target)
        base = reach(curves[BASELINE], target)
        base_q = {k: quartiles(getattr(base, k)) for k in ("epochs", "gradient_evaluations", "seconds")}
        if not converged:
            capped.append(f"{100 * s:g} %")
        order = baseline_first(curves)
        for o in order:
            mine = reach(curves[o], target)
            q = {k: quartiles(getattr(mine, k)) for k in ("epochs", "gradient_evaluations", "seconds")}
            speedup = "—" if o == BASELINE else _ratio(base_q["seconds"][1], q["seconds"][1], not converged)
            lines.append(
                f"| {100 * s:g} % | {o} | {target:.2f} {unit} | {mine.reached} of {len(mine.epochs)} | "
                f"{_fmt(q['epochs'], 0)} | {_fmt(q['gradient_evaluations'], 0)} | {_fmt(q['seconds'], 1)} | "
                f"{speedup} |"
            )
    if not drawn:
        return [], {}
    cost = (
        "gradient evaluations × the controlled mean step cost (section below)"
        if time_is_measured
        else "each run's training wall-clock (no controlled step cost stored for every optimizer)"
    )
    lines += [
        "",
        f"Target: the median over {BASELINE}'s converged final runs (all of them where none converged) of "
        "each run's best validation error. "
        "Per optimizer, the median [IQR] over seeds of the first epoch at which a seed's validation curve "
        f"reaches it; time is {cost}. A seed that never reaches it counts as later than every seed that "
        "does (`never` in an IQR bound, `not reached` for a median). Speed-up: the ratio of median times.",
    ]
    if capped:
        where = ", ".join(capped[:-1]) + (" and " if len(capped) > 1 else "") + capped[-1]
        lines += [
            "",
            f"**At {where} no {BASELINE} final run converged** (each ended at its epoch cap): the target "
            "is the median of all its runs' best errors, and each speed-up there is printed as a lower "
            f"bound (`≥`): {BASELINE}'s time to the error it would converge to is longer than its time to "
            "this one.",
        ]
    return lines, drawn


def speedup_curve(
    baseline: list[SeedCurve], other: list[SeedCurve]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every epoch B of the baseline's median curve, the target it had reached (its best-so-far
    median), the baseline's median time to it and the speed-up T_baseline / T_other of median times
    (NaN where the other optimizer's median never reaches it)."""
    n = min(len(c.values) for c in baseline)
    median = np.median(np.array([c.values[:n] for c in baseline]), axis=0)
    targets = np.minimum.accumulate(median)
    base_t, ratio = [], []
    for target in targets:
        t_base = quartiles(reach(baseline, float(target)).seconds)[1]
        t_other = quartiles(reach(other, float(target)).seconds)[1]
        base_t.append(t_base)
        ratio.append(t_base / t_other if math.isfinite(t_other) and t_other > 0 else math.nan)
    return targets, np.asarray(base_t), np.asarray(ratio)


def speedup_figure(drawn: dict, path) -> None:
    """Speed-up against AdamW for every target along AdamW's best-so-far curve, one panel per fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    from ..figures import save_figure

    fractions = sorted(drawn, reverse=True)
    fig, axes = plt.subplots(1, len(fractions), figsize=(4.4 * len(fractions), 3.6), squeeze=False)
    for ax, s in zip(axes[0], fractions):
        metric, curves, _ = drawn[s]
        unit, what = ("meV/Å", "force") if metric == "val_f_mae" else ("meV/atom", "energy")
        others = [o for o in sorted(curves) if o != BASELINE]
        for i, o in enumerate(others):
            _, base_time, ratio = speedup_curve(curves[BASELINE], curves[o])
            ax.plot(base_time, ratio, "-o", markersize=2.5, color=plt.cm.tab10((i + 1) % 10), label=o)
        ax.axhline(1.0, color="k", linewidth=0.8, linestyle="--")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        target = drawn[s][2]
        ax.set_xlabel(
            f"{BASELINE}'s median time to the target [s]\n"
            f"(its best-so-far {what} MAE; final {target:.3g} {unit})"
        )
        ax.set_ylabel(f"speed-up vs {BASELINE} (median time)")
        ax.set_title(f"{100 * s:g} % force labels", fontsize=10)
        if others:
            ax.legend(fontsize=7)
    save_figure(fig, path)
