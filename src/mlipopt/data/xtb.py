"""Built-in datasets labelled by GFN-xTB (``tblite``, shipped on PyPI): no download, a few minutes on a CPU.

The default system is 3BPA (3-(benzyloxy)pyridin-2-amine, C12H12N2O, 27 atoms), the flexible drug-like
molecule of the 3BPA benchmark (Kovács et al. 2021), sampled by Langevin MD with GFN2-xTB at several
temperatures: low-temperature frames for training, the hottest as an out-of-distribution test. Liquid
water (27 molecules, periodic, GFN1-xTB) is the second system, for physical-fidelity work.

Datasets are cached as extxyz under ``$MLIPOPT_CACHE`` (default ``~/.cache/mlipopt``), keyed by every
generation setting, so a second run starts at once. Labels are written under ``energy``/``forces``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms, units

from .io import DataError

#: Starting geometry of 3BPA: the first frame of the 3BPA benchmark's 300 K training set
#: (ωB97X/6-31G(d) MD; MIT licence, github.com/davkovacs/BOTNet-datasets).
BPA_GEOMETRY = [
    ("C", 0.32657, -1.01286, 0.72107),
    ("C", -0.19462, 0.25830, 0.83414),
    ("C", 0.79249, -1.60245, 1.90438),
    ("H", 0.43515, -1.59784, -0.17897),
    ("C", -0.06984, 0.97877, 2.04805),
    ("O", -0.82551, 0.94764, -0.23208),
    ("N", -0.29007, 2.37382, 1.86235),
    ("N", 0.38838, 0.47665, 3.17064),
    ("H", -0.98416, 2.63165, 1.17783),
    ("H", -0.35613, 2.91936, 2.65951),
    ("C", 0.72926, -0.88036, 3.09653),
    ("H", 0.89111, -1.33213, 4.04893),
    ("H", 1.21249, -2.61699, 1.95761),
    ("C", -1.55059, 0.13992, -1.19894),
    ("C", -2.93143, -0.31869, -0.84882),
    ("H", -0.88027, -0.72270, -1.50496),
    ("H", -1.71075, 0.76854, -2.05655),
    ("C", -3.36710, -1.63869, -0.72394),
    ("C", -3.88194, 0.73798, -0.59066),
    ("C", -4.66144, -1.92715, -0.27082),
    ("H", -2.71537, -2.46158, -0.92494),
    ("C", -5.57704, -0.87828, -0.11328),
    ("H", -4.95295, -2.96156, -0.08227),
    ("C", -5.17381, 0.43421, -0.29909),
    ("H", -6.59525, -1.10219, 0.20625),
    ("H", -5.92759, 1.19353, -0.20196),
    ("H", -3.44856, 1.74787, -0.56747),
]

SYSTEMS = ("3bpa", "water")


@dataclass
class XTBDatasetSpec:
    """What to generate; every field is part of the cache key."""

    system: str = "3bpa"
    temperatures: list[float] = field(default_factory=lambda: [300.0, 600.0, 1200.0])
    frames_per_temperature: int = 100
    steps_between_frames: int = 10
    equilibration_steps: int = 100
    timestep_fs: float = 0.5
    friction: float = 0.02  # Langevin friction, 1/fs
    seed: int = 0

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return f"{self.system}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"


def cache_dir() -> Path:
    return Path(os.environ.get("MLIPOPT_CACHE", Path.home() / ".cache" / "mlipopt"))


def initial_structure(system: str, seed: int = 0) -> Atoms:
    if system == "3bpa":
        symbols = [row[0] for row in BPA_GEOMETRY]
        return Atoms(symbols, positions=[row[1:] for row in BPA_GEOMETRY])
    if system == "water":
        from ase.build import molecule

        rng = np.random.default_rng(seed)
        spacing = 3.1  # Å: 27 molecules in (9.3 Å)³ is 1.0 g/cm³
        box = Atoms(cell=[3 * spacing] * 3, pbc=True)
        for i in range(3):
            for j in range(3):
                for k in range(3):
                    water = molecule("H2O")
                    water.rotate(rng.uniform(0, 360), rng.normal(size=3))
                    water.translate(spacing * (np.array([i, j, k]) + 0.5) - water.get_center_of_mass())
                    box += water
        return box
    raise DataError(f"unknown built-in system {system!r}; choose one of {', '.join(SYSTEMS)}")


def xtb_calculator(system: str):
    """GFN2-xTB for molecules, GFN1-xTB for periodic water (GFN2 has no periodic support in tblite)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # small systems run ~100x slower with threads
    try:
        from tblite.ase import TBLite
    except ImportError as exc:  # pragma: no cover - tblite is a declared dependency of the study extra
        raise ImportError("built-in xTB datasets need `pip install tblite`") from exc
    return TBLite(method="GFN1-xTB" if system == "water" else "GFN2-xTB", verbosity=0)


def generate(spec: XTBDatasetSpec, progress: Callable[[str], None] = print) -> dict[float, list[Atoms]]:
    """Run Langevin MD at each temperature and return labelled frames per temperature."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    out: dict[float, list[Atoms]] = {}
    for t_index, temperature in enumerate(spec.temperatures):
        rng = np.random.default_rng([spec.seed, t_index])
        atoms = initial_structure(spec.system, spec.seed)
        atoms.calc = xtb_calculator(spec.system)
        atoms.set_constraint(FixCom())
        thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
        dyn = Langevin(
            atoms,
            timestep=spec.timestep_fs * units.fs,
            temperature_K=temperature,
            friction=spec.friction / units.fs,
            fixcm=False,
            rng=rng,
        )
        dyn.run(spec.equilibration_steps)
        frames = []
        start = time.perf_counter()
        for n in range(spec.frames_per_temperature):
            dyn.run(spec.steps_between_frames)
            frame = atoms.copy()
            frame.set_constraint()
            frame.calc = SinglePointCalculator(
                frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces()
            )
            frame.info["temperature_K"] = temperature
            frames.append(frame)
            if (n + 1) % max(1, spec.frames_per_temperature // 4) == 0:
                progress(
                    f"  {spec.system} {temperature:.0f} K: {n + 1}/{spec.frames_per_temperature} frames "
                    f"({time.perf_counter() - start:.0f} s)"
                )
        out[temperature] = frames
    return out


def dataset_files(spec: XTBDatasetSpec, progress: Callable[[str], None] = print) -> dict[str, Path]:
    """extxyz files for ``spec``, generated once and then read from the cache.

    Keys: ``"<T>K"`` per temperature, ``"train"`` (all but the hottest temperature) and ``"test"``
    (the hottest: an out-of-distribution test set).
    """
    import ase.io

    folder = cache_dir() / "datasets" / spec.key()
    temps = sorted(spec.temperatures)
    files = {f"{t:.0f}K": folder / f"{spec.system}_{t:.0f}K.xyz" for t in temps}
    files["train"] = folder / "train.xyz"
    files["test"] = folder / "test.xyz"
    if all(f.is_file() for f in files.values()):
        return files
    progress(f"generating the built-in {spec.system} dataset with xTB (cached in {folder}) ...")
    frames = generate(spec, progress)
    folder.mkdir(parents=True, exist_ok=True)
    groups = {f"{t:.0f}K": frames[t] for t in temps}
    groups["train"] = [a for t in temps[:-1] for a in frames[t]] if len(temps) > 1 else frames[temps[0]]
    groups["test"] = frames[temps[-1]]
    for name, path in files.items():
        tmp = path.with_suffix(".tmp")
        ase.io.write(tmp, groups[name], format="extxyz")
        tmp.replace(path)  # atomic: an interrupted generation never leaves a half file behind
    (folder / "spec.json").write_text(json.dumps(asdict(spec), indent=2))
    return files
