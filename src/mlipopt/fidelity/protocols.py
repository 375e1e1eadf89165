"""Fidelity protocols: the same MD and observables for several trained runs and for the reference.

``molecule``: NVT at a (hot) temperature from a frame of the run's data; stability by bond-length
deviation (> 0.5 Å, Fu et al. 2022); structure by the all-pair distance distribution against the
reference calculator's trajectory (∫|Δp(r)| dr). ``liquid``: NVT; stability by windowed-RDF drift;
RDF error and diffusion coefficient against the reference. ``crystal``: NVT stability and RDF error,
plus elastic constants and phonon frequencies against the reference calculator.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from .md import BlowUp, BondLength, MDResult, RDFDrift, run_md
from .observables import (
    diffusion_coefficient,
    distance_distribution,
    elastic_constants,
    energy_drift,
    integrated_absolute_difference,
    mean_squared_displacement,
    rdf,
)

PROTOCOLS = ("molecule", "liquid", "crystal")


@dataclass
class FidelitySettings:
    temperature_K: float = 600.0
    steps: int = 2000
    timestep_fs: float = 0.5
    seeds: int = 2
    interval: int = 10
    ensemble: str = "langevin"
    rmax: float = 6.0
    rdf_threshold: float = 1.0  # minimum windowed ∫|Δg| dr counted as failure (liquids, crystals)


@dataclass
class FidelityResult:
    label: str
    survived: float  # fraction of seeds without failure
    median_time_to_failure_ps: float  # survivors count as the full duration (a lower bound then)
    duration_ps: float
    structure_error: float  # ∫|Δp| (molecule) or ∫|Δg| (liquid, crystal) against the reference
    failures: list[str] = field(default_factory=list)
    pair_errors: dict[str, float] = field(default_factory=dict)  # ∫|Δ| per element pair
    extra: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    curve: tuple[list[float], list[float]] = ((), ())  # r, p(r) or g(r) for plots
    msd: tuple[list[float], list[float]] = ((), ())  # lag [ps], MSD [Å²] (liquid)
    phonons: dict[str, Any] = field(default_factory=dict)  # bands of model and reference (crystal)
    temperature_K: float = 0.0


def reference_calculator(kind: str, atoms: Atoms) -> Calculator:
    """``xtb`` (GFN2 for molecules, GFN1 for periodic cells) or ``emt``."""
    if kind == "emt":
        from ase.calculators.emt import EMT

        return EMT()
    if kind == "xtb":
        from ..data.xtb import xtb_calculator

        return xtb_calculator("water" if atoms.pbc.any() else "3bpa")
    raise ValueError(f"unknown reference calculator {kind!r}; use xtb, emt or a trajectory file")


def _structure(frames: list[Atoms], protocol: str, rmax: float) -> tuple[np.ndarray, np.ndarray]:
    if protocol == "molecule":
        return distance_distribution(frames, rmax)
    return rdf(frames, min(rmax, 0.49 * min(frames[0].cell.lengths())))


def _pair_errors(frames: list[Atoms], reference: list[Atoms], protocol: str, rmax: float) -> dict[str, float]:
    """∫|Δp| (molecules) or ∫|Δg| (periodic) for every element pair present."""
    from ase.data import atomic_numbers

    elements = sorted(set(reference[0].get_chemical_symbols()), key=atomic_numbers.__getitem__)
    out = {}
    for i, a in enumerate(elements):
        for b in elements[i:]:
            if protocol == "molecule":
                r, p = distance_distribution(frames, rmax, elements=(a, b))
                _, p_ref = distance_distribution(reference, rmax, elements=(a, b))
            else:
                cut = min(rmax, 0.49 * min(reference[0].cell.lengths()))
                r, p = rdf(frames, cut, elements=(a, b))
                _, p_ref = rdf(reference, cut, elements=(a, b))
            out[f"{a}-{b}"] = integrated_absolute_difference(r, p, p_ref)
    return out


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def _rdf_threshold(reference_frames: list[Atoms], rmax: float, window: int, floor: float) -> float:
    """Failure threshold for the windowed RDF error: twice the largest error of the reference's own
    windows against its full g(r) (the sampling noise of a window), and at least ``floor``."""
    r, g_ref = rdf(reference_frames, rmax)
    noise = [
        integrated_absolute_difference(r, rdf(reference_frames[i : i + window], rmax)[1], g_ref)
        for i in range(0, len(reference_frames) - window + 1, window)
    ]
    return max(floor, 2 * max(noise, default=0.0))


def _monitors(protocol: str, start: Atoms, reference_frames: list[Atoms], settings: FidelitySettings) -> list:
    if protocol == "molecule":
        return [BlowUp(), BondLength(start)]
    rmax = min(settings.rmax, 0.49 * min(start.cell.lengths()))
    window = 10
    threshold = _rdf_threshold(reference_frames, rmax, window, settings.rdf_threshold)
    return [BlowUp(), RDFDrift(reference_frames, rmax=rmax, window=window, threshold=threshold)]


def _median_time_to_failure(results: list[MDResult]) -> float:
    """Median over runs of the failure time, a surviving run counting as its full duration."""
    return float(
        np.median([r.failed_at_ps if r.failed_at_ps is not None else r.duration_ps for r in results])
    )


def evaluate(
    label: str,
    calculator: Calculator,
    start: Atoms,
    protocol: str,
    reference_frames: list[Atoms],
    settings: FidelitySettings,
    reference_calc: Calculator | None = None,
    trajectory_dir: Path | None = None,
) -> FidelityResult:
    """Run the protocol with ``calculator`` and compare with ``reference_frames`` (and ``reference_calc``).

    With ``trajectory_dir`` every seed's trajectory is saved there as extxyz (unwrapped positions,
    energies and forces).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    begin = time.perf_counter()
    runs = [
        run_md(
            start,
            calculator,
            settings.temperature_K,
            settings.steps,
            settings.timestep_fs,
            settings.ensemble,
            settings.interval,
            _monitors(protocol, start, reference_frames, settings),
            seed=seed,
        )
        for seed in range(settings.seeds)
    ]
    if trajectory_dir is not None:
        import ase.io

        trajectory_dir.mkdir(parents=True, exist_ok=True)
        for seed, run in enumerate(runs):
            ase.io.write(trajectory_dir / f"{_slug(label)}-seed{seed}.xyz", run.frames, format="extxyz")
    frames = [f for r in runs for f in (r.frames if r.stable else r.frames[:-1])]
    r, ref_curve = _structure(reference_frames, protocol, settings.rmax)
    pair_errors: dict[str, float] = {}
    if frames:
        _, curve = _structure(frames, protocol, settings.rmax)
        error = integrated_absolute_difference(r, curve, ref_curve)
        pair_errors = _pair_errors(frames, reference_frames, protocol, settings.rmax)
    else:
        curve, error = np.zeros_like(ref_curve), float("nan")
    extra: dict[str, float] = {}
    msd: tuple[list[float], list[float]] = ((), ())
    if protocol == "liquid" and all(r.stable for r in runs):
        diffusion, msd = _diffusion(runs, reference_frames, settings)
        extra.update(diffusion)
    phonons: dict[str, Any] = {}
    if protocol == "crystal" and reference_calc is not None:
        elastic, phonons = _crystal(calculator, reference_calc, start)
        extra.update(elastic)
    if settings.ensemble == "nve":
        drifts = [
            energy_drift(np.array(x.times_ps), np.array(x.total_energy), len(start)) for x in runs if x.stable
        ]
        if drifts:
            extra["nve_drift_meV_atom_ps"] = float(np.mean(drifts))
    return FidelityResult(
        label=label,
        survived=float(np.mean([r.stable for r in runs])),
        median_time_to_failure_ps=_median_time_to_failure(runs),
        duration_ps=runs[0].duration_ps,
        structure_error=error,
        failures=[r.reason for r in runs if r.reason],
        pair_errors=pair_errors,
        extra=extra,
        seconds=time.perf_counter() - begin,
        curve=(list(map(float, r)), list(map(float, curve))),
        msd=msd,
        phonons=phonons,
        temperature_K=settings.temperature_K,
    )


def _msd(frames: list[Atoms], dt_ps: float) -> tuple[np.ndarray, np.ndarray]:
    msd = mean_squared_displacement(np.array([f.positions for f in frames]))
    return dt_ps * np.arange(len(msd)), msd


def _diffusion(
    runs: list[MDResult], reference_frames: list[Atoms], settings: FidelitySettings
) -> tuple[dict[str, float], tuple[list[float], list[float]]]:
    """D of the model (mean over seeds) and of the reference; the model's mean MSD curve."""
    dt_ps = settings.interval * settings.timestep_fs / 1000
    curves = [_msd(r.frames, dt_ps) for r in runs]
    n = min(len(c[1]) for c in curves)
    lag, msd = curves[0][0][:n], np.mean([c[1][:n] for c in curves], axis=0)
    fits = [diffusion_coefficient(*c) for c in curves]
    # the reference trajectory concatenates seeds; use its first seed's stretch of the same length
    ref = diffusion_coefficient(*_msd(reference_frames[: len(runs[0].frames)], dt_ps))
    D = float(np.mean([f.D for f in fits]))
    stats_out = {
        "D_A2_per_ps": D,
        "D_reference": ref.D,
        "D_relative_error": abs(D - ref.D) / abs(ref.D),
        "msd_loglog_slope": float(np.mean([f.loglog_slope for f in fits])),
    }
    return stats_out, (list(map(float, lag)), list(map(float, msd)))


def _crystal(
    calculator: Calculator, reference_calc: Calculator, start: Atoms
) -> tuple[dict[str, float], dict[str, Any]]:
    """Elastic-constant relative errors; for cells up to 64 atoms also phonon bands of model and reference.

    A cell larger than the primitive one folds the bands; model and reference fold alike, so the
    frequency MAE still compares like with like.
    """
    from .observables import phonon_bands

    out: dict[str, float] = {}
    model, ref = start.copy(), start.copy()
    model.calc, ref.calc = calculator, reference_calc
    C, C_ref = elastic_constants(model), elastic_constants(ref)
    for name, (i, j) in {"C11": (0, 0), "C12": (0, 1), "C44": (3, 3)}.items():
        out[f"{name}_relative_error"] = float(abs(C[i, j] - C_ref[i, j]) / abs(C_ref[i, j]))
    bands: dict[str, Any] = {}
    if len(start) <= 64:  # small cells get a 2×2×2 phonopy supercell; larger ones are their own supercell
        supercell = 2 if len(start) <= 8 else 1
        b, b_ref = phonon_bands(model, supercell), phonon_bands(ref, supercell)
        out["phonon_frequency_MAE_THz"] = float(np.mean(np.abs(b.frequencies - b_ref.frequencies)))
        bands = {
            "distance": b.distance.tolist(),
            "model": b.frequencies.tolist(),
            "reference": b_ref.frequencies.tolist(),
            "ticks": b.ticks,
        }
    return out, bands


def reference_trajectory(
    source: str, start: Atoms, protocol: str, settings: FidelitySettings
) -> tuple[list[Atoms], Calculator | None, list[MDResult]]:
    """Reference frames: from a trajectory file, or by running the protocol's MD with a calculator.

    With a calculator the molecule protocol's bond monitor watches the reference too (a reference that
    "fails" means the criterion is too strict at that temperature); the run continues regardless, so
    the reference trajectory always has its full length.
    """
    import ase.io

    if Path(source).is_file():
        return list(ase.io.read(source, index=":")), None, []
    calc = reference_calculator(source, start)
    frames: list[Atoms] = []
    runs = []
    for seed in range(settings.seeds):
        result = run_md(
            start, calc, settings.temperature_K, settings.steps, settings.timestep_fs, settings.ensemble,
            settings.interval, [BlowUp()], seed=1000 + seed,
        )  # fmt: skip
        if protocol == "molecule":
            watch = BondLength(start)
            for frame, t in zip(result.frames, result.times_ps):
                reason = watch(frame, [])
                if reason is not None:
                    result.failed_at_ps, result.reason = t, reason
                    break
        runs.append(result)
        frames += result.frames
    return frames, calc, runs


def reference_mismatch(run_dirs: list[Path], reference: str) -> str | None:
    """A warning when the xTB reference judges models trained on other labels (e.g. DFT data)."""
    import yaml

    if reference != "xtb":
        return None
    from ..data.xtb import cache_dir

    built_in = str((cache_dir() / "datasets").resolve())
    foreign = []
    for run_dir in run_dirs:
        config_file = run_dir / "config.yaml"
        if not config_file.is_file():
            continue
        train = (yaml.safe_load(config_file.read_text()).get("data") or {}).get("train")
        if train and not str(Path(train).resolve()).startswith(built_in):
            foreign.append(Path(train).name)
    if not foreign:
        return None
    return (
        f"the runs were trained on {', '.join(sorted(set(foreign)))}, not on mlipopt's GFN2-xTB data: the "
        "xTB reference compares them with another level of theory. Give --reference a trajectory "
        "computed with the training data's method (or --reference emt for EMT toy data)."
    )


def run_label(run_dir: Path) -> str:
    """``optimizer s=…`` from a run's config (the run dir name when there is none)."""
    import yaml

    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        return run_dir.name
    config = yaml.safe_load(config_file.read_text())
    return (
        f"{config['optimizer']['name']} s={100 * config['data']['force_fraction']:g}% seed {config['seed']}"
    )


def start_structure(run_dir: Path) -> Atoms:
    """A frame of the run's own data to start MD from (first test frame, else first training frame)."""
    import ase.io
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    data = config["data"]
    source = data.get("test") or data.get("train")
    if source:
        return ase.io.read(source, index=0)
    from ..data import generate_frames

    return generate_frames(**data["generate"]).atoms[0]


def evaluate_runs(
    run_dirs: list[str | Path],
    protocol: str,
    reference: str,
    settings: FidelitySettings,
    progress: Callable[[str], None] = print,
    trajectory_dir: Path | None = None,
) -> tuple[list[FidelityResult], FidelityResult]:
    """Evaluate several trained runs side by side; the reference is evaluated with the same protocol."""
    from ..calculator import load

    dirs = [Path(d) for d in run_dirs]
    start = start_structure(dirs[0])
    warning = reference_mismatch(dirs, reference)
    if warning:
        progress(f"WARNING: {warning}")
    progress(
        f"reference ({reference}): {settings.seeds} × {settings.steps} steps at {settings.temperature_K:g} K"
    )
    begin = time.perf_counter()
    ref_frames, ref_calc, ref_runs = reference_trajectory(reference, start, protocol, settings)
    if trajectory_dir is not None and ref_calc is not None:
        import ase.io

        trajectory_dir.mkdir(parents=True, exist_ok=True)
        ase.io.write(trajectory_dir / "reference.xyz", ref_frames, format="extxyz")
    r, ref_curve = _structure(ref_frames, protocol, settings.rmax)
    reference_result = FidelityResult(
        label=f"reference ({Path(reference).name})",
        survived=float(np.mean([x.stable for x in ref_runs])) if ref_runs else 1.0,
        median_time_to_failure_ps=(
            _median_time_to_failure(ref_runs) if ref_runs else settings.steps * settings.timestep_fs / 1000
        ),
        failures=[x.reason for x in ref_runs if x.reason],
        duration_ps=settings.steps * settings.timestep_fs / 1000,
        structure_error=0.0,
        seconds=time.perf_counter() - begin,
        curve=(list(map(float, r)), list(map(float, ref_curve))),
        temperature_K=settings.temperature_K,
    )
    results = []
    for run_dir in dirs:
        label = run_label(run_dir)
        result = evaluate(
            label, load(run_dir), start, protocol, ref_frames, settings, ref_calc, trajectory_dir
        )
        progress(
            f"  {label}: survived {100 * result.survived:.0f} %, median time to failure {_ttf(result)}, "
            f"structure error {result.structure_error:.3f} ({result.seconds:.0f} s)"
        )
        results.append(result)
    return results, reference_result


def _ttf(result: FidelityResult) -> str:
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
        cells = [r.label, f"{100 * r.survived:.0f} %", _ttf(r), f"{r.structure_error:.3f}", worst_text]
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    from .observables import arrhenius_fit

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
        fig.tight_layout()
        fig.savefig(out / "phonon_bands.png", dpi=120)
        plt.close(fig)
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
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def store(results: list[FidelityResult], run_dirs: list[Path], protocol: str) -> int:
    """Record results in the study database of runs that belong to a study; returns how many were stored."""
    from ..study.db import ResultsDB

    stored = 0
    for result, run_dir in zip(results, run_dirs):
        database = run_dir.resolve().parent.parent / "results.db"
        if not database.is_file():
            continue
        key = f"{protocol}@{result.temperature_K:g}K"
        ResultsDB(f"sqlite:///{database}").record_fidelity(run_dir.name, key, asdict(result))
        stored += 1
    return stored


def settings_dict(settings: FidelitySettings) -> dict[str, Any]:
    return asdict(settings)
