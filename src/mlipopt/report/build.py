"""``mlipopt report``: tables and figures of a study, tied together by an ``index.md``.

(a) test MAE table, mean ± std over seeds per optimizer × force fraction (Harari et al. tables 1/5), best in
bold and second underlined, as Markdown and CSV; (b) relative-MAE heatmap MAE / MAE(AdamW @ 100 %)
(figure 1); (c) validation error against training wall-clock, median and IQR over seeds, AdamW's best
median as the target and each optimizer's time-to-target (figure 2); (d) per-step cost, measured and
inferred; (e) what the table's trust rests on (:mod:`.trust`): run checks and selected learning rates.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..figures import save_figure
from ..study.db import ResultsDB
from .aggregate import (
    Cell,
    curves,
    final_cells,
    final_runs,
    format_mean_std,
    mean_std,
    step_cost,
    stored_config,
    time_to_target,
)
from .heldout import extra_tests_section, forgetting_section, pretrained_summary
from .spectra import spectra_section
from .trust import (
    cell_checks,
    checks_section,
    constant_predictor_line,
    measured_cost_rows,
    measured_step_seconds,
    reproducibility_line,
    selections_section,
)

BASELINE = "adamw"


def _mark(values: dict[str, float]) -> dict[str, str]:
    """'best' / 'second' by lowest value."""
    order = sorted(values, key=values.get)
    return {k: ("best" if i == 0 else "second" if i == 1 else "") for i, k in enumerate(order)}


def _fmt(mean: float, std: float, n: int, digits: int, mark: str) -> str:
    text = format_mean_std(mean, std, n, digits)
    return f"**{text}**" if mark == "best" else f"<u>{text}</u>" if mark == "second" else text


def mae_table(
    cells: dict[tuple[str, float], Cell], checks: dict[tuple[str, float], str] | None = None
) -> tuple[str, str]:
    """Markdown and CSV of the test MAEs (mean ± std over seeds); ``checks`` marks cells whose runs did
    not train cleanly (:func:`mlipopt.report.trust.cell_checks`)."""
    checks = checks or {}
    fractions = sorted({s for _, s in cells}, reverse=True)
    lines = [
        "| force labels | optimizer | seeds | E MAE [meV/atom] | F MAE [meV/Å] | checks |",
        "|---|---|---|---|---|---|",
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["optimizer", "force_fraction", "n_seeds", "e_mae_mean", "e_mae_std", "f_mae_mean", "f_mae_std",
         "e_rmse_mean", "f_rmse_mean", "lr", "weight_decay", "energy_weight", "force_weight", "checks"]
    )  # fmt: skip
    for s in fractions:
        group = {opt: c for (opt, frac), c in cells.items() if frac == s}
        e_marks = _mark({k: Cell.stats(c.e_mae)[0] for k, c in group.items()})
        f_marks = _mark({k: Cell.stats(c.f_mae)[0] for k, c in group.items() if c.f_mae})
        for opt, c in sorted(group.items(), key=lambda kv: Cell.stats(kv[1].f_mae or kv[1].e_mae)[0]):
            e, f = Cell.stats(c.e_mae), Cell.stats(c.f_mae) if c.f_mae else (float("nan"), 0.0)
            check = checks.get((opt, s), "")
            lines.append(
                f"| {100 * s:g} % | {opt} | {len(c.seeds)} | {_fmt(*e, len(c.seeds), 2, e_marks[opt])} | "
                f"{_fmt(*f, len(c.seeds), 1, f_marks.get(opt, ''))} | {'⚠ ' + check if check else 'ok'} |"
            )
            writer.writerow(
                [opt, s, len(c.seeds), *e, *f, Cell.stats(c.e_rmse)[0],
                 Cell.stats(c.f_rmse)[0] if c.f_rmse else "", c.lr, c.weight_decay, *c.loss_ratio, check]
            )  # fmt: skip
    return "\n".join(lines), buffer.getvalue()


def relative_heatmap(cells: dict[tuple[str, float], Cell], path: Path) -> str:
    """Figure 1: MAE / MAE(AdamW @ highest force fraction) for energies and forces."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    optimizers = sorted({o for o, _ in cells}, key=lambda o: (o != BASELINE, o))
    fractions = sorted({s for _, s in cells}, reverse=True)
    reference_opt = BASELINE if (BASELINE, fractions[0]) in cells else optimizers[0]
    ref = cells[(reference_opt, fractions[0])]
    fig, axes = plt.subplots(1, 2, figsize=(3 + 1.3 * len(fractions) * 2, 0.6 * len(optimizers) + 1.8))
    for ax, (label, attr) in zip(axes, (("energy", "e_mae"), ("forces", "f_mae"))):
        base = Cell.stats(getattr(ref, attr))[0]
        data = np.full((len(optimizers), len(fractions)), np.nan)
        for i, o in enumerate(optimizers):
            for j, s in enumerate(fractions):
                values = getattr(cells[(o, s)], attr) if (o, s) in cells else []
                if values:
                    data[i, j] = Cell.stats(values)[0] / base
        finite = data[np.isfinite(data)]
        # symmetric in the ratio (×r worse and ÷r better look equally strong), so that neither side of 1
        # saturates and both carry ticks
        r = max(
            float(finite.max()) if finite.size else 2.0, 1.0 / float(finite.min()) if finite.size else 2.0
        )
        r = max(r, 1.05)
        image = ax.imshow(data, cmap="RdYlGn_r", norm=TwoSlopeNorm(1.0, 1.0 / r, r), aspect="auto")
        for i in range(len(optimizers)):
            for j in range(len(fractions)):
                if np.isfinite(data[i, j]):
                    ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=9)
        ax.set_xticks(range(len(fractions)), [f"{100 * s:g} %" for s in fractions])
        ax.set_yticks(range(len(optimizers)), optimizers)
        ax.set_xlabel("force-labelled frames")
        ax.set_title(f"{label} MAE / {reference_opt} @ {100 * fractions[0]:g} %")
        bar = fig.colorbar(image, ax=ax, shrink=0.8)
        bar.set_ticks(sorted({round(v, 2) for v in (1.0 / r, (1.0 + 1.0 / r) / 2, 1.0, (1.0 + r) / 2, r)}))
    save_figure(fig, path)
    return reference_opt


def curves_figure(db: ResultsDB, study: str, path: Path) -> list[str]:
    """Figure 2: validation error vs training wall-clock (forces above, energy below, so an energy that
    drifts while forces fit is visible); returns the time-to-target table (Markdown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = final_runs(db, study)
    fractions = sorted({r.force_fraction for r in runs}, reverse=True)
    optimizers = sorted({r.optimizer for r in runs}, key=lambda o: (o != BASELINE, o))
    colours = {o: plt.cm.tab10(i % 10) for i, o in enumerate(optimizers)}
    fig, axes = plt.subplots(2, len(fractions), figsize=(4.2 * len(fractions), 6.6), squeeze=False)
    measured = {True: measured_step_seconds(db, study, True), False: measured_step_seconds(db, study, False)}
    rows = [
        "| force labels | optimizer | target | time to target (run wall-clock) | epochs "
        "| gradient evaluations | epochs × steps × measured step cost |",
        "|---|---|---|---|---|---|---|",
    ]
    for ax, energy_ax, s in zip(axes[0], axes[1], fractions):
        for o in optimizers:
            energy = curves(db, [r for r in runs if r.optimizer == o and r.force_fraction == s], "val_e_mae")
            if energy is not None:
                energy_ax.plot(energy.time, energy.median, color=colours[o], label=o, drawstyle="steps-post")
                energy_ax.fill_between(
                    energy.time, energy.q25, energy.q75, color=colours[o], alpha=0.2, linewidth=0, step="post"
                )
        energy_ax.set_yscale("log")
        energy_ax.set_xlabel("training wall-clock [s]")
        energy_ax.set_ylabel("validation energy MAE [meV/atom]")
        _log_ticks(energy_ax)
        data = {
            o: curves(db, [r for r in runs if r.optimizer == o and r.force_fraction == s]) for o in optimizers
        }
        data = {o: c for o, c in data.items() if c is not None}
        if not data:
            continue
        metric = next(iter(data.values())).metric
        unit = "meV/Å" if metric == "val_f_mae" else "meV/atom"
        base = data.get(BASELINE)
        target = float(np.min(base.median)) if base is not None else None
        step_seconds = measured[s > 0]
        for o, c in data.items():
            ax.plot(c.time, c.median, color=colours[o], label=o, drawstyle="steps-post")
            ax.fill_between(c.time, c.q25, c.q75, color=colours[o], alpha=0.2, linewidth=0, step="post")
            if target is not None:
                hit = time_to_target(c, target)
                when = f"{hit.seconds:.1f} s" if hit.reached else "not reached"
                estimate = "—"
                if hit.reached and o in step_seconds:
                    estimate = f"{hit.gradient_evaluations * step_seconds[o]:.1f} s"
                rows.append(
                    f"| {100 * s:g} % | {o} | {target:.2f} {unit} | {when} | {hit.epochs or '—'} | "
                    f"{hit.gradient_evaluations or '—'} | {estimate} |"
                )
                if hit.reached:
                    ax.plot([hit.seconds], [target], "o", color=colours[o], markersize=4)
        if target is not None:
            ax.axhline(target, color="k", linestyle="--", linewidth=0.8, label=f"{BASELINE} best median")
        ax.set_yscale("log")
        ax.set_xlabel("training wall-clock [s]")
        ax.set_ylabel(
            "validation " + ("force MAE [meV/Å]" if metric == "val_f_mae" else "energy MAE [meV/atom]")
        )
        _log_ticks(ax)
        ax.set_title(f"{100 * s:g} % force labels")
        ax.legend(fontsize=7)
    save_figure(fig, path)
    if any(measured.values()):
        rows += [
            "",
            "The last column multiplies the gradient evaluations by the controlled step-cost measurement "
            "below (with forces for s > 0, where it is an upper bound: batches without force labels skip "
            "the force graph); the wall-clock column is what the runs took on a machine that may have been "
            "shared.",
        ]
    return rows


def _log_ticks(ax) -> None:
    """Readable ticks on a log axis that spans less than a decade (matplotlib shows none by default)."""
    from matplotlib.ticker import LogLocator, ScalarFormatter

    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    ax.yaxis.set_major_formatter(formatter)


def cost_table(db: ResultsDB, study: str) -> list[str]:
    """The controlled step-cost measurement, then the cost inferred from the runs' wall-clock."""
    runs = final_runs(db, study)
    if not runs:
        return []
    s_max = max(r.force_fraction for r in runs)
    cost = step_cost([r for r in runs if r.force_fraction == s_max])
    base = cost.get(BASELINE)
    rows = measured_cost_rows(db, study, BASELINE) + [
        "Inferred from the final runs' training wall-clock divided by their steps (median over seeds; "
        "includes whatever else the machine was doing while each run trained):",
        "",
        f"| optimizer | ms per training step (s = {100 * s_max:g} %) | × {BASELINE} |",
        "|---|---|---|",
    ]
    for o, ms in sorted(cost.items(), key=lambda kv: kv[1]):
        rows.append(f"| {o} | {ms:.1f} | {ms / base:.2f} |" if base else f"| {o} | {ms:.1f} | — |")
    return rows


def refinement_section(db: ResultsDB, study: str) -> list[str]:
    """Base vs +L-BFGS test MAEs for the refined final runs (Liu et al. table 3)."""
    import json

    cells: dict[tuple[str, float], dict[str, list[float]]] = {}
    for run in final_runs(db, study):
        row = db.refinement(run.id)
        if row is None or row.status != "done" or row.summary is None:
            continue
        summary = json.loads(row.summary)
        before, after = summary["test_before"] or {}, summary["test_after"] or {}
        cell = cells.setdefault(
            (run.optimizer, run.force_fraction),
            {k: [] for k in ("e0", "e1", "f0", "f1", "r0", "r1", "n")},
        )
        cell["e0"].append(before.get("e_mae"))
        cell["e1"].append(after.get("e_mae"))
        if before.get("f_mae") is not None:
            cell["f0"].append(before["f_mae"])
            cell["f1"].append(after["f_mae"])
            cell["r0"].append(before["f_rmse"])
            cell["r1"].append(after["f_rmse"])
        cell["n"].append(summary["function_evals"])
    if not cells:
        return []

    lines = [
        "## L-BFGS refinement (base → +L-BFGS, test MAE; force RMSE as in Liu et al. table 3)",
        "",
        "| force labels | optimizer | runs | E base | E +L-BFGS | F base | F +L-BFGS | F RMSE base | "
        "F RMSE +L-BFGS | evaluations |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (opt, frac), c in sorted(cells.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        errors = [mean_std(c[k], 2) for k in ("e0", "e1")]
        errors += [mean_std(c[k], 1) for k in ("f0", "f1", "r0", "r1")]
        evaluations = f"{np.mean(c['n']):.0f}"
        lines.append(f"| {100 * frac:g} % | {opt} | {len(c['n'])} | {' | '.join(errors)} | {evaluations} |")
    return lines + [""]


def fidelity_section(db: ResultsDB, study: str, out: Path) -> list[str]:
    """Stability and structure of evaluated runs (``mlipopt fidelity``), if any were stored."""
    rows = db.fidelity_results([r.id for r in db.runs(study)])
    if not rows:
        return []
    lines = [
        "## Physical fidelity",
        "",
        "| run | protocol | temperature | survived | median time to failure | structure error ∫\\|Δ\\| |",
        "|---|---|---|---|---|---|",
    ]
    for _, protocol, temperature, r in rows:
        ttf = r.get("median_time_to_failure_ps")
        ttf_text = "—" if ttf is None else ("≥ " if r["survived"] > 0 else "") + f"{ttf:.3f} ps"
        survived = f"{100 * r['survived']:.0f} %"
        lines.append(
            f"| {r['label']} | {protocol} | {temperature:g} K | {survived} | {ttf_text} | "
            f"{r['structure_error']:.3f} |"
        )
    if (out / "fidelity" / "index.md").is_file():
        lines += ["", "Details, overlays and trajectories: [fidelity/index.md](fidelity/index.md)"]
    return lines + [""]


def make_report(database: str, out_dir: str | Path | None = None, study: str | None = None) -> Path:
    """Write the report of ``study`` (default: the only study in the database) and return index.md."""
    url = database if "://" in database else f"sqlite:///{Path(database).resolve()}"
    if "://" not in database and not Path(database).is_file():
        raise FileNotFoundError(f"{database}: no results database")
    db = ResultsDB(url)
    studies = db.studies()
    if study is None:
        if len(studies) != 1:
            raise ValueError(f"the database holds studies {studies}; name one with --study")
        study = studies[0]
    cells = final_cells(db, study)
    if not cells:
        raise ValueError(f"study {study!r} has no finished final runs yet")
    out = Path(out_dir) if out_dir else (Path(database).parent if "://" not in database else Path("report"))
    out.mkdir(parents=True, exist_ok=True)
    finals = final_runs(db, study)
    markdown, table_csv = mae_table(cells, cell_checks(db, finals))
    (out / "mae_table.md").write_text(markdown + "\n")
    (out / "mae_table.csv").write_text(table_csv)
    reference = relative_heatmap(cells, out / "relative_mae.png")
    ttt = curves_figure(db, study, out / "val_curves.png")
    cost = cost_table(db, study)
    example = stored_config(final_runs(db, study)[0])
    n_runs = {
        stage: len([r for r in db.runs(study) if r.stage == stage]) for stage in ("sweep", "ratio", "final")
    }
    failed = [r.id for r in db.runs(study, status="failed")]
    index = [
        f"# Study `{study}`",
        "",
        f"Report written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from `{url}`.",
        f"Model `{example['model']['preset']}` ({example['model']['dtype']}); data "
        f"`{Path(str(example['data'].get('train') or 'generated')).name}`; "
        f"{example['training']['max_epochs']} epochs per final run; runs: {n_runs['sweep']} sweep, "
        f"{n_runs['ratio']} loss-ratio, {n_runs['final']} final"
        + (f"; **{len(failed)} failed**" if failed else "")
        + ".",
        "",
        "## Test errors (mean ± std over seeds; best **bold**, second <u>underlined</u>)",
        "",
        markdown,
        "",
        *constant_predictor_line(finals),
        *checks_section(db, finals),
        *reproducibility_line(finals),
        *pretrained_summary(db, study),
        "CSV: [mae_table.csv](mae_table.csv)",
        "",
        f"## MAE relative to {reference} at full forces",
        "",
        "![relative MAE](relative_mae.png)",
        "",
        "## Validation error against training wall-clock (median, IQR band over seeds)",
        "",
        "![validation curves](val_curves.png)",
        "",
        *ttt,
        "",
        *spectra_section(db, finals, out),
        "## Cost of a training step",
        "",
        *cost,
        "",
        *selections_section(db, study, out),
        *refinement_section(db, study),
        *extra_tests_section(db, study, out),
        *forgetting_section(db, study, out),
        *fidelity_section(db, study, out),
    ]
    path = out / "index.md"
    path.write_text("\n".join(index))
    return path
