"""Reference molecular dynamics that survives interruption: the ab initio (here xTB) trajectory a liquid
study trains on and compares its MD against (RDFs, diffusion).

A reference trajectory of a periodic liquid at xTB cost is hours of CPU (GFN1-xTB on the 27-molecule
water box: ~1.3 s per energy + forces + stress call on one core, so 10 ps at 0.5 fs is ~7 h), longer than
one sitting. :func:`run_reference_md` therefore appends every ``frame_every``-th step to an extxyz file
(energy, forces, stress, momenta) and writes its restart point (positions, momenta, step, the
thermostat's random state) atomically after each frame; a second call continues from there, and a call
with more ``steps`` extends a finished trajectory. With a deterministic calculator (EMT) an interrupted
and resumed run is bitwise the uninterrupted one (tests/data/test_reference_md.py); with xTB a resumed
SCF starts from a fresh guess, so the continuation agrees to the SCF tolerance, not bitwise.

The thermostat is Bussi et al.'s stochastic velocity rescaling (J. Chem. Phys. 126, 014101, 2007; ASE's
:class:`~ase.md.bussi.Bussi`): canonical sampling with dynamics close to NVE's, so the diffusion
coefficient is not damped the way Langevin friction damps it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units

from .io import DataError

FRAMES = "trajectory.extxyz"
RESTART = "restart.npz"
SETTINGS = "settings.json"


@dataclass(frozen=True)
class ReferenceMD:
    """What a reference trajectory is; a folder holds one, and resuming with other settings is refused."""

    system: str = "water"
    temperature_K: float = 300.0
    timestep_fs: float = 0.5
    thermostat_fs: float = 100.0  # Bussi's relaxation time
    frame_every: int = 40  # steps between recorded frames (20 fs at 0.5 fs)
    seed: int = 0


def run_reference_md(
    folder: Path,
    settings: ReferenceMD,
    steps: int,
    calculator: Callable[[], Any] | None = None,
    atoms: Atoms | None = None,
    progress: Callable[[str], None] = print,
) -> int:
    """Run (or continue) the reference MD in ``folder`` up to ``steps`` steps in all; returns the step
    reached. ``calculator`` builds the reference calculator (default: the system's xTB method) and
    ``atoms`` the starting structure (default: the built-in one of ``settings.system``)."""
    from ase.md.bussi import Bussi
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    from .xtb import initial_structure, xtb_calculator

    folder.mkdir(parents=True, exist_ok=True)
    _check_settings(folder, settings)
    rng = np.random.default_rng(settings.seed)
    restart = folder / RESTART
    if restart.is_file():
        atoms, step = _load_restart(restart, atoms or initial_structure(settings.system, settings.seed), rng)
        _truncate_frames(folder / FRAMES, step // settings.frame_every)
    else:
        atoms = (atoms or initial_structure(settings.system, settings.seed)).copy()
        thermalize_momenta(atoms, temperature_K=settings.temperature_K, rng=rng)
        Stationary(atoms)
        step = 0
        (folder / FRAMES).unlink(missing_ok=True)
    if step >= steps:
        progress(f"reference MD in {folder}: {step} steps already run")
        return step
    atoms.calc = calculator() if calculator else xtb_calculator(settings.system)
    dynamics = Bussi(
        atoms,
        timestep=settings.timestep_fs * units.fs,
        temperature_K=settings.temperature_K,
        taut=settings.thermostat_fs * units.fs,
        rng=rng,
    )
    start, first = time.perf_counter(), step
    while step < steps:
        dynamics.run(settings.frame_every)
        step += settings.frame_every
        _append_frame(folder / FRAMES, atoms, step, settings)
        _save_restart(restart, atoms, step, rng)
        done = step - first
        if done % (settings.frame_every * 25) == 0 or step >= steps:
            rate = (time.perf_counter() - start) / done
            progress(
                f"  {settings.system} {settings.temperature_K:.0f} K: step {step}/{steps} "
                f"({step * settings.timestep_fs / 1000:.2f} ps, T {atoms.get_temperature():.0f} K, "
                f"{rate:.2f} s/step, ~{(steps - step) * rate / 60:.0f} min left)"
            )
    return step


def _check_settings(folder: Path, settings: ReferenceMD) -> None:
    path = folder / SETTINGS
    wanted = asdict(settings)
    if path.is_file():
        recorded = json.loads(path.read_text())
        if recorded != wanted:
            changed = ", ".join(
                f"{k}: {recorded.get(k)} -> {v}" for k, v in wanted.items() if recorded.get(k) != v
            )
            raise DataError(
                f"{folder} holds a reference MD with other settings ({changed}); use another folder"
            )
        return
    _atomic_write_text(path, json.dumps(wanted, indent=2))


def _append_frame(path: Path, atoms: Atoms, step: int, settings: ReferenceMD) -> None:
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    frame = atoms.copy()
    frame.calc = SinglePointCalculator(
        frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces(), stress=atoms.get_stress()
    )
    frame.info.update(step=step, time_fs=step * settings.timestep_fs, temperature_K=settings.temperature_K)
    with path.open("a") as handle:
        ase.io.write(handle, frame, format="extxyz")
        handle.flush()
        os.fsync(handle.fileno())


def _truncate_frames(path: Path, n_frames: int) -> None:
    """Keep the first ``n_frames`` frames: a frame appended after the last restart point (the process
    died between the two writes) is dropped, since the resumed run records it again."""
    if not path.is_file():
        if n_frames:
            raise DataError(f"{path} is missing but the restart point is at frame {n_frames}")
        return
    lines = path.read_text().splitlines(keepends=True)
    kept, at = [], 0
    for _ in range(n_frames):
        if at >= len(lines):
            raise DataError(f"{path} holds fewer frames than its restart point ({n_frames})")
        count = int(lines[at])
        kept.extend(lines[at : at + count + 2])
        at += count + 2
    if at < len(lines):
        _atomic_write_text(path, "".join(kept))


def _save_restart(path: Path, atoms: Atoms, step: int, rng: np.random.Generator) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(
        tmp,
        positions=atoms.positions,
        momenta=atoms.get_momenta(),
        cell=atoms.cell.array,
        step=step,
        rng=json.dumps(rng.bit_generator.state),
    )
    os.replace(tmp, path)  # atomic: a kill leaves the old restart point or the new one


def _load_restart(path: Path, template: Atoms, rng: np.random.Generator) -> tuple[Atoms, int]:
    with np.load(path) as saved:
        atoms = template.copy()
        atoms.positions = saved["positions"]
        atoms.set_momenta(saved["momenta"])
        atoms.cell = saved["cell"]
        rng.bit_generator.state = json.loads(str(saved["rng"]))
        return atoms, int(saved["step"])


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mlipopt.data.reference_md",
        description="Run or continue a resumable xTB reference MD of a built-in system.",
    )
    parser.add_argument("folder", type=Path)
    parser.add_argument(
        "--steps", type=int, required=True, help="total steps (a resumed run continues to it)"
    )
    parser.add_argument("--system", default="water")
    parser.add_argument("--temperature", type=float, default=300.0)
    parser.add_argument("--timestep-fs", type=float, default=0.5)
    parser.add_argument("--frame-every", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    settings = ReferenceMD(
        system=args.system,
        temperature_K=args.temperature,
        timestep_fs=args.timestep_fs,
        frame_every=args.frame_every,
        seed=args.seed,
    )
    run_reference_md(args.folder, settings, args.steps)


if __name__ == "__main__":
    main()
