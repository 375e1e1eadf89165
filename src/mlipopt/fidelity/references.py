"""Where a fidelity comparison starts and what it compares against: the reference calculator or
trajectory, the start structure from a run's own data, and the side-by-side evaluation of runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
import yaml
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.calculators.emt import EMT

from ..calculator import load
from ..data import generate_frames
from ..data.xtb import cache_dir, xtb_calculator
from ..md import BlowUp, MDResult, run_md
from .md import BondLength
from .protocols import FidelityResult, FidelitySettings, _median_time_to_failure, _structure, evaluate
from .report import failure_time_text


def reference_calculator(kind: str, atoms: Atoms) -> Calculator:
    """``xtb`` (GFN2 for molecules, GFN1 for periodic cells) or ``emt``."""
    if kind == "emt":
        return EMT()
    if kind == "xtb":
        return xtb_calculator("water" if atoms.pbc.any() else "3bpa")
    raise ValueError(f"unknown reference calculator {kind!r}; use xtb, emt or a trajectory file")


def trajectory_file(source: str) -> tuple[Path, str] | None:
    """``source`` as a recorded trajectory: a file, optionally with ASE's ``@`` frame selection
    (``trajectory.extxyz@50:`` skips the first 50 frames, e.g. a reference MD's equilibration); None
    when it names no file (a calculator name)."""
    path, _, index = source.partition("@")
    if not Path(path).is_file():
        if index:
            raise FileNotFoundError(f"reference trajectory {path} does not exist")
        return None
    return Path(path), index or ":"


def reference_trajectory(
    source: str, start: Atoms, protocol: str, settings: FidelitySettings
) -> tuple[list[Atoms], Calculator | None, list[MDResult]]:
    """Reference frames: from a trajectory file, or by running the protocol's MD with a calculator.

    With a calculator the molecule protocol's bond monitor watches the reference too (a reference that
    "fails" means the criterion is too strict at that temperature); the run continues regardless, so
    the reference trajectory always has its full length.
    """
    recorded = trajectory_file(source)
    if recorded is not None:
        path, index = recorded
        return list(ase.io.read(path, index=index)), None, []
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
    if reference != "xtb":
        return None

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
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        return run_dir.name
    config = yaml.safe_load(config_file.read_text())
    return (
        f"{config['optimizer']['name']} s={100 * config['data']['force_fraction']:g}% seed {config['seed']}"
    )


def start_structure(run_dir: Path) -> Atoms:
    """A frame of the run's own data to start MD from (first test frame, else first training frame)."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    data = config["data"]
    source = data.get("test") or data.get("train")
    if source:
        return ase.io.read(source, index=0)

    return generate_frames(**data["generate"]).atoms[0]


def md_start(protocol: str, data_start: Atoms, reference_frames: list[Atoms], reference_calc: Any) -> Atoms:
    """Where the models' MD starts: for a liquid against a recorded reference of the same box, the
    reference's first selected (equilibrated) frame, since a data set recorded by reference MD begins at
    the unequilibrated start; otherwise the frame of the run's own data."""
    first = reference_frames[0]
    same = len(first) == len(data_start) and (first.numbers == data_start.numbers).all()
    if (
        protocol == "liquid"
        and reference_calc is None
        and same
        and np.allclose(first.cell.array, data_start.cell.array)
    ):
        return Atoms(first.numbers, first.positions, cell=first.cell, pbc=True)
    return data_start


def evaluate_runs(
    run_dirs: list[str | Path],
    protocol: str,
    reference: str,
    settings: FidelitySettings,
    progress: Callable[[str], None] = print,
    trajectory_dir: Path | None = None,
) -> tuple[list[FidelityResult], FidelityResult]:
    """Evaluate several trained runs side by side; the reference is evaluated with the same protocol."""
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
    start = md_start(protocol, start, ref_frames, ref_calc)
    if trajectory_dir is not None and ref_calc is not None:
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
            f"  {label}: survived {100 * result.survived:.0f} %, "
            f"median time to failure {failure_time_text(result)}, "
            f"structure error {result.structure_error:.3f} ({result.seconds:.0f} s)"
        )
        results.append(result)
    return results, reference_result
