"""The report's physical-fidelity section: MD stability per cell, structure and diffusion against the
reference MD and (where the study names one) experiment, and RDF/MSD figures for every optimizer × s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..fidelity.experiment import NM2_PER_NS_IN_A2_PER_PS, first_peak, observation
from ..figures import save_figure
from ..optim.registry import baseline_first
from ..study.db import ResultsDB
from .aggregate import mean_std

Rows = list[tuple[str, str, float, dict[str, Any]]]
CellKey = tuple[str, float, float, str]  # protocol, temperature, force fraction, optimizer


def fidelity_cells(rows: Rows, runs: dict[str, Any]) -> dict[CellKey, list[dict[str, Any]]]:
    """The fidelity results of final runs per (protocol, temperature, force fraction, optimizer)."""
    cells: dict[CellKey, list[dict[str, Any]]] = {}
    for run_id, protocol, temperature, result in rows:
        run = runs.get(run_id)
        if run is not None and run.stage == "final":
            cells.setdefault((protocol, temperature, run.force_fraction, run.optimizer), []).append(result)
    return dict(sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][2], kv[0][3])))


def stability_table(rows: Rows, runs: dict[str, Any]) -> list[str]:
    """Per (protocol, temperature, force fraction, optimizer) over the final models: how many models ran
    every MD seed without failure, the mean share of MD runs that survived, the median over models of the
    median time to failure (≥ when a model survived), and the structure and diffusion errors."""
    cells = fidelity_cells(rows, runs)
    if not cells:
        return []
    lines = [
        "| protocol | temperature | force labels | optimizer | models stable | MD runs survived "
        "| median time to failure | structure error ∫\\|Δ\\| | D relative error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (protocol, temperature, frac, opt), results in cells.items():
        stable = sum(r["survived"] == 1.0 for r in results)
        times = [r["median_time_to_failure_ps"] for r in results]
        ttf = (
            "≥ " if all(r["survived"] > 0.5 for r in results) else ""
        ) + f"{float(np.median(times)):.3f} ps"
        errors = [r["structure_error"] for r in results if np.isfinite(r["structure_error"])]
        d_errors = [
            r["extra"]["D_relative_error"] for r in results if "D_relative_error" in r.get("extra", {})
        ]
        lines.append(
            f"| {protocol} | {temperature:g} K | {100 * frac:g} % | {opt} | {stable}/{len(results)} | "
            f"{100 * np.mean([r['survived'] for r in results]):.0f} % | {ttf} | "
            f"{mean_std(errors, 3) if errors else '—'} | {mean_std(d_errors, 2) if d_errors else '—'} |"
        )
    return lines + [""]


def _peak(result: dict[str, Any], pair: str, reference: bool = False) -> tuple[float, float] | None:
    curves = result.get("reference_pair_curves" if reference else "pair_curves") or {}
    r = (result.get("curve") or ((), ()))[0]
    if pair not in curves or not len(r):
        return None
    try:
        return first_peak(np.asarray(r), np.asarray(curves[pair]))
    except ValueError:  # no coordination peak: a model whose liquid fell apart
        return None


def observed_table(rows: Rows, runs: dict[str, Any]) -> list[str]:
    """Where the fidelity stage named an experimental reference (``observed``): per cell, the first
    peak of the observed pair's g(r) and the diffusion coefficient of the models (mean ± std over the
    models whose every MD run survived), of the reference MD and of experiment."""
    cells = fidelity_cells(rows, runs)
    named = {r.get("observed") for k, results in cells.items() if k[0] == "liquid" for r in results} - {None}
    if not named:  # experiment is known for liquids only
        return []
    lines = []
    for name in sorted(named):
        obs = observation(name)
        pair = obs.peak.pair
        lines += [
            f"### Against experiment ({obs.name})",
            "",
            f"First peak of g_{pair}(r) and the self-diffusion coefficient D (10⁻⁹ m²/s, from all atoms' "
            "MSD) of every model whose MD runs all survived, of the reference MD it was trained on, and of "
            f"experiment: g_{pair} {obs.peak.position_A:.2f}({100 * obs.peak.position_error_A:.0f}) Å, "
            f"height {obs.peak.height:.2f}({100 * obs.peak.height_error:.0f}) ({obs.peak.source}); D "
            f"({obs.diffusion.source}). The models learn the reference's level of theory (xTB), not "
            "experiment's: a gap the reference shares is the reference's, not the optimizer's.",
            "",
            "| temperature | force labels | optimizer | models | peak r [Å] | peak height | D "
            "| reference peak r / height | reference D | experiment D |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for (protocol, temperature, frac, opt), results in cells.items():
            results = [r for r in results if r.get("observed") == name]
            if protocol != "liquid" or not results:
                continue
            stable = [r for r in results if r["survived"] == 1.0]
            peaks = [p for p in (_peak(r, pair) for r in stable) if p is not None]
            ref_peak = next((p for p in (_peak(r, pair, True) for r in results) if p is not None), None)
            d = [
                r["extra"]["D_A2_per_ps"] / NM2_PER_NS_IN_A2_PER_PS
                for r in stable
                if "D_A2_per_ps" in r["extra"]
            ]
            d_ref = [
                r["extra"]["D_reference"] / NM2_PER_NS_IN_A2_PER_PS
                for r in results
                if "D_reference" in r["extra"]
            ]
            d_exp = obs.diffusion.at(temperature)
            lines.append(
                f"| {temperature:g} K | {100 * frac:g} % | {opt} | {len(stable)}/{len(results)} | "
                f"{mean_std([p[0] for p in peaks], 2)} | {mean_std([p[1] for p in peaks], 2)} | "
                f"{mean_std(d, 2)} | "
                + (f"{ref_peak[0]:.2f} / {ref_peak[1]:.2f}" if ref_peak else "—")
                + f" | {f'{d_ref[0]:.2f}' if d_ref else '—'} | "
                + (f"{d_exp / NM2_PER_NS_IN_A2_PER_PS:.2f}" if d_exp is not None else "— (outside the fit)")
                + " |"
            )
        lines.append("")
    return lines


def structure_figures(rows: Rows, runs: dict[str, Any], out: Path) -> list[str]:
    """For every liquid protocol and temperature: a grid (force fraction × optimizer) of the models'
    g(r) of the observed pair (or of all atoms) over the reference MD's, with experiment's first peak,
    and the same grid of MSD curves. Returns the markdown that shows them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = fidelity_cells(rows, runs)
    lines = []
    for temperature in sorted({k[1] for k in cells if k[0] == "liquid"}):
        mine = {k: v for k, v in cells.items() if k[0] == "liquid" and k[1] == temperature}
        fractions = sorted({k[2] for k in mine}, reverse=True)
        optimizers = baseline_first({k[3] for k in mine})
        named = {r.get("observed") for v in mine.values() for r in v} - {None}
        obs = observation(sorted(named)[0]) if named else None
        pair = obs.peak.pair if obs else None
        for kind in ("rdf", "msd"):
            fig, axes = plt.subplots(
                len(fractions), len(optimizers), figsize=(3.6 * len(optimizers), 2.8 * len(fractions)),
                squeeze=False, sharex=True, sharey=True,
            )  # fmt: skip
            for i, s in enumerate(fractions):
                for j, opt in enumerate(optimizers):
                    ax = axes[i][j]
                    _panel(ax, mine.get(("liquid", temperature, s, opt), []), kind, pair, obs, temperature)
                    ax.set_title(f"{opt}, {100 * s:g} % force labels", fontsize=9)
                    if i == len(fractions) - 1:
                        ax.set_xlabel("r [Å]" if kind == "rdf" else "lag [ps]")
                    if j == 0:
                        ax.set_ylabel((f"g_{pair}(r)" if pair else "g(r)") if kind == "rdf" else "MSD [Å²]")
            if axes[0][0].get_legend_handles_labels()[0]:
                axes[0][0].legend(fontsize=7)
            name = f"fidelity_{kind}_{temperature:g}K.png"
            save_figure(fig, out / name)
            what = "pair-distribution functions" if kind == "rdf" else "mean squared displacements"
            lines += [f"Liquid MD at {temperature:g} K, {what} per optimizer × force fraction (one line "
                      "per model: blue when all its MD runs survived, red when one failed; dashed: the "
                      "reference MD; green: experiment):", "",
                      f"![{kind} at {temperature:g} K]({name})", ""]  # fmt: skip
    return lines


def _panel(
    ax: Any, results: list[dict[str, Any]], kind: str, pair: str | None, obs: Any, temperature: float
) -> None:
    """One cell: every model (blue: all its MD runs survived, red: some failed), the reference dashed,
    experiment where known."""
    reference_drawn = False
    for result in results:
        colour = "tab:blue" if result["survived"] == 1.0 else "tab:red"
        if kind == "rdf":
            r = result["curve"][0]
            model = (result.get("pair_curves") or {}).get(pair) if pair else result["curve"][1]
            ref = (result.get("reference_pair_curves") or {}).get(pair) if pair else None
        else:
            r, model = result.get("msd") or ((), ())
            ref_lag, ref = result.get("reference_msd") or ((), ())
        if model is not None and len(model):
            ax.plot(r, model, color=colour, lw=0.9, alpha=0.8)
        if not reference_drawn and ref is not None and len(ref):
            ax.plot(r if kind == "rdf" else ref_lag, ref, "k--", lw=1.2, label="reference MD")
            reference_drawn = True
    if obs is None:
        return
    if kind == "rdf":
        ax.errorbar([obs.peak.position_A], [obs.peak.height], yerr=[obs.peak.height_error], fmt="o",
                    color="tab:green", ms=4, label="experiment (1st peak)")  # fmt: skip
    else:
        d = obs.diffusion.at(temperature)
        lags = [x for result in results for x in (result.get("msd") or ((), ()))[0]]
        if d is not None and lags:
            t = np.linspace(0, max(lags), 20)
            ax.plot(t, 6 * d * t, color="tab:green", lw=1.0, label="experiment 6Dt")


def fidelity_section(db: ResultsDB, study: str, out: Path) -> list[str]:
    """Stability and structure of evaluated runs (``mlipopt fidelity`` or a study's fidelity stage)."""
    runs = {r.id: r for r in db.runs(study)}
    rows = db.fidelity_results(list(runs))
    if not rows:
        return []
    lines = (
        ["## Physical fidelity", ""]
        + stability_table(rows, runs)
        + observed_table(rows, runs)
        + structure_figures(rows, runs, out)
        + [
            "| run | protocol | temperature | survived | median time to failure | structure error ∫\\|Δ\\| |",
            "|---|---|---|---|---|---|",
        ]
    )
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
