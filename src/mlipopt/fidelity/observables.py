"""Observables of a trajectory or a structure, each with the uncertainty a comparison needs.

Built on the field's libraries: ASE's ``get_rdf`` for periodic g(r), ``scipy.stats.linregress`` for the
MSD and Arrhenius fits (slope and its standard error), phonopy for phonons, ASE's stress for elastic
constants. For molecules, where g(r) has no meaningful density, the pair-distance distribution (a
normalised histogram of all interatomic distances of the chosen element pair) plays the role of g(r).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms, units
from scipy import stats

BOLTZMANN_EV = units.kB  # eV/K


def rdf(frames: Sequence[Atoms], rmax: float, nbins: int = 100, elements: tuple[str, str] | None = None):
    """Periodic (partial) radial distribution function averaged over frames; returns (r, g)."""
    from ase.geometry.rdf import get_rdf

    g_sum = None
    for atoms in frames:
        g, r = get_rdf(atoms, rmax, nbins, elements=elements)
        g_sum = g if g_sum is None else g_sum + g
    return r, g_sum / len(frames)


def distance_distribution(
    frames: Sequence[Atoms], rmax: float, nbins: int = 100, elements: tuple[str, str] | None = None
):
    """Normalised histogram p(r) of interatomic distances (∫p dr = 1) over frames; returns (r, p).

    The molecular counterpart of g(r): intramolecular structure without a density to normalise by.
    """
    edges = np.linspace(0.0, rmax, nbins + 1)
    counts = np.zeros(nbins)
    for atoms in frames:
        d = atoms.get_all_distances()
        symbols = np.array(atoms.get_chemical_symbols())
        i, j = np.triu_indices(len(atoms), k=1)
        if elements is not None:
            a, b = elements
            keep = ((symbols[i] == a) & (symbols[j] == b)) | ((symbols[i] == b) & (symbols[j] == a))
            i, j = i[keep], j[keep]
        counts += np.histogram(d[i, j], bins=edges)[0]
    width = edges[1] - edges[0]
    total = counts.sum()
    return 0.5 * (edges[1:] + edges[:-1]), counts / (total * width) if total else counts


def integrated_absolute_difference(r: np.ndarray, g: np.ndarray, g_ref: np.ndarray) -> float:
    """∫|g(r) − g_ref(r)| dr (Harari et al.'s RDF error), by the trapezoidal rule."""
    return float(np.trapezoid(np.abs(np.asarray(g) - np.asarray(g_ref)), r))


def mean_squared_displacement(positions: np.ndarray, max_lag: int | None = None, step: int = 1) -> np.ndarray:
    """MSD(τ) averaged over atoms and time origins from unwrapped positions of shape (T, N, 3), in Å²."""
    positions = np.asarray(positions, dtype=float)
    n = len(positions)
    max_lag = max_lag or n // 2
    out = np.zeros(max_lag + 1)
    for lag in range(1, max_lag + 1):
        d = positions[lag::step] - positions[: n - lag : step]
        out[lag] = float(np.mean(np.sum(d * d, axis=-1)))
    return out


@dataclass
class Diffusion:
    D: float  # Å²/ps
    D_err: float  # standard error from the linear fit
    loglog_slope: float  # ≈ 1 in the diffusive regime
    fit_range: tuple[float, float]  # ps


def diffusion_coefficient(
    lag_ps: np.ndarray, msd: np.ndarray, fit_range: tuple[float, float] = (0.3, 0.9)
) -> Diffusion:
    """D from MSD = 6 D τ + c on the fractions ``fit_range`` of the lag window (the diffusive regime).

    Also returns the log-log slope there: about 1 if the regime is diffusive, 2 if still ballistic.
    """
    lag_ps, msd = np.asarray(lag_ps, float), np.asarray(msd, float)
    lo, hi = (int(f * (len(lag_ps) - 1)) for f in fit_range)
    lo = max(lo, 1)
    fit = stats.linregress(lag_ps[lo : hi + 1], msd[lo : hi + 1])
    log_fit = stats.linregress(np.log(lag_ps[lo : hi + 1]), np.log(np.maximum(msd[lo : hi + 1], 1e-300)))
    return Diffusion(
        fit.slope / 6, fit.stderr / 6, float(log_fit.slope), (float(lag_ps[lo]), float(lag_ps[hi]))
    )


@dataclass
class Arrhenius:
    Ea: float  # eV
    Ea_err: float
    D0: float  # prefactor, units of D


def arrhenius_fit(
    temperatures_K: Sequence[float], D: Sequence[float], D_err: Sequence[float] | None = None
) -> Arrhenius:
    """E_a from ln D = ln D0 − E_a / (k_B T) by (weighted) least squares, with its standard error."""
    x = 1.0 / (BOLTZMANN_EV * np.asarray(temperatures_K, float))
    y = np.log(np.asarray(D, float))
    if D_err is None:
        fit = stats.linregress(x, y)
        return Arrhenius(-fit.slope, fit.stderr, float(np.exp(fit.intercept)))
    sigma = np.asarray(D_err, float) / np.asarray(D, float)  # error of ln D
    coef, cov = np.polyfit(x, y, 1, w=1 / sigma, cov="unscaled")
    return Arrhenius(-coef[0], float(np.sqrt(cov[0, 0])), float(np.exp(coef[1])))


def energy_drift(times_ps: np.ndarray, total_energy_eV: np.ndarray, n_atoms: int) -> float:
    """Linear drift of the NVE total energy in meV/atom/ps."""
    return float(1e3 * stats.linregress(times_ps, np.asarray(total_energy_eV) / n_atoms).slope)


def elastic_constants(atoms: Atoms, strain: float = 0.005) -> np.ndarray:
    """6×6 elastic tensor (Voigt, GPa) from central differences of ASE's stress under ± strain.

    ``atoms`` must carry its calculator; positions are scaled with the cell (no internal relaxation:
    exact for monatomic Bravais lattices such as fcc metals, an approximation otherwise).
    """
    voigt = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    cell0 = atoms.cell.array.copy()
    C = np.zeros((6, 6))
    for j, (a, b) in enumerate(voigt):
        stresses = []
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            value = sign * strain if a == b else sign * strain / 2  # engineering shear strain
            eps[a, b] = eps[b, a] = value
            strained = atoms.copy()
            strained.calc = atoms.calc
            strained.set_cell(cell0 @ (np.eye(3) + eps), scale_atoms=True)
            stresses.append(strained.get_stress(voigt=True))
        C[:, j] = (stresses[0] - stresses[1]) / (2 * strain)
    return C / units.GPa


def bulk_modulus_from_elastic(C: np.ndarray) -> float:
    """Voigt bulk modulus (GPa): (C11 + C22 + C33 + 2 (C12 + C13 + C23)) / 9."""
    return float((C[0, 0] + C[1, 1] + C[2, 2] + 2 * (C[0, 1] + C[0, 2] + C[1, 2])) / 9)


def _phonopy(atoms: Atoms, supercell: int, displacement: float):
    """A phonopy object with force constants from ``atoms.calc`` (finite displacements)."""
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms
    from phonopy.structure.cells import PrimitiveMatrixAutoDefaultWarning

    unit = PhonopyAtoms(
        symbols=atoms.get_chemical_symbols(),
        cell=atoms.cell.array,
        scaled_positions=atoms.get_scaled_positions(),
    )
    # q-points refer to the primitive cell phonopy finds ("auto"), whatever cell the user passes; the
    # warning phonopy 4 gives for that choice (v3 used the identity) is expected here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrimitiveMatrixAutoDefaultWarning)
        phonon = Phonopy(unit, supercell_matrix=np.eye(3, dtype=int) * supercell, primitive_matrix="auto")
    phonon.generate_displacements(distance=displacement)
    forces = []
    for displaced in phonon.supercells_with_displacements:
        sc = Atoms(
            displaced.symbols, cell=displaced.cell, scaled_positions=displaced.scaled_positions, pbc=True
        )
        sc.calc = atoms.calc
        forces.append(sc.get_forces())
    phonon.forces = np.array(forces)
    phonon.produce_force_constants()
    return phonon


#: A path through the Brillouin zone in reduced coordinates of the primitive reciprocal lattice
#: (Γ–X–L–Γ for fcc; a generic path for other lattices).
DEFAULT_PATH = [("Γ", (0, 0, 0)), ("X", (0.5, 0, 0.5)), ("L", (0.5, 0.5, 0.5)), ("Γ", (0, 0, 0))]


def phonon_frequencies(
    atoms: Atoms, supercell: int = 2, qpoints: np.ndarray | None = None, displacement: float = 0.01
) -> np.ndarray:
    """Phonon frequencies (THz) at ``qpoints`` (reduced coordinates; default Γ, X, L) via phonopy."""
    phonon = _phonopy(atoms, supercell, displacement)
    q = np.array([p for _, p in DEFAULT_PATH[:3]]) if qpoints is None else np.asarray(qpoints)
    phonon.run_qpoints(q)
    return phonon.qpoints.frequencies


@dataclass
class PhononBands:
    distance: np.ndarray  # path coordinate
    frequencies: np.ndarray  # (points, branches), THz
    ticks: list[tuple[float, str]]
    dos_frequencies: np.ndarray
    dos: np.ndarray


def phonon_bands(atoms: Atoms, supercell: int = 2, points: int = 40, mesh: int = 12) -> PhononBands:
    """Band structure along :data:`DEFAULT_PATH` and total DOS on a ``mesh``³ grid (phonopy)."""
    phonon = _phonopy(atoms, supercell, 0.01)
    segments, ticks, start = [], [(0.0, DEFAULT_PATH[0][0])], 0.0
    recip = np.linalg.inv(phonon.primitive.cell).T  # reciprocal of the primitive cell (no 2π)
    distance = []
    for (_, a), (label, b) in zip(DEFAULT_PATH[:-1], DEFAULT_PATH[1:]):
        q = np.linspace(a, b, points)
        length = float(np.linalg.norm((np.array(b) - np.array(a)) @ recip))
        segments.append(q)
        distance.append(start + np.linspace(0, length, points))
        start += length
        ticks.append((start, label))
    phonon.run_qpoints(np.concatenate(segments))
    phonon.run_mesh([mesh] * 3, is_gamma_center=True)
    phonon.run_total_dos()
    dos = phonon.total_dos
    return PhononBands(
        np.concatenate(distance), phonon.qpoints.frequencies, ticks, dos.frequency_points, dos.dos
    )
