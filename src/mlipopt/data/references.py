"""Per-element reference energies E0: from isolated-atom calculations or a least-squares fit.

A model learns the energy *relative* to Σ_i E0(Z_i); without this the network would have to output
thousands of eV per atom (3BPA: about −650 eV/atom).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import DataError, Frames, read_frames


def isolated_atom_energies(path: str | Path, energy_key: str = "energy") -> dict[str, float]:
    """E0 per element from a file of single-atom frames (e.g. ``iso_atoms.xyz``)."""
    frames = read_frames(path, energy_key=energy_key, require_forces=False)
    energies: dict[str, float] = {}
    for i, a in enumerate(frames.atoms):
        if len(a) != 1:
            raise DataError(f"{path}: frame {i} has {len(a)} atoms; isolated-atom frames hold exactly one")
        energies[a.get_chemical_symbols()[0]] = float(frames.energy[i])
    return energies


def composition_matrix(frames: Frames, elements: list[str]) -> np.ndarray:
    """Counts ``c_nZ`` of element Z in frame n, shape ``(len(frames), len(elements))``."""
    column = {el: j for j, el in enumerate(elements)}
    counts = np.zeros((len(frames), len(elements)))
    for n, a in enumerate(frames.atoms):
        for symbol in a.get_chemical_symbols():
            if symbol not in column:
                raise DataError(f"{frames.source}: frame {frames.index[n]} holds {symbol}, not in {elements}")
            counts[n, column[symbol]] += 1
    return counts


def least_squares_per_element(
    counts: np.ndarray, energies: np.ndarray, elements: list[str]
) -> dict[str, float]:
    """Per-element values x minimising ‖counts·x − energies‖² (minimum norm when counts are collinear)."""
    solution, *_ = np.linalg.lstsq(counts, np.asarray(energies, dtype=np.float64), rcond=None)
    return {el: float(solution[j]) for j, el in enumerate(elements)}


def fit_energy_references(frames: Frames, elements: list[str] | None = None) -> dict[str, float]:
    """E0 per element minimising Σ_n (E_n − Σ_Z c_nZ E0_Z)² over ``frames`` (c_nZ: count of Z in frame n).

    With a single composition (one molecule's MD) the counts are collinear; the minimum-norm solution is
    returned, which still makes the residual energies zero-mean.
    """
    elements = elements or frames.elements()
    return least_squares_per_element(composition_matrix(frames, elements), frames.energy, elements)


def reference_energy(frames: Frames, e0: dict[str, float]) -> np.ndarray:
    """Σ_i E0(Z_i) for every frame."""
    missing = sorted(set(frames.elements()) - set(e0))
    if missing:
        raise DataError(f"no reference energy for element(s) {', '.join(missing)} (have {', '.join(e0)})")
    return np.array([sum(e0[s] for s in a.get_chemical_symbols()) for a in frames.atoms])
