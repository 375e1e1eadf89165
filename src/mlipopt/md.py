"""Molecular dynamics on ASE integrators with stability monitors: one runner for the fidelity protocols
and for sampling a pretrained model's own structures (forgetting), so neither package borrows from the other.

A run stops at the first monitor that fires and records the time of failure; positions are kept
unwrapped (ASE's integrators do not wrap), so the MSD can be computed from the saved frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.md.langevin import Langevin
from ase.md.nose_hoover_chain import NoseHooverChainNVT
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet


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
    """Run ``steps`` of MD (``langevin``, ``bussi``, ``nose_hoover`` or ``nve``); ``monitors`` run every
    ``interval``. For diffusion use ``bussi`` (Bussi et al. 2007, what mlipopt.data.reference_md records
    with) or ``nve``: Langevin friction (``friction`` per fs) slows diffusion."""
    atoms = atoms.copy()
    atoms.calc = calculator
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
    dt = timestep_fs * units.fs
    if ensemble == "langevin":
        dyn = Langevin(
            atoms, dt, temperature_K=temperature_K, friction=friction / units.fs, fixcm=False, rng=rng
        )
    elif ensemble == "bussi":  # stochastic velocity rescaling: canonical, dynamics close to NVE's
        from ase.md.bussi import Bussi

        dyn = Bussi(atoms, dt, temperature_K=temperature_K, taut=100 * units.fs, rng=rng)
    elif ensemble == "nose_hoover":
        dyn = NoseHooverChainNVT(atoms, dt, temperature_K=temperature_K, tdamp=100 * dt)
    elif ensemble == "nve":
        dyn = VelocityVerlet(atoms, dt)
    else:
        raise ValueError(f"unknown ensemble {ensemble!r}; choose langevin, bussi, nose_hoover or nve")
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
