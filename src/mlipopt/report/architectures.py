"""The report of an architectures study (issue 14): learning curves, accuracy against cost, equivariance.

* Learning curves: test force error against training-set size N, log–log, per model and optimizer. Each
  curve gets a fitted power law err = a·N^b; the slope b comes with its standard error, from a
  least-squares fit over every seed's point.
* A run that did not train (its validation curve says so: :mod:`mlipopt.train.diagnostics`) is left out
  of every mean, curve, fit and front, and each place that leaves one out says how many: an untrained
  model's error is not a point of a learning curve.
* Accuracy against cost: test error at the largest N against the measured inference cost (µs/atom/step,
  the 3BPA molecule at batch 1). The Pareto front marks the points no other point beats on both axes.
* Inference cost of every model on every structure, and the equivariance of the trained models, raw and
  symmetrized.
* The study's baseline beside published errors on the same data, where the study declares them
  (``published``; issue 24): measured at the published N, or read off the fitted learning curve.
* One ordinary study report per cell (model, N), linked.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..figures import save_figure
from ..optim.registry import baseline_first
from ..study.db import ResultsDB
from ..train.diagnostics import VERDICT, verdicts
from .aggregate import mean_std
from .trust import cell_checks, flags_of


def fit_power_law(sizes: list[float], errors: list[float]) -> tuple[float, float, float]:
    """(slope b, its standard error, prefactor a) of err = a·N^b by least squares in log–log; the standard
    error is nan with fewer than three points or one size."""
    x, y = np.log(np.asarray(sizes, dtype=float)), np.log(np.asarray(errors, dtype=float))
    if len(set(x.tolist())) < 2:
        raise ValueError("a learning curve needs at least two training-set sizes")
    design = np.stack([np.ones_like(x), x], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    dof = len(x) - 2
    stderr = float("nan")
    if dof > 0:
        sigma2 = float(np.sum((y - design @ coef) ** 2) / dof)
        stderr = float(np.sqrt(sigma2 * np.linalg.inv(design.T @ design)[1, 1]))
    return float(coef[1]), stderr, float(np.exp(coef[0]))


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both minimised), by increasing x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


UNTRAINED = VERDICT["no_progress"]  # "did not train"


@dataclass
class ArchitectureCell:
    model: str
    size: int | None
    optimizer: str
    force_fraction: float
    f_mae: list[float] = field(default_factory=list)
    e_mae: list[float] = field(default_factory=list)
    seconds_per_epoch: list[float] = field(default_factory=list)
    checks: str = ""
    left_out: int = 0  # runs that did not train: not in the errors above


def sub_studies(db: ResultsDB, parent: str) -> dict[str, tuple[str, int | None]]:
    """Sub-study name → (model label, N) of an architectures study, from the runs' cell columns."""
    return db.cells(parent)


def collect(db: ResultsDB, parent: str) -> list[ArchitectureCell]:
    cells: dict[tuple, ArchitectureCell] = {}
    for study, (model, size) in sub_studies(db, parent).items():
        finals = db.runs(study, stage="final", status="done")
        checks = cell_checks(db, finals)
        for run in finals:
            key = (model, size, run.optimizer, run.force_fraction)
            cell = cells.setdefault(key, ArchitectureCell(model, size, run.optimizer, run.force_fraction))
            cell.checks = checks.get((run.optimizer, run.force_fraction), "")
            if UNTRAINED in verdicts(flags_of(db, run)):
                cell.left_out += 1
                continue
            if run.test_f_mae is not None:
                cell.f_mae.append(run.test_f_mae)
            if run.test_e_mae is not None:
                cell.e_mae.append(run.test_e_mae)
            if run.train_time_s and run.epochs:
                cell.seconds_per_epoch.append(run.train_time_s / run.epochs)
    return sorted(cells.values(), key=lambda c: (c.model, -c.force_fraction, c.optimizer, c.size or 0))


def _error(cell: ArchitectureCell) -> list[float]:
    return cell.f_mae or cell.e_mae


def fit_curve(curve: list[ArchitectureCell], errors: Any) -> tuple[float, float, float]:
    """:func:`fit_power_law` over every seed's point of ``curve`` (cells with a size), ``errors(cell)``
    giving a cell's per-seed errors."""
    sized = [c for c in curve if c.size]
    return fit_power_law([c.size for c in sized for _ in errors(c)], [e for c in sized for e in errors(c)])


def learning_curves(cells: list[ArchitectureCell], path: Path) -> list[str]:
    """The figure and the slope table (Markdown lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = sorted({c.force_fraction for c in cells}, reverse=True)
    models = sorted({c.model for c in cells})
    optimizers = baseline_first({c.optimizer for c in cells})
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    styles = {o: s for o, s in zip(optimizers, ["-", "--", ":", "-."] * 3)}
    markers = {o: m for o, m in zip(optimizers, ["o", "s", "^", "D"] * 3)}
    all_sizes = sorted({c.size for c in cells if c.size})
    fig, axes = plt.subplots(1, len(fractions), figsize=(5.2 * len(fractions), 4.2), squeeze=False)
    rows = [
        "| force labels | model | optimizer | slope b (err ∝ N^b) | error at largest N |",
        "|---|---|---|---|---|",
    ]
    for ax, s in zip(axes[0], fractions):
        unit = "force MAE [meV/Å]"
        for m in models:
            for o in optimizers:
                curve = sorted((c for c in cells if (c.model, c.optimizer, c.force_fraction) == (m, o, s)),
                               key=lambda c: c.size or 0)  # fmt: skip
                curve = [c for c in curve if c.size and _error(c)]
                if not curve:
                    continue
                if not curve[0].f_mae:
                    unit = "energy MAE [meV/atom]"
                sizes = [c.size for c in curve]
                means = [float(np.mean(_error(c))) for c in curve]
                stds = [float(np.std(_error(c))) for c in curve]
                label = f"{m} · {o}"
                if len(sizes) >= 2:
                    slope, err, prefactor = fit_curve(curve, _error)
                    grid = np.geomspace(min(sizes), max(sizes), 20)
                    ax.plot(
                        grid, prefactor * grid**slope, styles[o], color=colours[m], alpha=0.5, linewidth=1
                    )
                    label += f" (b = {slope:.2f} ± {err:.2f})"
                    left_out = sum(c.left_out for c in curve)
                    note = f"; {left_out} run(s) that did not train left out" if left_out else ""
                    rows.append(
                        f"| {100 * s:g} % | {m} | {o} | {slope:.2f} ± {err:.2f} | "
                        f"{mean_std(_error(curve[-1]), 1)} (N = {sizes[-1]}{note}) |"
                    )
                ax.errorbar(sizes, means, yerr=stds, fmt=markers[o], color=colours[m], capsize=2,
                            markersize=4, label=label, linestyle="none")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(all_sizes, [str(n) for n in all_sizes])
        ax.minorticks_off()
        ax.set_xlabel("training frames N")
        ax.set_ylabel(f"test {unit}")
        ax.set_title(f"{100 * s:g} % force labels")
        ax.legend(fontsize=7)
    save_figure(fig, path)
    return rows


def pareto_figure(cells: list[ArchitectureCell], costs: dict[str, float], path: Path) -> list[str]:
    """Test error at the largest N against inference cost, Pareto front marked; the front as Markdown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = max(c.force_fraction for c in cells)
    largest: dict[str, int] = defaultdict(int)
    for c in cells:
        largest[c.model] = max(largest[c.model], c.size or 0)
    chosen = [c for c in cells if c.force_fraction == s and (c.size or 0) == largest[c.model] and _error(c)]
    chosen = [c for c in chosen if c.model in costs]
    if not chosen:
        return []
    points = [(costs[c.model], float(np.mean(_error(c)))) for c in chosen]
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(6, 4.4))
    optimizers = baseline_first({c.optimizer for c in chosen})
    colours = {o: plt.cm.tab10(i % 10) for i, o in enumerate(optimizers)}
    for o in optimizers:
        mine = [(x, y) for c, (x, y) in zip(chosen, points) if c.optimizer == o]
        ax.plot([x for x, _ in mine], [y for _, y in mine], "o", color=colours[o], label=o)
    for model in sorted({c.model for c in chosen}):  # one label per model, at its best point
        x, y = min((p for c, p in zip(chosen, points) if c.model == model), key=lambda p: p[1])
        size = max(c.size or 0 for c in chosen if c.model == model)
        ax.annotate(f"{model} (N = {size})", (x, y), fontsize=7, xytext=(4, -10), textcoords="offset points")
    xs, ys = [points[i][0] for i in front], [points[i][1] for i in front]
    ax.plot(xs, ys, "k--", linewidth=1, label="Pareto front")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("inference cost [µs/atom/step] (3BPA, batch 1)")
    ax.set_ylabel(f"test {'force MAE [meV/Å]' if chosen[0].f_mae else 'energy MAE [meV/atom]'}")
    ax.set_title(f"accuracy against cost at the largest N, {100 * s:g} % force labels")
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return [f"Pareto front: {', '.join(f'{chosen[i].model} · {chosen[i].optimizer}' for i in front)}."]


def make_architectures_report(database: str, parent: str, out_dir: str | Path) -> Path:
    """Write ``index.md`` of the architectures study ``parent`` (and each cell's own report)."""
    from .build import make_report

    url = database if "://" in database else f"sqlite:///{Path(database).resolve()}"
    db = ResultsDB(url)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = collect(db, parent)
    if not cells:
        raise ValueError(f"architectures study {parent!r} has no finished final runs yet")
    lines = [
        f"# Architectures study `{parent}`",
        "",
        f"Report written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from `{url}`.",
        "",
        "## Test errors (mean ± std over seeds)",
        "",
        "| model | N | force labels | optimizer | seeds | E MAE [meV/atom] | F MAE [meV/Å] "
        "| training s/epoch | checks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        f = mean_std(c.f_mae, 1) if c.f_mae else "—"
        e = mean_std(c.e_mae, 2) if c.e_mae else "—"
        seconds = f"{np.mean(c.seconds_per_epoch):.1f}" if c.seconds_per_epoch else "—"
        seeds = f"{len(c.e_mae)}" + (f" (+{c.left_out} left out)" if c.left_out else "")
        lines.append(
            f"| {c.model} | {c.size or 'all'} | {100 * c.force_fraction:g} % | {c.optimizer} | "
            f"{seeds} | {e} | {f} | {seconds} | "
            f"{'⚠ ' + c.checks if c.checks else 'ok'} |"
        )
    if any(c.left_out for c in cells):
        lines += [
            "",
            f"⚠ {sum(c.left_out for c in cells)} final run(s) did not train (their validation curves say so; "
            "each cell's report lists them): they are left out of the errors above, the learning curves, "
            "their slopes and the Pareto front.",
        ]
    lines += ["", "## Learning curves", "", "![learning curves](learning_curves.png)", ""]
    lines += learning_curves(cells, out / "learning_curves.png") + [""]
    cost_rows = db.checks(parent, "inference_cost")
    costs = {
        model: next(r["median_us"] for r in rows if r["structure"] == "3bpa" and r["batch"] == 1)
        for model, (rows, _) in cost_rows.items()
    }
    front = pareto_figure(cells, costs, out / "accuracy_cost.png")
    if front:
        lines += [
            "## Accuracy against cost",
            "",
            "![accuracy against cost](accuracy_cost.png)",
            "",
            *front,
            "",
        ]
    if cost_rows:
        machine = next(iter(cost_rows.values()))[1]
        lines += [
            "## Inference cost (energy + forces; median, 5th–95th percentiles of samples from independent "
            "blocks)",
            "",
            f"Measured on {machine}.",
            "",
            "| model | structure | atoms | batch | µs/atom/step |",
            "|---|---|---|---|---|",
        ]
        for model, (rows, _) in sorted(cost_rows.items()):
            for r in rows:
                low, high = _spread(r)
                lines.append(
                    f"| {model} | {r['structure']} | {r['n_atoms']} | {r['batch']} | {r['median_us']:.1f} "
                    f"({low:.1f}–{high:.1f}) |"
                )
        lines.append("")
    published = db.checks(parent, "published").get("figures")
    if published:
        lines += published_section(cells, published[0])
    lines += equivariance_section(db, parent)
    lines += ["## Cells", ""]
    for study, (model, size) in sorted(sub_studies(db, parent).items()):
        folder = out / "cells" / model / (f"N{size}" if size else "all")
        try:
            make_report(url, folder, study=study)
        except ValueError:
            continue  # a cell without finished final runs
        lines.append(f"- [{model}, N = {size or 'all'}]({folder.relative_to(out)}/index.md)")
    path = out / "index.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def baseline_at(
    cells: list[ArchitectureCell], model: str, optimizer: str, size: int
) -> tuple[float, str] | None:
    """The mean test force error of ``optimizer`` on ``model`` at full force labels for ``size`` training
    frames, with how it was obtained: measured where the study trained that N, else read off the fitted
    learning curve (extrapolated outside the trained sizes); None without force errors at two sizes."""
    s = max(c.force_fraction for c in cells)
    curve = [
        c for c in cells if (c.model, c.optimizer, c.force_fraction) == (model, optimizer, s) and c.f_mae
    ]
    for c in curve:
        if c.size == size:
            return float(np.mean(c.f_mae)), f"measured, {len(c.f_mae)} seeds"
    sizes = sorted({c.size for c in curve if c.size})
    if len(sizes) < 2:
        return None
    slope, _, prefactor = fit_curve(curve, lambda c: c.f_mae)
    how = "interpolated" if sizes[0] <= size <= sizes[-1] else "extrapolated"
    return prefactor * size**slope, f"{how} along err ∝ N^{slope:.2f} from N = {sizes[0]}–{sizes[-1]}"


def published_section(cells: list[ArchitectureCell], published: dict[str, Any]) -> list[str]:
    """The study's baseline beside the literature's errors on the same data (issue 24): at the
    published N where the study trained it, else read off its learning curve and labelled so."""
    baseline = published["baseline"]
    models = sorted({c.model for c in cells if c.optimizer == baseline})
    if not models or not published["figures"]:
        return []
    lines = [
        f"## Against published figures ({baseline}, full force labels)",
        "",
        f"| source | published model | N | published F MAE [meV/Å] | published E MAE [meV/atom] | "
        f"model | {baseline} F MAE [meV/Å] | how | × published |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for figure in published["figures"]:
        for model in models:
            ours = baseline_at(cells, model, baseline, figure["train_size"])
            value, how = (f"{ours[0]:.1f}", ours[1]) if ours else ("—", "not enough sizes to fit")
            ratio = f"{ours[0] / figure['f_mae']:.1f}×" if ours else "—"
            energy = "—" if figure.get("e_mae") is None else f"{figure['e_mae']:.3g}"
            lines.append(
                f"| {figure['source']} | {figure['model']} | {figure['train_size']} | {figure['f_mae']:g} | "
                f"{energy} | {model} | {value} | {how} | {ratio} |"
            )
    notes = [
        f"- {figure['source']}: {figure['note']}" for figure in published["figures"] if figure.get("note")
    ]
    differences = [f"- {d}" for d in published.get("differences", [])]
    if notes:
        lines += ["", "Sources:", "", *notes]
    if differences:
        lines += ["", "How this study's protocol differs from the published ones:", "", *differences]
    lines += [
        "",
        "An extrapolated error assumes the learning curve keeps its fitted slope beyond the trained sizes; "
        "it is a guide to the size of the gap, not a measurement.",
        "",
    ]
    return lines


def _spread(row: dict[str, Any]) -> tuple[float, float]:
    """The quoted spread of a cost row: 5th–95th percentiles; rows measured before them had the range of
    the block medians, and before that the interquartile range."""
    for low, high in (("p05_us", "p95_us"), ("low_us", "high_us"), ("q25_us", "q75_us")):
        if low in row:
            return row[low], row[high]
    raise KeyError("an inference-cost row without a spread")


def equivariance_section(db: ResultsDB, parent: str) -> list[str]:
    results = db.checks(parent, "equivariance")
    if not results:
        return []
    runs = {r.id: r for r in db.runs()}
    lines = [
        "## Equivariance of the trained models (largest N, first seed)",
        "",
        "Energy spread over random rotations (std, meV/atom) and force error |Rᵀ F(Rx) − F(x)| (meV/Å), "
        "on test frames; symmetrized: averaged over an SO(3) quadrature at inference. Loop work: ∮ F·dx "
        "of one atom around a 0.05 Å circle (zero for conservative forces).",
        "",
        "| model | optimizer | force labels | E spread raw | F error raw | E spread symmetrized | "
        "F error symmetrized | loop work [eV] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    # by model, runs of an earlier selection (superseded) left out
    ordered = sorted(results.items(), key=lambda kv: (kv[1][0]["model"], kv[0]))
    finals = [
        (r, runs[run_id]) for run_id, (r, _) in ordered if run_id in runs and runs[run_id].stage == "final"
    ]
    for r, run in finals:
        sym = r.get("symmetrized")
        sym_e, sym_f = (f"{sym['energy_std']:.2e}", f"{sym['force_error']:.2e}") if sym else ("—", "—")
        lines.append(
            f"| {r['model']} | {run.optimizer} | {100 * run.force_fraction:g} % | "
            f"{r['raw']['energy_std']:.2e} | {r['raw']['force_error']:.2e} | "
            f"{sym_e} | {sym_f} | "
            f"{r['loop_work_eV']:.1e} |"
        )
    return lines + [""] + symmetrized_accuracy_lines(finals) + geometry_lines(finals) + nve_lines(finals)


def nve_lines(finals: list[tuple[dict[str, Any], Any]]) -> list[str]:
    """Total-energy drift of a short NVE run from the first test frame, per trained model."""
    measured = [(r, run) for r, run in finals if "nve" in r]
    if not measured:
        return []
    first = measured[0][0]["nve"]
    lines = [
        f"NVE molecular dynamics from the first test frame: {first['steps']} velocity-Verlet steps of "
        f"{first['timestep_fs']:g} fs from 300 K velocities. Drift: slope of the total energy; largest "
        "excursion: its largest distance from the start. A conservative, smooth model keeps both small; "
        "non-conservative forces or a model that lets atoms collapse does not.",
        "",
        "| model | optimizer | drift [meV/atom/ps] | largest excursion [meV/atom] |",
        "|---|---|---|---|",
    ]
    for r, run in measured:
        nve = r["nve"]
        lines.append(
            f"| {r['model']} | {run.optimizer} | {nve['drift_meV_per_atom_ps']:.2f} | "
            f"{nve['max_deviation_meV_per_atom']:.2f} |"
        )
    return lines + [""]


def geometry_lines(finals: list[tuple[dict[str, Any], Any]]) -> list[str]:
    """Minima and rigid-body vibrations of the first test frame relaxed turned two ways, per model."""
    rows = []
    for r, run in finals:
        for variant in ("raw", "symmetrized"):
            g = r.get(f"geometry_{variant}")
            if g:
                rows.append(
                    f"| {r['model']} | {run.optimizer} | {variant} | {g['minimum_rmsd_A']:.1e} | "
                    f"{g['minimum_energy_meV_atom']:.1e} | {g['rigid_mode_cm1']:.1f} | "
                    f"{g['lowest_vibration_cm1']:.1f} | {'yes' if g['converged'] else '**no**'} |"
                )
    if not rows:
        return []
    return [
        "Geometry optimisation and vibrations: the first test frame relaxed (BFGS, 1e-3 eV/Å) as given and "
        "turned by a random rotation. RMSD between the two minima after alignment and their energy gap: "
        "zero for a rotation-invariant model. Rigid modes: the largest of the six smallest harmonic "
        "|frequencies| at the minimum, the free molecule's translations and rotations (zero for an invariant "
        "model; finite differences leave a few cm⁻¹).",
        "",
        "| model | optimizer | variant | minima RMSD [Å] | energy gap [meV/atom] | rigid modes [cm⁻¹] | "
        "lowest vibration [cm⁻¹] | converged |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def symmetrized_accuracy_lines(finals: list[tuple[dict[str, Any], Any]]) -> list[str]:
    """Test errors of the models without built-in symmetry, raw and symmetrized, on the same frames."""
    scored = [(r, run) for r, run in finals if "test_symmetrized" in r]
    if not scored:
        return []
    lines = [
        "Accuracy of the symmetrized models: test errors raw and symmetrized on the same test frames "
        "(E MAE meV/atom, F MAE meV/Å).",
        "",
        "| model | optimizer | frames | E MAE raw | E MAE symmetrized | F MAE raw | F MAE symmetrized |",
        "|---|---|---|---|---|---|---|",
    ]
    for r, run in scored:
        raw, sym = r["test_raw"], r["test_symmetrized"]
        lines.append(
            f"| {r['model']} | {run.optimizer} | {raw['frames']} | {raw['e_mae']:.2f} | {sym['e_mae']:.2f} | "
            f"{raw['f_mae']:.1f} | {sym['f_mae']:.1f} |"
        )
    return lines + [""]


def is_architectures_database(db: ResultsDB) -> str | None:
    """The parent name when every study of ``db`` is a cell of one architectures study."""
    parents, every_run = db.parents()
    return parents.pop() if len(parents) == 1 and every_run else None


__all__ = ["fit_power_law", "make_architectures_report", "pareto_front"]
