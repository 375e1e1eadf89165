"""Fidelity protocols: the same MD and observables for several trained runs and for the reference.

``molecule``: NVT at a (hot) temperature from a frame of the run's data; stability by bond-length
deviation (> 0.5 Å, Fu et al. 2022); structure by the all-pair distance distribution against the
reference calculator's trajectory (∫|Δp(r)| dr); geometry optimisation (BFGS) against the reference's
minimum (RMSD, energy above the reference minimum on the reference surface). ``liquid``: NVT;
stability by windowed-RDF drift; RDF error and diffusion coefficient against the reference.
``crystal``: NVT stability and RDF error, plus elastic constants and phonon frequencies against the
reference calculator.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.data import atomic_numbers

from .md import BlowUp, BondLength, MDResult, RDFDrift, run_md
from .observables import (
    diffusion_coefficient,
    distance_distribution,
    elastic_constants,
    energy_drift,
    integrated_absolute_difference,
    mean_squared_displacement,
    phonon_bands,
    rdf,
)
from .settings import PROTOCOLS, FidelitySettings


@dataclass
class FidelityResult:
    label: str
    survived: float  # fraction of seeds without failure
    median_time_to_failure_ps: float  # survivors count as the full duration (a lower bound then)
    duration_ps: float
    structure_error: float  # ∫|Δp| (molecule) or ∫|Δg| (liquid, crystal) against the reference
    failures: list[str] = field(default_factory=list)
    pair_errors: dict[str, float] = field(default_factory=dict)  # ∫|Δ| per element pair
    # p(r) or g(r) per element pair of the model and of the reference, on ``curve``'s r (plots, peaks)
    pair_curves: dict[str, list[float]] = field(default_factory=dict)
    reference_pair_curves: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    curve: tuple[list[float], list[float]] = ((), ())  # r, p(r) or g(r) for plots
    msd: tuple[list[float], list[float]] = ((), ())  # lag [ps], MSD [Å²] (liquid)
    reference_msd: tuple[list[float], list[float]] = ((), ())  # the reference's, over the same duration
    phonons: dict[str, Any] = field(default_factory=dict)  # bands of model and reference (crystal)
    temperature_K: float = 0.0


def _structure(frames: list[Atoms], protocol: str, rmax: float) -> tuple[np.ndarray, np.ndarray]:
    if protocol == "molecule":
        return distance_distribution(frames, rmax)
    return rdf(frames, min(rmax, 0.49 * min(frames[0].cell.lengths())))


def _pair_structure(
    frames: list[Atoms], reference: list[Atoms], protocol: str, rmax: float
) -> tuple[dict[str, float], dict[str, list[float]], dict[str, list[float]]]:
    """Per element pair present: ∫|Δp| (molecules) or ∫|Δg| (periodic), and the model's and the
    reference's curves."""
    elements = sorted(set(reference[0].get_chemical_symbols()), key=atomic_numbers.__getitem__)
    errors, curves, reference_curves = {}, {}, {}
    for i, a in enumerate(elements):
        for b in elements[i:]:
            if protocol == "molecule":
                r, p = distance_distribution(frames, rmax, elements=(a, b))
                _, p_ref = distance_distribution(reference, rmax, elements=(a, b))
            else:
                cut = min(rmax, 0.49 * min(reference[0].cell.lengths()))
                r, p = rdf(frames, cut, elements=(a, b))
                _, p_ref = rdf(reference, cut, elements=(a, b))
            errors[f"{a}-{b}"] = integrated_absolute_difference(r, p, p_ref)
            curves[f"{a}-{b}"] = list(map(float, p))
            reference_curves[f"{a}-{b}"] = list(map(float, p_ref))
    return errors, curves, reference_curves


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
    model_window, reference_window = rdf_windows(reference_frames, settings)
    threshold = _rdf_threshold(reference_frames, rmax, reference_window, settings.rdf_threshold)
    return [BlowUp(), RDFDrift(reference_frames, rmax=rmax, window=model_window, threshold=threshold)]


def rdf_windows(
    reference_frames: list[Atoms], settings: FidelitySettings, frames: int = 10
) -> tuple[int, int]:
    """Frames per window of the RDF-drift monitor, for the model's MD and for the reference's noise
    (its threshold): both span the same time, ``frames`` frames of the coarser of the two spacings. A
    window of closely spaced, correlated model frames judged against the noise of widely spaced
    reference frames would fail a faithful model."""
    model_dt = settings.interval * settings.timestep_fs / 1000
    reference_dt = reference_spacing_ps(reference_frames) or model_dt
    span = frames * max(model_dt, reference_dt)
    return max(frames, round(span / model_dt)), max(2, round(span / reference_dt))


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
        trajectory_dir.mkdir(parents=True, exist_ok=True)
        for seed, run in enumerate(runs):
            ase.io.write(trajectory_dir / f"{_slug(label)}-seed{seed}.xyz", run.frames, format="extxyz")
    frames = [f for r in runs for f in (r.frames if r.stable else r.frames[:-1])]
    r, ref_curve = _structure(reference_frames, protocol, settings.rmax)
    pair_errors: dict[str, float] = {}
    pair_curves: dict[str, list[float]] = {}
    reference_pair_curves: dict[str, list[float]] = {}
    if frames:
        _, curve = _structure(frames, protocol, settings.rmax)
        error = integrated_absolute_difference(r, curve, ref_curve)
        pair_errors, pair_curves, reference_pair_curves = _pair_structure(
            frames, reference_frames, protocol, settings.rmax
        )
    else:
        curve, error = np.zeros_like(ref_curve), float("nan")
    extra: dict[str, float] = {}
    msd: tuple[list[float], list[float]] = ((), ())
    reference_msd: tuple[list[float], list[float]] = ((), ())
    if protocol == "liquid":
        diffusion, msd, reference_msd = _diffusion(runs, reference_frames, settings)
        extra.update(diffusion)
    if protocol == "molecule" and reference_calc is not None:
        extra.update(geometry_errors(calculator, reference_calc, start))
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
        pair_curves=pair_curves,
        reference_pair_curves=reference_pair_curves,
        extra=extra,
        seconds=time.perf_counter() - begin,
        curve=(list(map(float, r)), list(map(float, curve))),
        msd=msd,
        reference_msd=reference_msd,
        phonons=phonons,
        temperature_K=settings.temperature_K,
    )


def relax(atoms: Atoms, calculator: Calculator, fmax: float = 0.01, steps: int = 500) -> tuple[Atoms, bool]:
    """A BFGS minimum of ``atoms`` under ``calculator`` (ASE), and whether it converged to ``fmax`` eV/Å."""
    from ase.optimize import BFGS

    system = atoms.copy()
    system.calc = calculator
    converged = bool(BFGS(system, logfile=None).run(fmax=fmax, steps=steps))
    return system, converged


def geometry_errors(
    calculator: Calculator, reference_calc: Calculator, start: Atoms, fmax: float = 0.01
) -> dict:
    """Geometry optimisation against the reference: both relax ``start`` (BFGS to ``fmax``). Returned:
    - the RMSD of the model's minimum from the reference's, after the best rotation and translation (Å);
    - how far the model's minimum lies above the reference minimum on the reference surface
      (meV/atom);
    - the largest reference force left at the model's minimum (eV/Å)."""
    from ase.build import minimize_rotation_and_translation

    model_min, model_ok = relax(start, calculator, fmax)
    ref_min, ref_ok = relax(start, reference_calc, fmax)
    aligned = model_min.copy()
    minimize_rotation_and_translation(ref_min, aligned)
    rmsd = float(np.sqrt(np.mean(np.sum((aligned.positions - ref_min.positions) ** 2, axis=1))))
    probe = model_min.copy()
    probe.calc = reference_calc
    e_gap = 1e3 * (probe.get_potential_energy() - ref_min.get_potential_energy()) / len(start)
    return {
        "geometry_rmsd_A": rmsd,
        "geometry_energy_meV_atom": float(e_gap),
        "geometry_ref_fmax_eV_A": float(np.abs(probe.get_forces()).max()),
        "geometry_converged": float(model_ok and ref_ok),
    }


def _msd(frames: list[Atoms], dt_ps: float) -> tuple[np.ndarray, np.ndarray]:
    msd = mean_squared_displacement(np.array([f.positions for f in frames]))
    return dt_ps * np.arange(len(msd)), msd


def reference_spacing_ps(frames: list[Atoms]) -> float | None:
    """The time between a recorded trajectory's frames from their ``time_fs`` (what
    :mod:`mlipopt.data.reference_md` writes), or None when they do not record an even spacing."""
    times = [f.info.get("time_fs") for f in frames[:50]]
    if len(times) < 2 or any(t is None for t in times):
        return None
    steps = np.diff(np.asarray(times, dtype=float))
    if steps[0] <= 0 or not np.allclose(steps, steps[0]):
        return None
    return float(steps[0]) / 1000


def _diffusion(
    runs: list[MDResult], reference_frames: list[Atoms], settings: FidelitySettings
) -> tuple[dict[str, float], tuple[list[float], list[float]], tuple[list[float], list[float]]]:
    """D of the reference over the model MD's duration, and the model's (mean over seeds) when every
    seed survived; the model's mean MSD curve (empty then otherwise) and the reference's."""
    dt_ps = settings.interval * settings.timestep_fs / 1000
    stable = all(r.stable for r in runs)
    n_model = len(runs[0].frames) if stable else settings.steps // settings.interval + 1
    # the reference trajectory concatenates seeds (or is one long recorded run, mlipopt.data.reference_md):
    # its first stretch of the model's duration, at its own frame spacing where its frames record it
    ref_dt_ps = reference_spacing_ps(reference_frames) or dt_ps
    n_ref = round((n_model - 1) * dt_ps / ref_dt_ps) + 1
    ref_lag, ref_msd = _msd(reference_frames[:n_ref], ref_dt_ps)
    ref = diffusion_coefficient(ref_lag, ref_msd)
    reference_curve = (list(map(float, ref_lag)), list(map(float, ref_msd)))
    if not stable:
        return {"D_reference": ref.D}, ((), ()), reference_curve
    curves = [_msd(r.frames, dt_ps) for r in runs]
    n = min(len(c[1]) for c in curves)
    lag, msd = curves[0][0][:n], np.mean([c[1][:n] for c in curves], axis=0)
    fits = [diffusion_coefficient(*c) for c in curves]
    D = float(np.mean([f.D for f in fits]))
    stats_out = {
        "D_A2_per_ps": D,
        "D_reference": ref.D,
        "D_relative_error": abs(D - ref.D) / abs(ref.D),
        "msd_loglog_slope": float(np.mean([f.loglog_slope for f in fits])),
    }
    return stats_out, (list(map(float, lag)), list(map(float, msd))), reference_curve


def _crystal(
    calculator: Calculator, reference_calc: Calculator, start: Atoms
) -> tuple[dict[str, float], dict[str, Any]]:
    """Elastic-constant relative errors; for cells up to 64 atoms also phonon bands of model and reference.

    A cell larger than the primitive one folds the bands; model and reference fold alike, so the
    frequency MAE still compares like with like.
    """
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
