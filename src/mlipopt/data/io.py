"""Reading labelled frames from extxyz (or any ASE-readable file) and checking them.

Every problem is reported as a :class:`DataError` naming the file, the frame and what is wrong, so a
bad frame in a 10,000-frame file is found from the message alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import ase
import ase.data
import numpy as np

#: Labels beyond these are refused as unphysical (a unit mix-up or a corrupted file), naming the frame.
#: The largest forces in reactive DFT data are O(100) eV/Å; the largest total energies per atom are
#: O(10⁴) eV (heavy elements, all-electron).
MAX_FORCE = 1e4  # eV/Å, per component
MAX_ENERGY_PER_ATOM = 1e6  # eV


class DataError(ValueError):
    """A dataset cannot be used: unreadable file, missing or malformed labels, unknown elements."""


@dataclass
class Frames:
    """Structures with their energy (eV) and force (eV/Å) labels.

    ``forces[i]`` is ``None`` when frame ``i`` carries no force label in the file.
    """

    atoms: list[ase.Atoms]
    energy: np.ndarray
    forces: list[np.ndarray | None]
    source: str = "<memory>"
    index: list[int] = field(default_factory=list)  # frame numbers in ``source``

    def __post_init__(self) -> None:
        if not self.index:
            self.index = list(range(len(self.atoms)))

    def __len__(self) -> int:
        return len(self.atoms)

    def subset(self, indices: Sequence[int]) -> Frames:
        return Frames(
            [self.atoms[i] for i in indices],
            self.energy[np.asarray(indices, dtype=int)],
            [self.forces[i] for i in indices],
            self.source,
            [self.index[i] for i in indices],
        )

    @property
    def n_atoms(self) -> np.ndarray:
        return np.array([len(a) for a in self.atoms])

    def elements(self) -> list[str]:
        """Chemical symbols present, sorted by atomic number."""
        numbers = sorted({int(z) for a in self.atoms for z in a.numbers})
        return [ase.data.chemical_symbols[z] for z in numbers]

    @classmethod
    def from_atoms(cls, atoms: Iterable[ase.Atoms], source: str = "<memory>", **keys: str) -> Frames:
        """Labelled frames from Atoms carrying labels (in ``info``/``arrays`` or a calculator)."""
        atoms = list(atoms)
        energies, forces = [], []
        for i, a in enumerate(atoms):
            e, f = _labels(a, source, i, keys.get("energy_key", "energy"), keys.get("forces_key", "forces"))
            energies.append(e)
            forces.append(f)
        frames = cls(atoms, np.array(energies, dtype=np.float64), forces, source)
        frames.check()
        return frames

    def check(self, type_names: Sequence[str] | None = None) -> None:
        """Raise :class:`DataError` for NaN/inf labels or positions, or elements outside ``type_names``."""
        allowed = set(type_names) if type_names is not None else None
        for i, (a, e, f) in enumerate(zip(self.atoms, self.energy, self.forces)):
            where = f"{self.source}: frame {self.index[i]}"
            if len(a) == 0:
                raise DataError(f"{where}: has no atoms")
            if not np.isfinite(e):
                raise DataError(f"{where}: energy is {e}")
            if not np.all(np.isfinite(a.positions)):
                raise DataError(f"{where}: positions contain NaN or inf")
            if f is not None and not np.all(np.isfinite(f)):
                bad = int(np.argwhere(~np.isfinite(f))[0, 0])
                raise DataError(f"{where}: forces contain NaN or inf (atom {bad})")
            if f is not None and np.abs(f).max(initial=0.0) > MAX_FORCE:
                bad = int(np.argmax(np.abs(f).max(axis=1)))
                raise DataError(
                    f"{where}: force {np.abs(f[bad]).max():.3g} eV/Å on atom {bad} is not physical "
                    f"(limit {MAX_FORCE:g} eV/Å); check the file's units and labels"
                )
            if abs(e) / len(a) > MAX_ENERGY_PER_ATOM:
                raise DataError(
                    f"{where}: energy {e:.6g} eV ({e / len(a):.3g} eV/atom) is not physical "
                    f"(limit {MAX_ENERGY_PER_ATOM:g} eV/atom); check the file's units and labels"
                )
            if allowed is not None:
                unknown = sorted(set(a.get_chemical_symbols()) - allowed)
                if unknown:
                    raise DataError(
                        f"{where}: element(s) {', '.join(unknown)} not known to the model "
                        f"(its types are {', '.join(type_names)})"
                    )


def _labels(
    atoms: ase.Atoms, source: str, i: int, energy_key: str, forces_key: str
) -> tuple[float, np.ndarray | None]:
    """Energy and forces of one frame from ``info``/``arrays``, else from an attached calculator."""
    where = f"{source}: frame {i}"
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    if energy_key in atoms.info:
        energy = atoms.info[energy_key]
    elif energy_key in results:
        energy = results[energy_key]
    else:
        found = sorted(set(atoms.info) | set(results))
        raise DataError(
            f"{where}: no energy under key {energy_key!r} (keys found: {', '.join(found) or 'none'}); "
            "set data.energy_key"
        )
    try:
        energy = float(np.asarray(energy).reshape(()))
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: energy {energy!r} is not a single number") from exc
    forces = atoms.arrays.get(forces_key, results.get(forces_key))
    if forces is not None:
        forces = np.asarray(forces, dtype=np.float64)
        if forces.shape != (len(atoms), 3):
            raise DataError(f"{where}: forces have shape {forces.shape}, expected ({len(atoms)}, 3)")
    return energy, forces


def read_frames(
    path: str | Path,
    energy_key: str = "energy",
    forces_key: str = "forces",
    index: str = ":",
    require_forces: bool = True,
) -> Frames:
    """Read and check labelled frames from ``path`` (extxyz or any format ASE reads).

    ``energy_key``/``forces_key`` name the labels (e.g. ``REF_energy``). With ``require_forces`` every
    frame must carry forces; force *masks* for sparse supervision are applied later, not here.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    import ase.io  # ~0.5 s: imported when a file is read, not when a config is checked

    atoms: list[ase.Atoms] = []
    try:
        for a in ase.io.iread(str(path), index=index):
            atoms.append(a)
    except Exception as exc:  # ASE raises many types (XYZError, ValueError, IndexError, KeyError...)
        located = locate_xyz_error(path) if path.suffix in (".xyz", ".extxyz") else None
        raise DataError(
            located or f"{path}: cannot parse frame {len(atoms)}: {type(exc).__name__}: {exc}"
        ) from None
    if not atoms:
        raise DataError(f"{path}: contains no frames")
    frames = Frames.from_atoms(atoms, source=str(path), energy_key=energy_key, forces_key=forces_key)
    if require_forces:
        missing = [i for i, f in enumerate(frames.forces) if f is None]
        if missing:
            raise DataError(
                f"{path}: frame {missing[0]} has no forces under key {forces_key!r} "
                f"({len(missing)} of {len(frames)} frames lack them); set data.forces_key"
            )
    return frames


def locate_xyz_error(path: Path) -> str | None:
    """Find the frame of an (ext)xyz file whose atom count does not match its atom lines.

    ASE reads ``count`` lines after a frame's header, so a count that is too small makes the *next*
    frame fail to parse and a count that is too large swallows the next header; this pass checks each
    frame's lines against its declared count and column layout to name the frame at fault.
    Returns a message, or None when the layout looks consistent (the error lies elsewhere).
    """
    lines = path.read_text(errors="replace").splitlines()
    line, frame, previous = 0, 0, 0
    while line < len(lines):
        if not lines[line].strip():
            line += 1
            continue
        try:
            count = int(lines[line].split()[0])
        except ValueError:
            if not frame:
                return f"{path}: line {line + 1} is not an atom count: {lines[line][:60]!r}"
            return (
                f"{path}: frame {frame - 1} declares {previous} atoms but lists more: line {line + 1} "
                f"holds an atom ({lines[line][:40]!r}) where the next frame's atom count should be"
            )
        body = lines[line + 2 : line + 2 + count]
        if len(body) < count:
            return f"{path}: frame {frame} declares {count} atoms but the file ends after {len(body)}"
        widths = {len(text.split()) for text in body}
        if len(widths) > 1 or any(text.split() and _is_int(text.split()[0]) for text in body[-1:]):
            return (
                f"{path}: frame {frame} (line {line + 1}) declares {count} atoms but its atom lines are "
                "inconsistent — it lists fewer atoms than declared, or a line is malformed"
            )
        line += 2 + count
        frame += 1
        previous = count
    return None


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's content (cached per path, size and modification time)."""
    import hashlib

    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]
