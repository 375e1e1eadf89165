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
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..figures import save_figure
from ..optim.registry import BASELINE, baseline_first
from ..study.db import ResultsDB, Run
from ..train.diagnostics import CONSTANT_MARGIN
from .accounting import StudyAccount, study_account
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
from .fidelity import fidelity_section
from .halving import halving_section
from .heldout import extra_tests_section, forgetting_section, pretrained_summary
from .spectra import spectra_section
from .speedup import speedup_figure, time_to_target_section
from .trust import (
    cell_checks,
    checks_section,
    constant_predictor_line,
    measured_cost_rows,
    reproducibility_line,
    same_optimizer_line,
    selections_section,
)


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Two (mean, std) over seeds overlap within one standard deviation each: no verdict between them."""
    return a[0] - a[1] <= b[0] + b[1] and b[0] - b[1] <= a[0] + a[1]


def rank_marks(stats: dict[str, tuple[float, float]]) -> dict[str, str]:
    """'best' for the lowest mean and every cell tied with it (mean ± std overlapping), 'second' for the
    lowest of the rest and its ties, '' otherwise: a ranking printed only where the seeds support it."""
    order = sorted(stats, key=lambda k: stats[k][0])
    marks = dict.fromkeys(order, "")
    for label in ("best", "second"):
        rest = [k for k in order if not marks[k]]
        if not rest:
            break
        for k in rest:
            if overlap(stats[k], stats[rest[0]]):
                marks[k] = label
    return marks


def versus(cell: tuple[float, float], baseline: tuple[float, float]) -> str:
    """'lower', 'higher' or 'tie' (overlapping mean ± std) of a cell's error against the baseline's."""
    if overlap(cell, baseline):
        return "tie"
    return "lower" if cell[0] < baseline[0] else "higher"


def _fmt(mean: float, std: float, n: int, digits: int, mark: str) -> str:
    text = format_mean_std(mean, std, n, digits)
    return f"**{text}**" if mark == "best" else f"<u>{text}</u>" if mark == "second" else text


def mae_table(
    cells: dict[tuple[str, float], Cell],
    checks: dict[tuple[str, float], str] | None = None,
    account: StudyAccount | None = None,
    floors: dict[float, float] | None = None,
) -> tuple[str, str]:
    """Markdown and CSV of the test MAEs (mean ± std over seeds). ``checks`` marks cells whose runs did
    not train cleanly (:func:`mlipopt.report.trust.cell_checks`); ``account`` adds the seeds that diverged
    or failed (a cell with no trained seed gets a row of its own) and counts seeds against those asked.
    Best and second are marked only outside the seeds' spread (ties share a mark), and the last
    column compares the force error (the energy error without forces) with AdamW's at the same fraction.
    ``floors`` holds, per force fraction, the test energy MAE of per-element constants without a model
    (:func:`energy_floors`): where the verdict compares energies, a cell within ``CONSTANT_MARGIN`` of it
    learned no geometry, and ranking such cells would rank noise, so its verdict reads ``at floor``."""
    checks, floors = checks or {}, floors or {}
    asked = {key: len(account.cell(*key)) for key in account.cells()} if account else {}
    notes = {key: account.cell_note(*key) for key in account.cells()} if account else {}
    keys = set(cells) | set(asked)
    fractions = sorted({s for _, s in keys}, reverse=True)
    lines = [
        f"| force labels | optimizer | seeds | E MAE [meV/atom] | F MAE [meV/Å] | vs {BASELINE} | checks |",
        "|---|---|---|---|---|---|---|",
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["optimizer", "force_fraction", "n_seeds", "n_seeds_asked", "e_mae_mean", "e_mae_std", "f_mae_mean",
         "f_mae_std", "e_rmse_mean", "f_rmse_mean", "lr", "weight_decay", "energy_weight", "force_weight",
         f"vs_{BASELINE}", "checks"]
    )  # fmt: skip
    for s in fractions:
        group = {opt: c for (opt, frac), c in cells.items() if frac == s}
        e_stats = {k: Cell.stats(c.e_mae) for k, c in group.items()}
        f_stats = {k: Cell.stats(c.f_mae) for k, c in group.items() if c.f_mae}
        e_marks, f_marks = rank_marks(e_stats), rank_marks(f_stats)
        key_stats = f_stats if len(f_stats) == len(group) else e_stats  # what the verdict compares
        base = key_stats.get(BASELINE)
        # the floor judges energies: where the verdict compares them, and at s = 0, where a cell at the
        # floor learned no geometry, so its force error (of an untrained force field) ranks noise
        floor = floors.get(s) if key_stats is e_stats or s == 0 else None

        floored = {k for k, v in e_stats.items() if floor is not None and v[0] >= CONSTANT_MARGIN * floor}
        if floored:  # cells at the floor are not ranked either
            e_marks = {k: "" for k in e_stats} | rank_marks(
                {k: v for k, v in e_stats.items() if k not in floored}
            )
            f_marks = {k: "" for k in f_stats} | rank_marks(
                {k: v for k, v in f_stats.items() if k not in floored}
            )
        for opt, c in sorted(group.items(), key=lambda kv: key_stats[kv[0]][0]):
            n = len(c.seeds)
            e, f = e_stats[opt], f_stats.get(opt, (float("nan"), 0.0))
            parts = [x for x in (checks.get((opt, s), ""), notes.get((opt, s), "")) if x]
            parts = [x for part in parts for x in part.split(", ")]
            check = ", ".join(sorted(parts, key=lambda x: x.startswith("not converged")))  # budget last
            if opt in floored or (opt != BASELINE and BASELINE in floored):
                verdict = "at floor" if opt in floored else f"— ({BASELINE} at floor)"
            else:
                verdict = "—" if base is None or opt == BASELINE else versus(key_stats[opt], base)
            seeds = f"{n}" if asked.get((opt, s), n) == n else f"{n} of {asked[(opt, s)]}"
            f_text = _fmt(*f, n, 1, f_marks.get(opt, "")) if opt in f_stats else "—"
            lines.append(
                f"| {100 * s:g} % | {opt} | {seeds} | {_fmt(*e, n, 2, e_marks.get(opt, ''))} | {f_text} | "
                f"{verdict} | {'⚠ ' + check if check else 'ok'} |"
            )
            writer.writerow(
                [opt, s, n, asked.get((opt, s), n), *e, *(f if opt in f_stats else ("", "")),
                 Cell.stats(c.e_rmse)[0], Cell.stats(c.f_rmse)[0] if c.f_rmse else "", c.lr, c.weight_decay,
                 *c.loss_ratio, verdict, check]
            )  # fmt: skip
        for opt in sorted(o for (o, frac) in asked if frac == s and o not in group):
            note = notes.get((opt, s), "")
            lines.append(f"| {100 * s:g} % | {opt} | 0 of {asked[(opt, s)]} | — | — | — | ⚠ {note} |")
            writer.writerow([opt, s, 0, asked[(opt, s)], *[""] * 11, note])
    return "\n".join(lines), buffer.getvalue()


def energy_floors(runs: list[Run]) -> dict[float, float]:
    """Per force fraction, the mean over runs of the test energy MAE of per-element constants fitted on
    each run's training split (``final_metrics.json``'s ``constant_energy_mae``)."""
    values: dict[float, list[float]] = {}
    for run in runs:
        value = json.loads(run.final or "{}").get("constant_energy_mae", {}).get("test")
        if value is not None:
            values.setdefault(run.force_fraction, []).append(float(value))
    return {s: float(np.mean(v)) for s, v in values.items()}


TABLE_LEGEND = (
    "Best **bold**, second <u>underlined</u>: a mark is shared by every cell whose mean ± std overlaps "
    f"the marked one's (a tie: the seeds do not separate them). `vs {BASELINE}`: lower, higher or tie "
    f"against {BASELINE} at the same force fraction, by the same rule, on the force error (the energy "
    "error where no force is labelled). `at floor`: trained without force labels, an energy error at least "
    f"{CONSTANT_MARGIN:g}× that of per-element constants without a model (the floor line below): that "
    "cell learned no geometry, and no ranking is made against it."
)


def relative_heatmap(cells: dict[tuple[str, float], Cell], path: Path) -> str:
    """Figure 1: each optimizer's MAE over AdamW's at the same force fraction, for energies and forces
    (normalising by AdamW at full forces would paint every sparse-label column by the data it lost,
    not by the optimizer). Colours are symmetric on a log scale: ×r worse looks as strong as ÷r better."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    optimizers = baseline_first({o for o, _ in cells})
    fractions = sorted({s for _, s in cells}, reverse=True)
    reference = BASELINE if any(o == BASELINE for o, _ in cells) else optimizers[0]
    fig, axes = plt.subplots(1, 2, figsize=(3 + 1.3 * len(fractions) * 2, 0.6 * len(optimizers) + 1.8))
    for ax, (label, attr) in zip(axes, (("energy", "e_mae"), ("forces", "f_mae"))):
        data = np.full((len(optimizers), len(fractions)), np.nan)
        for j, s in enumerate(fractions):
            ref = getattr(cells[(reference, s)], attr) if (reference, s) in cells else []
            base = Cell.stats(ref)[0] if ref else float("nan")
            for i, o in enumerate(optimizers):
                values = getattr(cells[(o, s)], attr) if (o, s) in cells else []
                if values and np.isfinite(base) and base > 0:
                    data[i, j] = Cell.stats(values)[0] / base
        finite = data[np.isfinite(data) & (data > 0)]
        r = float(np.exp(np.abs(np.log(finite)).max())) if finite.size else 1.0
        r = max(r, 1.1)  # a non-degenerate colour range even when every ratio is 1
        image = ax.imshow(
            np.ma.masked_invalid(data), cmap="RdYlGn_r", norm=LogNorm(1.0 / r, r), aspect="auto"
        )
        for i in range(len(optimizers)):
            for j in range(len(fractions)):
                text = f"{data[i, j]:.2f}" if np.isfinite(data[i, j]) else "—"
                ax.text(j, i, text, ha="center", va="center", fontsize=9)
        ax.set_xticks(range(len(fractions)), [f"{100 * s:g} %" for s in fractions])
        ax.set_yticks(range(len(optimizers)), optimizers)
        ax.set_xlabel("force-labelled frames")
        ax.set_title(f"{label} MAE / {reference} at the same fraction", fontsize=10)
        bar = fig.colorbar(image, ax=ax, shrink=0.8)
        ticks = colorbar_ticks(r)
        bar.set_ticks(ticks, labels=[f"{t:.2f}" for t in ticks])
        bar.minorticks_off()
    save_figure(fig, path)
    return reference


def colorbar_ticks(r: float) -> list[float]:
    """Five distinct ticks of a log colour bar from 1/r to r, 1 in the middle."""
    return [1.0 / r, 1.0 / np.sqrt(r), 1.0, float(np.sqrt(r)), r]


def curves_figure(db: ResultsDB, study: str, path: Path, targets: dict[float, float]) -> None:
    """Figure 2: validation error vs training wall-clock (forces above, energy below, so an energy that
    drifts while forces fit is visible), with AdamW's target per force fraction (:mod:`.speedup`) and
    where each median curve first reaches it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = final_runs(db, study)
    fractions = sorted({r.force_fraction for r in runs}, reverse=True)
    optimizers = baseline_first({r.optimizer for r in runs})
    colours = {o: plt.cm.tab10(i % 10) for i, o in enumerate(optimizers)}
    fig, axes = plt.subplots(2, len(fractions), figsize=(4.2 * len(fractions), 6.6), squeeze=False)
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
        target = targets.get(s)
        for o, c in data.items():
            ax.plot(c.time, c.median, color=colours[o], label=o, drawstyle="steps-post")
            ax.fill_between(c.time, c.q25, c.q75, color=colours[o], alpha=0.2, linewidth=0, step="post")
            if target is not None:
                hit = time_to_target(c, target)
                if hit.reached:
                    ax.plot([hit.seconds], [target], "o", color=colours[o], markersize=4)
        if target is not None:
            ax.axhline(target, color="k", linestyle="--", linewidth=0.8, label=f"{BASELINE} target")
        ax.set_yscale("log")
        ax.set_xlabel("training wall-clock [s]")
        ax.set_ylabel(
            "validation " + ("force MAE [meV/Å]" if metric == "val_f_mae" else "energy MAE [meV/atom]")
        )
        _log_ticks(ax)
        ax.set_title(f"{100 * s:g} % force labels")
        ax.legend(fontsize=7)
    save_figure(fig, path)


SPEEDUP_LEGEND = (
    f"For every target along {BASELINE}'s best-so-far median curve (placed at {BASELINE}'s median time to "
    f"reach it: left early, high errors; right its best), each optimizer's speed-up: {BASELINE}'s median "
    "time to that error over the optimizer's "
    "(same cost measure as the table). A line that rises means the advantage grows as training goes on; "
    "one that ends early means that optimizer's median never reached the lower targets."
)


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
    """Base vs +L-BFGS test MAEs for the refined final runs (Liu et al. table 3); ``checks`` counts the
    refinements whose validation energy error rose past the training drift bound."""
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
            {k: [] for k in ("e0", "e1", "f0", "f1", "r0", "r1", "n", "drift")},
        )
        cell["drift"].append("energy_drift" in (summary.get("flags") or []))
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
        "F RMSE +L-BFGS | evaluations | checks |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (opt, frac), c in sorted(cells.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        errors = [mean_std(c[k], 2) for k in ("e0", "e1")]
        errors += [mean_std(c[k], 1) for k in ("f0", "f1", "r0", "r1")]
        evaluations = f"{np.mean(c['n']):.0f}"
        drifted = sum(c["drift"])
        check = f"⚠ energy drift {drifted}/{len(c['n'])}" if drifted else "ok"
        lines.append(
            f"| {100 * frac:g} % | {opt} | {len(c['n'])} | {' | '.join(errors)} | {evaluations} | {check} |"
        )
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
    account = study_account(db, study)
    markdown, table_csv = mae_table(cells, cell_checks(db, finals), account, energy_floors(finals))
    (out / "mae_table.md").write_text(markdown + "\n")
    (out / "mae_table.csv").write_text(table_csv)
    reference = relative_heatmap(cells, out / "relative_mae.png")
    ttt, drawn = time_to_target_section(db, study, finals)
    curves_figure(db, study, out / "val_curves.png", {s: d[2] for s, d in drawn.items()})
    if drawn:
        speedup_figure(drawn, out / "speedup_vs_target.png")
        ttt += ["", "![speed-up against the target](speedup_vs_target.png)", "", SPEEDUP_LEGEND]
    cost = cost_table(db, study)
    example = stored_config(finals[0])
    index = [
        f"# Study `{study}`",
        "",
        f"Report written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from `{url}`.",
        f"Model `{example['model']['preset']}` ({example['model']['dtype']}); data "
        f"`{Path(str(example['data'].get('train') or 'generated')).name}`; "
        f"{example['training']['max_epochs']} epochs per final run.",
        "",
        *account.summary(),
        "",
        "## Test errors (mean ± std over seeds)",
        "",
        markdown,
        "",
        TABLE_LEGEND,
        "",
        *constant_predictor_line(finals),
        *same_optimizer_line(finals),
        *checks_section(db, finals),
        *reproducibility_line(finals),
        *pretrained_summary(db, study),
        "CSV: [mae_table.csv](mae_table.csv)",
        "",
        f"## MAE relative to {reference} at the same force fraction",
        "",
        "![relative MAE](relative_mae.png)",
        "",
        "## Validation error against training wall-clock (median, IQR band over seeds)",
        "",
        "![validation curves](val_curves.png)",
        "",
        f"## Time to {BASELINE}'s best (median [IQR] over seeds)",
        "",
        *ttt,
        "",
        *spectra_section(db, finals, out),
        "## Cost of a training step",
        "",
        *cost,
        "",
        *selections_section(db, study, out),
        *halving_section(db, study, out),
        *refinement_section(db, study),
        *extra_tests_section(db, study, out),
        *forgetting_section(db, study, out),
        *fidelity_section(db, study, out),
    ]
    path = out / "index.md"
    path.write_text("\n".join(index))
    return path
