"""What a reader must know before trusting a study's table: which runs did not train, where each selected
learning rate sits in its grid (the sweep landscape), and what a training step costs when measured.

* Run checks: the diagnostics flags of every final run (:mod:`mlipopt.train.diagnostics`) — stored with
  the run, or computed from its stored curve for databases written before flags existed.
* Selections: per optimizer and force fraction, the learning rates tried (grid extensions included),
  the one selected, whether it is interior, and notes (e.g. "selected among flagged runs").
* Sweep landscape: best validation metric against learning rate, one line per optimizer, selected
  points ringed; runs that failed are marked at the top, flagged runs hollow.
* Step cost: the study's controlled measurement (same batch, interleaved) beside the cost inferred from
  the runs' wall-clock, each labelled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..figures import save_figure
from ..optim.registry import same_without_decay_pairs
from ..study.db import ResultsDB, Run, run_flags
from ..train.diagnostics import converged_from_final, training_checks, training_flags, verdicts
from .aggregate import mean_std


def flags_of(db: ResultsDB, run: Run) -> list[str]:
    """The run's diagnostics flags; recomputed from its stored curve when the database predates them,
    and the convergence flag derived from its final record when that predates ``stop_reason``."""
    if run.status != "done":
        return run_flags(run)
    final = json.loads(run.final or "{}")
    budget = json.loads(run.config).get("training", {}).get("max_epochs", run.epochs or 0)
    if run.flags is not None:
        flags = run_flags(run)
        if "stop_reason" not in final and converged_from_final(final, budget) is False:
            flags.append("not_converged")
        return flags
    rows = [{"val_metric": e.val_metric, "val_e_mae": e.val_e_mae} for e in db.curve(run.id)]
    return training_flags(
        rows, budget, int(final.get("best_epoch", 0)), converged=converged_from_final(final, budget)
    )


def cell_checks(db: ResultsDB, runs: list[Run]) -> dict[tuple[str, float], str]:
    """Per (optimizer, force fraction): '' when every seed trained, else e.g. 'did not train 2/3'."""
    out: dict[tuple[str, float], str] = {}
    groups: dict[tuple[str, float], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.optimizer, run.force_fraction), []).append(run)
    for key, group in groups.items():
        counts: dict[str, int] = {}
        for run in group:
            for label in verdicts(flags_of(db, run)):
                counts[label] = counts.get(label, 0) + 1
        order = sorted(counts, key=lambda label: label == "not converged")  # a budget's mark goes last
        out[key] = ", ".join(f"{label} {counts[label]}/{len(group)}" for label in order)
    return out


def constant_predictor_line(runs: list[Run]) -> list[str]:
    """The test energy MAE of per-element constants fitted on each run's training split (no model)."""
    values = []
    for run in runs:
        value = json.loads(run.final or "{}").get("constant_energy_mae", {}).get("test")
        if value is not None:
            values.append(value)
    if not values:
        return []
    return [
        f"Floor: per-element energies fitted on the training split, without a model, reach a test E MAE of "
        f"{mean_std(values, 2)} meV/atom; an energy error near it means no geometry was learned.",
        "",
    ]


def same_optimizer_line(runs: list[Run]) -> list[str]:
    """A warning when the study compares two optimizers that differ only in how weight decay enters the
    update (``adam`` and ``adamw``: coupled L2 against decoupled; the registry's ``same_without_decay``)
    at zero weight decay: their rows are then the same optimizer's and any difference or tie between them
    means nothing (Loshchilov & Hutter)."""
    lines = []
    for name, twin in same_without_decay_pairs():
        decays = {o: {r.weight_decay for r in runs if r.optimizer == o} for o in (name, twin)}
        if not decays[name] or not decays[twin] or decays[name] | decays[twin] != {0.0}:
            continue
        lines += [
            f"**{twin} and {name} are the same optimizer in this study**: they differ only in how weight "
            f"decay is applied, and every final run of both used weight decay 0. Sweep it (e.g. "
            f"`optimizers.{name}.weight_decay=[0,1e-5,1e-4,1e-3]`, the same for {twin}) to compare them.",
            "",
        ]
    return lines


def reproducibility_line(runs: list[Run]) -> list[str]:
    """What a re-run reproduces: bit for bit on the same CPU model, torch build and one torch thread per
    run (the study default, whatever the core count). Another CPU model, or more threads per run,
    changes the summation order of torch's CPU kernels: the numbers differ, and only what lies outside
    the seed spread carries over (docs/study.md)."""
    finals = [json.loads(r.final or "{}") for r in runs]
    threads = {f.get("torch_threads") for f in finals}
    versions = sorted({str(f.get("torch_version")) for f in finals} - {"None"})
    cpus = sorted({str(f.get("cpu_model")) for f in finals} - {"None"})
    build = f"torch {', '.join(versions)}" if versions else "the same torch build"
    where = f"on {' and '.join(cpus)}" if cpus else "on a CPU model this database did not record"
    carry = ("On another CPU model (or with more threads) the bits differ: compare only what lies outside "
             "the seed spread — the marks and the `vs` column of the table.")  # fmt: skip
    if threads == {1}:
        return [
            f"Reproducibility: every final run trained with 1 torch thread {where}, so re-running the study "
            f"(`threads_per_run: 1`, any number of workers) with {build} on that CPU model gives this table "
            f"bit for bit. {carry}",
            "",
        ]
    if None in threads:
        return ["Reproducibility: this database predates per-run thread records; compare re-runs only "
                f"when they used `threads_per_run: 1`. {carry}", ""]  # fmt: skip
    return [
        f"**Reproducibility: runs trained with {', '.join(str(t) for t in sorted(threads))} torch threads "
        f"{where}.** With more than one thread the summation order of torch's CPU kernels varies from run to "
        "run, so a re-run of this study differs (docs/study.md); use `executor.threads_per_run=1` for a "
        f"table that re-runs bit for bit on one CPU model. {carry}",
        "",
    ]


def checks_section(db: ResultsDB, runs: list[Run]) -> list[str]:
    """A warning paragraph listing flagged final runs (nothing when every run trained)."""
    all_flags = [(r, flags_of(db, r)) for r in runs]
    capped = [r for r, f in all_flags if "not_converged" in f]
    flagged = [(r, training_checks(f)) for r, f in all_flags]
    flagged = [(r, f) for r, f in flagged if f]
    lines = []
    if capped:
        everyone = (
            "every final run ended at its epoch cap"
            if len(capped) == len(runs)
            else f"{len(capped)} of {len(runs)} final runs ended at their epoch cap"
        )
        lines += [
            f"**Not converged: {everyone}** before the stopping rule (early-stopping "
            "patience or a learning-rate floor) was met: those models were still learning, so their rows "
            "compare what each optimizer reached within this budget, not where it converges. A converged "
            "comparison sets `training.early_stopping_patience` (or `early_stopping_lr_floor` under "
            "`scheduler.name=plateau`) and a `max_epochs` the runs do not reach (preset "
            "`converged-ethanol`).",
            "",
        ]
    if not flagged:
        return lines + [f"Run checks: all {len(runs)} final runs trained (no early best epoch, no regression "
                        "from epoch 1, no energy drift).", ""]  # fmt: skip
    lines += [
        f"**Warning: {len(flagged)} of {len(runs)} final runs did not train cleanly** — their rows are "
        "marked in the table's last column; read them as such:",
        "",
    ]
    for run, flags in sorted(flagged, key=lambda x: (x[0].optimizer, -x[0].force_fraction, x[0].seed)):
        best = json.loads(run.final or "{}").get("best_epoch")
        lines.append(
            f"- {run.optimizer} s = {100 * run.force_fraction:g} % seed {run.seed} (best epoch {best} of "
            f"{run.epochs}): {', '.join(verdicts(flags))}"
        )
    return lines + [""]


def selections_section(db: ResultsDB, study: str, out: Path) -> list[str]:
    """The selection table and the sweep-landscape figure (empty when nothing was swept)."""
    selections = [s for s in db.selections(study, "sweep")]
    if not selections:
        return []
    lines = [
        "## Selected learning rates",
        "",
        "| force labels | optimizer | rates tried | selected lr | weight decay | position | note |",
        "|---|---|---|---|---|---|---|",
    ]
    revised = {(r.optimizer, r.force_fraction): r for r in db.selections(study, "revision")}
    for s in sorted(selections, key=lambda s: (-s.force_fraction, s.optimizer)):
        grid = ", ".join(f"{lr:g}" for lr in json.loads(s.grid))
        revision = revised.get((s.optimizer, s.force_fraction))
        extended = f" (+{s.extensions} beyond the grid)" if s.extensions else ""
        position = s.position if s.position != "interior" else "interior"
        if s.position.endswith("edge") and s.position != "single point":
            position = f"**{s.position}**"
        lr = "—" if s.lr is None else f"{s.lr:g}"
        note = s.note or ""
        if revision is not None:  # the final runs' rate, not the sweep's
            lr = f"{lr} → **{revision.lr:g}**"
            note = "; ".join(x for x in (note, revision.note) if x)
        wd = "—" if s.weight_decay is None else f"{s.weight_decay:g}"
        lines.append(
            f"| {100 * s.force_fraction:g} % | {s.optimizer} | {grid}{extended} | {lr} | {wd} | {position} | "
            f"{note} |"
        )
    lines.append("")
    swept = [r for r in db.runs(study) if r.stage == "sweep"]
    if swept and landscape_figure(db, swept, selections, out / "sweep_landscape.png"):
        lines += ["![validation metric against learning rate](sweep_landscape.png)", ""]
    return lines


def landscape_figure(db: ResultsDB, runs: list[Run], selections: list, path: Path) -> bool:
    """Best validation metric (10 × E-MAE + F-MAE) against learning rate per optimizer, per fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = sorted({r.force_fraction for r in runs}, reverse=True)
    optimizers = sorted({r.optimizer for r in runs})
    if not optimizers:
        return False
    colours = {o: plt.cm.tab10(i % 10) for i, o in enumerate(optimizers)}
    chosen = {(s.optimizer, s.force_fraction): s.lr for s in selections}
    fig, axes = plt.subplots(1, len(fractions), figsize=(4.2 * len(fractions), 3.6), squeeze=False)
    for ax, s in zip(axes[0], fractions):
        finite = [r.best_val_metric for r in runs if r.force_fraction == s and r.best_val_metric is not None]
        ceiling = 1.5 * max(finite) if finite else 1.0
        for o in optimizers:
            mine = [r for r in runs if r.optimizer == o and r.force_fraction == s]
            best_per_lr: dict[float, tuple[float, bool]] = {}
            failed = []
            for r in mine:
                if r.status == "pruned":  # stopped early by a halving sweep: not comparable (report.halving)
                    continue
                if r.status != "done" or r.best_val_metric is None:
                    failed.append(r.lr)
                    continue
                value, flagged = r.best_val_metric, bool(training_checks(flags_of(db, r)))
                if r.lr not in best_per_lr or value < best_per_lr[r.lr][0]:
                    best_per_lr[r.lr] = (value, flagged)
            if not best_per_lr and not failed:
                continue
            rates = sorted(best_per_lr)
            ax.plot(rates, [best_per_lr[lr][0] for lr in rates], "-", color=colours[o], label=o, lw=1.2)
            for lr in rates:
                value, flagged = best_per_lr[lr]
                ax.plot([lr], [value], "o", color=colours[o], mfc="none" if flagged else colours[o], ms=5)
            if failed:
                ax.plot(failed, [ceiling] * len(failed), "x", color=colours[o], ms=7)
            if chosen.get((o, s)) in best_per_lr:
                lr = chosen[(o, s)]
                ax.plot([lr], [best_per_lr[lr][0]], "o", ms=12, mfc="none", mec="k", mew=1.0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("best validation metric (10·E + F)")
        ax.set_title(f"{100 * s:g} % force labels")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, title="ringed: selected; hollow: flagged; ×: failed", title_fontsize=6)
    save_figure(fig, path)
    return True


def measured_cost_rows(db: ResultsDB, study: str, baseline: str) -> list[str]:
    """Rows of the controlled step-cost measurement (empty when the study did not measure it)."""
    costs = db.step_costs(study)
    if not costs:
        return []
    settings = sorted({c.description for c in costs})
    rows = [
        "Measured (controlled: every optimizer on the same batch, steps interleaved, warm-up discarded; "
        + "; ".join(settings)
        + "). The cost is the mean over whole refresh periods (SOAP's basis refresh included); "
        "the median step leaves the refresh out and is shown for comparison only:",
        "",
        f"| optimizer | forces | ms per step, mean over periods [range of period means] | × {baseline} "
        "| median step | slowest step |",
        "|---|---|---|---|---|---|",
    ]
    for c in sorted(costs, key=lambda c: (-c.with_forces, _cost_ratio(c) or np.inf)):
        ratio = "—" if _cost_ratio(c) is None else f"{_cost_ratio(c):.2f}"
        if c.mean_s is None:  # a database written before means over periods were kept
            mean = f"— (median {1e3 * c.median_s:.1f})"
            slowest = "—"
        else:
            mean = f"{1e3 * c.mean_s:.1f} [{1e3 * c.period_min_s:.1f}–{1e3 * c.period_max_s:.1f}]"
            slowest = f"{1e3 * c.slowest_s:.1f}"
        rows.append(
            f"| {c.optimizer} | {'yes' if c.with_forces else 'no'} | {mean} | {ratio} "
            f"| {1e3 * c.median_s:.1f} | {slowest} |"
        )
    return rows + [""]


def _cost_ratio(cost: Any) -> float | None:
    """Ratio of mean step costs to the baseline's; the paired median ratio in older databases."""
    return cost.ratio_mean if cost.mean_s is not None else cost.ratio_median


def measured_step_seconds(db: ResultsDB, study: str, with_forces: bool) -> dict[str, float]:
    """Seconds per step of the controlled measurement by optimizer: the mean over whole refresh periods
    (the median in a database written before the mean was kept)."""
    return {
        c.optimizer: c.mean_s if c.mean_s is not None else c.median_s
        for c in db.step_costs(study)
        if bool(c.with_forces) == with_forces
    }
