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
    integrated_absolute_difference,
    mean_squared_displacement,
    phonon_frequencies,
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


def _monitors(protocol: str, start: Atoms, reference_frames: list[Atoms], rmax: float) -> list:
    if protocol == "molecule":
        return [BlowUp(), BondLength(start)]
    return [BlowUp(), RDFDrift(reference_frames[-20:], rmax=min(rmax, 0.49 * min(start.cell.lengths())))]


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
            _monitors(protocol, start, reference_frames, settings.rmax),
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
    if protocol == "liquid" and all(r.stable for r in runs):
        extra.update(_diffusion(runs, reference_frames, settings))
    if protocol == "crystal" and reference_calc is not None:
        extra.update(_crystal(calculator, reference_calc, start))
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
    )


def _diffusion(
    runs: list[MDResult], reference_frames: list[Atoms], settings: FidelitySettings
) -> dict[str, float]:
    dt_ps = settings.interval * settings.timestep_fs / 1000

    def coefficient(frames: list[Atoms]) -> float:
        msd = mean_squared_displacement(np.array([f.positions for f in frames]))
        return diffusion_coefficient(dt_ps * np.arange(len(msd)), msd).D

    D = float(np.mean([coefficient(r.frames) for r in runs]))
    D_ref = coefficient(reference_frames)
    return {"D_A2_per_ps": D, "D_reference": D_ref, "D_relative_error": abs(D - D_ref) / abs(D_ref)}


def _crystal(calculator: Calculator, reference_calc: Calculator, start: Atoms) -> dict[str, float]:
    out = {}
    model, ref = start.copy(), start.copy()
    model.calc, ref.calc = calculator, reference_calc
    C, C_ref = elastic_constants(model), elastic_constants(ref)
    for name, (i, j) in {"C11": (0, 0), "C12": (0, 1), "C44": (3, 3)}.items():
        out[f"{name}_relative_error"] = float(abs(C[i, j] - C_ref[i, j]) / abs(C_ref[i, j]))
    if len(start) <= 8:
        f, f_ref = phonon_frequencies(model), phonon_frequencies(ref)
        out["phonon_frequency_MAE_THz"] = float(np.mean(np.abs(f - f_ref)))
    return out


def reference_trajectory(
    source: str, start: Atoms, protocol: str, settings: FidelitySettings
) -> tuple[list[Atoms], Calculator | None]:
    """Reference frames: from a trajectory file, or by running the protocol's MD with a calculator."""
    import ase.io

    if Path(source).is_file():
        return list(ase.io.read(source, index=":")), None
    calc = reference_calculator(source, start)
    frames: list[Atoms] = []
    for seed in range(settings.seeds):
        result = run_md(
            start, calc, settings.temperature_K, settings.steps, settings.timestep_fs, settings.ensemble,
            settings.interval, [BlowUp()], seed=1000 + seed,
        )  # fmt: skip
        frames += result.frames
    return frames, calc


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
    progress(
        f"reference ({reference}): {settings.seeds} × {settings.steps} steps at {settings.temperature_K:g} K"
    )
    begin = time.perf_counter()
    ref_frames, ref_calc = reference_trajectory(reference, start, protocol, settings)
    r, ref_curve = _structure(ref_frames, protocol, settings.rmax)
    reference_result = FidelityResult(
        label=f"reference ({Path(reference).name})",
        survived=1.0,
        median_time_to_failure_ps=settings.steps * settings.timestep_fs / 1000,
        duration_ps=settings.steps * settings.timestep_fs / 1000,
        structure_error=0.0,
        seconds=time.perf_counter() - begin,
        curve=(list(map(float, r)), list(map(float, ref_curve))),
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
    reference: FidelityResult,
    settings: FidelitySettings,
    protocol: str,
    out: Path,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    overlay_figure(results, reference, protocol, out / "structure_overlay.png")
    (out / "fidelity.json").write_text(
        json.dumps({"settings": asdict(settings), "protocol": protocol,
                    "results": [asdict(r) for r in results], "reference": asdict(reference)}, indent=1)
    )  # fmt: skip
    text = [
        f"# Physical fidelity ({protocol})",
        "",
        f"{settings.ensemble} MD at {settings.temperature_K:g} K, {settings.seeds} seeds × "
        f"{settings.steps} steps of {settings.timestep_fs:g} fs per model; reference trajectory "
        f"{reference.seconds:.0f} s.",
        "",
        table(results, settings, protocol),
        "",
        "![structure against the reference](structure_overlay.png)",
        "",
    ]
    path = out / "index.md"
    path.write_text("\n".join(text))
    return path


def store(results: list[FidelityResult], run_dirs: list[Path], protocol: str) -> int:
    """Record results in the study database of runs that belong to a study; returns how many were stored."""
    from ..study.db import ResultsDB

    stored = 0
    for result, run_dir in zip(results, run_dirs):
        database = run_dir.resolve().parent.parent / "results.db"
        if not database.is_file():
            continue
        ResultsDB(f"sqlite:///{database}").record_fidelity(run_dir.name, protocol, asdict(result))
        stored += 1
    return stored


def settings_dict(settings: FidelitySettings) -> dict[str, Any]:
    return asdict(settings)
