"""Molecular dynamics with stability monitors (Fu et al. 2022's failure criteria), on ASE integrators.

A run stops at the first monitor that fires and records the time of failure; positions are kept
unwrapped (ASE's integrators do not wrap), so the MSD can be computed from the saved frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator

from .observables import distance_distribution, integrated_absolute_difference, rdf


class Monitor:
    """Returns a failure reason (str) for a frame, or None while the run is healthy."""

    def __call__(self, atoms: Atoms, history: list[Atoms]) -> str | None:  # pragma: no cover - interface
        raise NotImplementedError


class BlowUp(Monitor):
    """Non-finite energy or forces, or any force above ``max_force`` eV/Å."""

    def __init__(self, max_force: float = 100.0) -> None:
        self.max_force = max_force

    def __call__(self, atoms: Atoms, history: list[Atoms]) -> str | None:
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
            return "non-finite energy or forces"
        largest = float(np.abs(forces).max())
        return f"force {largest:.1f} eV/Å > {self.max_force}" if largest > self.max_force else None


class BondLength(Monitor):
    """A bonded pair deviating more than ``max_deviation`` Å from its reference length (molecules).

    Bonds are the pairs closer than 1.2 × the sum of covalent radii in ``reference``; the reference
    length is their distance there (or a mean over reference frames).
    """

    def __init__(self, reference: Atoms | Sequence[Atoms], max_deviation: float = 0.5) -> None:
        from ase.data import covalent_radii

        frames = [reference] if isinstance(reference, Atoms) else list(reference)
        first = frames[0]
        radii = covalent_radii[first.numbers]
        d = first.get_all_distances()
        i, j = np.nonzero(np.triu(d < 1.2 * (radii[:, None] + radii[None, :]), k=1))
        self.pairs = np.stack([i, j], axis=1)
        self.reference = np.mean([f.get_all_distances()[i, j] for f in frames], axis=0)
        self.max_deviation = max_deviation

    def __call__(self, atoms: Atoms, history: list[Atoms]) -> str | None:
        i, j = self.pairs.T
        dev = np.abs(atoms.get_all_distances()[i, j] - self.reference)
        k = int(np.argmax(dev))
        if dev[k] > self.max_deviation:
            return f"bond {i[k]}-{j[k]} deviates {dev[k]:.2f} Å from its reference length"
        return None


class RDFDrift(Monitor):
    """Windowed g(r) (last ``window`` frames) drifting from the reference: ∫|Δg| dr > ``threshold``."""

    def __init__(
        self, reference_frames: Sequence[Atoms], rmax: float, window: int = 10, threshold: float = 1.0
    ):
        self.rmax, self.window, self.threshold = rmax, window, threshold
        self.r, self.g_ref = rdf(reference_frames, rmax)

    def __call__(self, atoms: Atoms, history: list[Atoms]) -> str | None:
        if len(history) < self.window:
            return None
        _, g = rdf(history[-self.window :], self.rmax)
        error = integrated_absolute_difference(self.r, g, self.g_ref)
        return f"windowed RDF error {error:.2f} > {self.threshold}" if error > self.threshold else None


@dataclass
class MDResult:
    frames: list[Atoms] = field(default_factory=list)  # unwrapped, with energy/forces in info/arrays
    times_ps: list[float] = field(default_factory=list)
    total_energy: list[float] = field(default_factory=list)
    failed_at_ps: float | None = None
    reason: str | None = None
    duration_ps: float = 0.0

    @property
    def stable(self) -> bool:
        return self.failed_at_ps is None


def run_md(
    atoms: Atoms,
    calculator: Calculator,
    temperature_K: float = 300.0,
    steps: int = 1000,
    timestep_fs: float = 0.5,
    ensemble: str = "langevin",
    interval: int = 10,
    monitors: Sequence[Monitor] = (),
    seed: int = 0,
    friction: float = 0.01,
) -> MDResult:
    """Run ``steps`` of MD (``langevin``, ``nose_hoover`` or ``nve``); ``monitors`` run every ``interval``."""
    from ase.md.langevin import Langevin
    from ase.md.nose_hoover_chain import NoseHooverChainNVT
    from ase.md.velocitydistribution import thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = calculator
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
    dt = timestep_fs * units.fs
    if ensemble == "langevin":
        dyn = Langevin(
            atoms, dt, temperature_K=temperature_K, friction=friction / units.fs, fixcm=False, rng=rng
        )
    elif ensemble == "nose_hoover":
        dyn = NoseHooverChainNVT(atoms, dt, temperature_K=temperature_K, tdamp=100 * dt)
    elif ensemble == "nve":
        dyn = VelocityVerlet(atoms, dt)
    else:
        raise ValueError(f"unknown ensemble {ensemble!r}; choose langevin, nose_hoover or nve")
    result = MDResult(duration_ps=steps * timestep_fs / 1000)
    monitors = list(monitors) or [BlowUp()]

    def record() -> bool:
        frame = atoms.copy()
        frame.info["energy"] = float(atoms.get_potential_energy())
        frame.arrays["forces"] = atoms.get_forces().copy()
        result.frames.append(frame)
        result.times_ps.append(dyn.nsteps * timestep_fs / 1000)
        result.total_energy.append(float(atoms.get_total_energy()))
        for monitor in monitors:
            reason = monitor(atoms, result.frames)
            if reason is not None:
                result.failed_at_ps, result.reason = result.times_ps[-1], reason
                return False
        return True

    if not record():
        return result
    for _ in range(steps // interval):
        try:
            dyn.run(interval)
        except Exception as exc:  # a calculator that breaks down mid-run is a failure, not a crash
            result.failed_at_ps = dyn.nsteps * timestep_fs / 1000
            result.reason = f"{type(exc).__name__}: {exc}"
            return result
        if not record():
            return result
    return result


def pair_distance_error(frames: Sequence[Atoms], reference: Sequence[Atoms], rmax: float = 6.0) -> float:
    """∫|Δp(r)| dr between the all-pair distance distributions of two molecular trajectories."""
    r, p = distance_distribution(frames, rmax)
    _, p_ref = distance_distribution(reference, rmax)
    return integrated_absolute_difference(r, p, p_ref)
