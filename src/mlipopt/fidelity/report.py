"""The fidelity report: the comparison table, structure overlays, MSD and Arrhenius figures."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..figures import save_figure
from .observables import arrhenius_fit
from .protocols import FidelityResult, FidelitySettings


def failure_time_text(result: FidelityResult) -> str:
    """Median time to failure; "≥" when surviving runs (counted at full duration) enter the median."""
    prefix = "≥ " if result.survived > 0 else ""
    return f"{prefix}{result.median_time_to_failure_ps:.3f} ps"


def table(results: list[FidelityResult], settings: FidelitySettings, protocol: str) -> str:
    """Markdown stability/structure table."""
    what = "∫\\|Δp(r)\\|dr (pair distances)" if protocol == "molecule" else "∫\\|Δg(r)\\|dr"
    extra_keys = sorted({k for r in results for k in r.extra})
    lines = [
        f"| run | survived ({settings.seeds} × {settings.steps * settings.timestep_fs / 1000:g} ps) | "
        f"median time to failure | {what} | worst element pair |" + "".join(f" {k} |" for k in extra_keys),
        "|---|---|---|---|---|" + "---|" * len(extra_keys),
    ]
    for r in results:
        worst = max(r.pair_errors, key=r.pair_errors.get) if r.pair_errors else None
        worst_text = f"{worst} ({r.pair_errors[worst]:.3f})" if worst else "—"
        cells = [
            r.label,
            f"{100 * r.survived:.0f} %",
            failure_time_text(r),
            f"{r.structure_error:.3f}",
            worst_text,
        ]
        cells += [f"{r.extra[k]:.3g}" if k in r.extra else "—" for k in extra_keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def overlay_figure(
    results: list[FidelityResult], reference: FidelityResult, protocol: str, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, result in zip(axes.flat, results):
        ax.plot(*reference.curve, color="k", linewidth=1.2, label="reference")
        ax.plot(*result.curve, color="tab:red", linewidth=1.0, label="model")
        ax.set_title(f"{result.label}\n∫|Δ| = {result.structure_error:.3f}", fontsize=9)
        ax.set_xlabel("r [Å]")
        ax.set_ylabel("p(r) [1/Å]" if protocol == "molecule" else "g(r)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    save_figure(fig, path)


def write_report(
    results: list[FidelityResult],
    references: list[FidelityResult],
    settings: FidelitySettings,
    protocol: str,
    out: Path,
    temperatures: list[float] | None = None,
) -> Path:
    """index.md with the table(s), structure overlays, MSD and Arrhenius plots; fidelity.json."""
    out.mkdir(parents=True, exist_ok=True)
    temperatures = temperatures or [settings.temperature_K]
    arrhenius = arrhenius_summary(results) if protocol == "liquid" else []
    (out / "fidelity.json").write_text(
        json.dumps({"settings": asdict(settings), "protocol": protocol, "temperatures": temperatures,
                    "results": [asdict(r) for r in results], "references": [asdict(r) for r in references],
                    "arrhenius": [{**a, "D": {str(k): v for k, v in a["D"].items()}} for a in arrhenius]},
                   indent=1)
    )  # fmt: skip
    text = [
        f"# Physical fidelity ({protocol})",
        "",
        f"{settings.ensemble} MD, {settings.seeds} seeds × {settings.steps} steps of "
        f"{settings.timestep_fs:g} fs per model and temperature; reference trajectories "
        f"{sum(r.seconds for r in references):.0f} s, models {sum(r.seconds for r in results):.0f} s.",
        "",
    ]
    for temperature, reference in zip(temperatures, references):
        at_t = [r for r in results if r.temperature_K == temperature]
        figure = f"structure_overlay_{temperature:g}K.png"
        overlay_figure(at_t, reference, protocol, out / figure)
        text += [
            f"## {temperature:g} K",
            "",
            table([reference, *at_t], settings, protocol),
            "",
            f"![structure]({figure})",
            "",
        ]
    text += transport_figures(results, arrhenius, out)
    if arrhenius:
        text += ["| run | E_a [eV] | relative error |", "|---|---|---|"]
        text += [
            f"| {a['label']} | {a['Ea']:.3f} ± {a['Ea_err']:.3f} | {a.get('Ea_relative_error', 0.0):.2f} |"
            for a in arrhenius
        ]
    path = out / "index.md"
    path.write_text("\n".join(text) + "\n")
    return path


def arrhenius_summary(results: list[FidelityResult]) -> list[dict[str, Any]]:
    """E_a of each run and of the reference from D(T) over the evaluated temperatures (liquids)."""
    by_label: dict[str, dict[float, float]] = {}
    reference: dict[float, float] = {}
    for r in results:
        if "D_A2_per_ps" not in r.extra or r.extra["D_A2_per_ps"] <= 0:
            continue
        by_label.setdefault(r.label, {})[r.temperature_K] = r.extra["D_A2_per_ps"]
        reference[r.temperature_K] = r.extra["D_reference"]
    if len(reference) < 2:
        return []
    temps = sorted(reference)
    ref_fit = arrhenius_fit(temps, [reference[t] for t in temps])
    rows = [{"label": "reference", "Ea": ref_fit.Ea, "Ea_err": ref_fit.Ea_err, "D": reference}]
    for label, d in by_label.items():
        if len(d) == len(temps):
            fit = arrhenius_fit(temps, [d[t] for t in temps])
            rows.append({"label": label, "Ea": fit.Ea, "Ea_err": fit.Ea_err, "D": d,
                         "Ea_relative_error": abs(fit.Ea - ref_fit.Ea) / abs(ref_fit.Ea)})  # fmt: skip
    return rows


def transport_figures(results: list[FidelityResult], arrhenius: list[dict[str, Any]], out: Path) -> list[str]:
    """MSD curves and the Arrhenius plot (liquids); returns Markdown image lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = []
    with_msd = [r for r in results if r.msd[0]]
    if with_msd:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for r in with_msd:
            ax.loglog(r.msd[0][1:], r.msd[1][1:], label=f"{r.label} @ {r.temperature_K:g} K", linewidth=1)
        _save_figure(fig, ax, "lag [ps]", "MSD [Å²]", out / "msd.png")
        lines += ["![mean squared displacement](msd.png)", ""]
    with_bands = [r for r in results if r.phonons]
    if with_bands:
        fig, axes = plt.subplots(1, len(with_bands), figsize=(4 * len(with_bands), 3.4), squeeze=False)
        for ax, r in zip(axes[0], with_bands):
            x = r.phonons["distance"]
            ax.plot(x, r.phonons["reference"], color="k", linewidth=1.2)
            ax.plot(x, r.phonons["model"], color="tab:red", linewidth=1.0, linestyle="--")
            ax.set_xticks([t for t, _ in r.phonons["ticks"]], [name for _, name in r.phonons["ticks"]])
            ax.set_ylabel("frequency [THz]")
            ax.set_title(f"{r.label} (dashed) vs reference", fontsize=8)
        save_figure(fig, out / "phonon_bands.png")
        lines += ["![phonon bands](phonon_bands.png)", ""]
    if arrhenius:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for row in arrhenius:
            temps = sorted(row["D"])
            style = "k-o" if row["label"] == "reference" else "-o"
            ax.semilogy([1000 / t for t in temps], [row["D"][t] for t in temps], style, markersize=3,
                        label=f"{row['label']}: E_a {row['Ea']:.3f} ± {row['Ea_err']:.3f} eV")  # fmt: skip
        _save_figure(fig, ax, "1000 / T [1/K]", "D [Å²/ps]", out / "arrhenius.png")
        lines += ["![Arrhenius plot](arrhenius.png)", ""]
    return lines


def _save_figure(fig: Any, ax: Any, xlabel: str, ylabel: str, path: Path) -> None:
    """Label one-axes figure, add its legend, write it and free it."""

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=6)
    save_figure(fig, path)
