"""Rotational symmetry at inference, and the checks an unconstrained model needs (issue 14).

* :func:`so3_quadrature` — a product Euler-angle grid (uniform in α and γ, Gauss–Legendre in cos β)
  that averages every Wigner-D component of degree ≤ ``order`` exactly; :func:`random_rotations` —
  uniform rotations from a seed.
* :class:`SymmetrizedCalculator` — wraps any ASE calculator:
  E(x) = Σ_k w_k E(R_k x),  F(x) = Σ_k w_k R_kᵀ F(R_k x),
  the inference-time fix of Bigi, Ceriotti et al. (arXiv 2601.16195). It is exactly invariant when the
  model's dependence on orientation is band-limited to ``order``, and approximately otherwise.
* :func:`equivariance_errors` — how far a calculator is from rotation invariance (energy) and
  equivariance (forces), over random rotations.
* :func:`calculator_errors` — energy and force MAE of any calculator (a symmetrized one too) on labelled
  frames.
* :func:`orientation_dependence` — geometry optimisation and vibrations of a molecule, relaxed as given
  and turned: the minima's RMSD and energy gap, and the rigid-body modes' frequencies.
* :func:`loop_work` — ∮ F·dx around a closed loop of one atom. It is zero for conservative forces up to
  round-off, since the periodic trapezoid rule is spectrally exact, and non-zero for a direct force
  head.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from ..rotations import haar_rotations


def euler_zyz(alpha: np.ndarray, beta: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """Rotation matrices R = R_z(α) R_y(β) R_z(γ), shape (..., 3, 3)."""

    def rz(t: np.ndarray) -> np.ndarray:
        c, s = np.cos(t), np.sin(t)
        zero, one = np.zeros_like(t), np.ones_like(t)
        return np.stack(
            [np.stack([c, -s, zero], -1), np.stack([s, c, zero], -1), np.stack([zero, zero, one], -1)], -2
        )

    def ry(t: np.ndarray) -> np.ndarray:
        c, s = np.cos(t), np.sin(t)
        zero, one = np.zeros_like(t), np.ones_like(t)
        return np.stack(
            [np.stack([c, zero, s], -1), np.stack([zero, one, zero], -1), np.stack([-s, zero, c], -1)], -2
        )

    return rz(alpha) @ ry(beta) @ rz(gamma)


def so3_quadrature(order: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotations (K, 3, 3) and weights (K,) summing to 1, exact for Wigner-D degree ≤ ``order``.

    The Haar integral of D^l_{mk}(α, β, γ) = e^{-imα} d^l_{mk}(β) e^{-ikγ} vanishes for l ≥ 1. A uniform
    grid of n = order + 1 angles sums e^{-imα} to zero exactly for 0 < |m| ≤ order. What is left,
    d^l_{00}(β) = P_l(cos β), is integrated exactly by Gauss–Legendre in cos β with n nodes.
    K = (order + 1)³.
    """
    if order < 0:
        raise ValueError(f"order must be ≥ 0, got {order}")
    n = order + 1
    angles = 2 * np.pi * np.arange(n) / n
    nodes, gl_weights = np.polynomial.legendre.leggauss(n)
    a, b, g = np.meshgrid(angles, np.arccos(nodes), angles, indexing="ij")
    w = np.broadcast_to((gl_weights / 2)[None, :, None], a.shape) / n**2
    return euler_zyz(a.ravel(), b.ravel(), g.ravel()), w.ravel().copy()


def random_rotations(count: int, seed: int = 0) -> np.ndarray:
    """``count`` rotations uniform on SO(3) (Haar), reproducible from ``seed``."""
    return haar_rotations(count, generator=torch.Generator().manual_seed(seed)).numpy()


def rotated(atoms: Atoms, rotation: np.ndarray) -> Atoms:
    """``atoms`` rotated by ``rotation`` (positions and cell; labels are not carried)."""
    out = Atoms(numbers=atoms.numbers, positions=atoms.positions @ rotation.T, pbc=atoms.pbc)
    if atoms.cell.rank:
        out.set_cell(atoms.cell.array @ rotation.T)
    return out


class SymmetrizedCalculator(Calculator):
    """Energy, forces and (where the wrapped calculator has it) stress of ``calculator`` averaged over
    rotations: σ(x) = Σ_k w_k R_kᵀ σ(R_k x) R_k.

    ``rotations`` is an int (the order of :func:`so3_quadrature`, default 3: 64 evaluations) or an array
    (K, 3, 3), with ``weights`` (default uniform)."""

    def __init__(self, calculator: Calculator, rotations: int | np.ndarray = 3, weights: Any = None) -> None:
        super().__init__()
        if isinstance(rotations, (int, np.integer)):
            rotations, weights = so3_quadrature(int(rotations))
        self.inner = calculator
        self.rotations = np.asarray(rotations, dtype=np.float64)
        k = len(self.rotations)
        self.weights = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
        inner = list(getattr(calculator, "implemented_properties", []))
        self.implemented_properties = ["energy", "free_energy", "forces"] + (
            ["stress"] if "stress" in inner else []
        )

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        energy, forces, stress = 0.0, np.zeros((len(self.atoms), 3)), np.zeros((3, 3))
        for rotation, weight in zip(self.rotations, self.weights):
            image = rotated(self.atoms, rotation)
            image.calc = self.inner
            energy += weight * image.get_potential_energy()
            forces += weight * image.get_forces() @ rotation  # R^T F(Rx), for row vectors
            if "stress" in properties:
                stress += weight * rotation.T @ image.get_stress(voigt=False) @ rotation
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}
        if "stress" in properties:
            from ase.stress import full_3x3_to_voigt_6_stress

            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)


def equivariance_errors(calculator: Calculator, atoms: Atoms, rotations: int = 16, seed: int = 0) -> dict:
    """Energy spread (meV/atom; std and max − min over rotations) and force error
    mean |R^T F(Rx) − F(x)| (meV/Å) against the unrotated structure."""
    reference = atoms.copy()
    reference.calc = calculator
    e0, f0 = reference.get_potential_energy(), reference.get_forces()
    energies, force_errors = [e0], []
    for rotation in random_rotations(rotations, seed):
        image = rotated(atoms, rotation)
        image.calc = calculator
        energies.append(image.get_potential_energy())
        force_errors.append(np.abs(image.get_forces() @ rotation - f0).mean())
    energies_meV = 1e3 * np.array(energies) / len(atoms)
    return {
        "energy_std": float(np.std(energies_meV)),
        "energy_range": float(np.ptp(energies_meV)),
        "force_error": float(1e3 * np.mean(force_errors)),
        "rotations": rotations,
    }


def calculator_errors(calculator: Calculator, frames: Any) -> dict[str, float]:
    """Energy MAE (meV/atom) and force MAE (meV/Å, over the components of frames with force labels) of
    ``calculator`` on labelled ``frames`` (:class:`mlipopt.data.io.Frames`): how a calculator wrapper,
    e.g. a symmetrized model, scores against the same labels the training metrics use."""
    e_abs, f_abs, components = [], 0.0, 0
    for atoms, energy, forces in zip(frames.atoms, frames.energy, frames.forces):
        image = atoms.copy()
        image.calc = calculator
        e_abs.append(abs(image.get_potential_energy() - float(energy)) / len(atoms))
        if forces is not None:
            f_abs += float(np.abs(image.get_forces() - np.asarray(forces)).sum())
            components += np.asarray(forces).size
    return {
        "e_mae": float(1e3 * np.mean(e_abs)),
        "f_mae": float(1e3 * f_abs / components) if components else float("nan"),
        "frames": len(frames),
    }


def orientation_dependence(
    calculator: Calculator, atoms: Atoms, seed: int = 0, fmax: float = 1e-3, steps: int = 500
) -> dict[str, float]:
    """Geometry optimisation and vibrations, and whether they depend on how the structure is turned.

    ``atoms`` is relaxed (BFGS to ``fmax`` eV/Å) as given and turned by a random rotation. Returned:
    - ``minimum_rmsd_A``: the RMSD between the two minima after the best rotation and translation, zero
      for a rotation-invariant model;
    - ``minimum_energy_meV_atom``: the difference of the two minimum energies;
    - ``rigid_mode_cm1``: the largest of the six smallest |harmonic frequencies| at the first minimum
      (ASE finite differences) — the rigid translations and rotations of a free molecule, zero for a model
      invariant under both, up to finite differences and the residual force (≈ 5 cm⁻¹ for ASE's EMT at
      ``fmax`` = 1e-3 eV/Å, 12 cm⁻¹ at 1e-2). An unconstrained model turns its rotations into spurious
      vibrations;
    - ``converged``: 1.0 when both relaxations reached ``fmax``.
    """
    import tempfile

    from ase.build import minimize_rotation_and_translation
    from ase.vibrations import Vibrations

    from .protocols import relax

    first, ok_first = relax(atoms, calculator, fmax, steps)
    second, ok_second = relax(rotated(atoms, random_rotations(1, seed)[0]), calculator, fmax, steps)
    aligned = second.copy()
    minimize_rotation_and_translation(first, aligned)
    rmsd = float(np.sqrt(np.mean(np.sum((aligned.positions - first.positions) ** 2, axis=1))))
    gap = 1e3 * (second.get_potential_energy() - first.get_potential_energy()) / len(atoms)
    with tempfile.TemporaryDirectory() as cache:
        vibrations = Vibrations(first, name=f"{cache}/vib")
        vibrations.run()
        frequencies = np.sort(np.abs(vibrations.get_frequencies()))  # cm⁻¹; imaginary ones by modulus
    return {
        "minimum_rmsd_A": rmsd,
        "minimum_energy_meV_atom": float(abs(gap)),
        "rigid_mode_cm1": float(frequencies[:6].max()),
        "lowest_vibration_cm1": float(frequencies[6]),
        "converged": float(ok_first and ok_second),
    }


def loop_work(calculator: Calculator, atoms: Atoms, index: int = 0, radius: float = 0.05,
              points: int = 64, normal: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> float:  # fmt: skip
    """Work ∮ F·dx (eV) of moving atom ``index`` once around a circle of ``radius`` (Å) about its
    position, in the plane normal to ``normal``; zero to round-off for conservative forces."""
    n = np.asarray(normal, dtype=np.float64)
    n /= np.linalg.norm(n)
    u = np.cross(n, [1.0, 0.0, 0.0] if abs(n[0]) < 0.9 else [0.0, 1.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(n, u)
    start = atoms.positions[index].copy()
    work = 0.0
    for theta in 2 * np.pi * np.arange(points) / points:
        image = atoms.copy()
        image.positions[index] = start + radius * (np.cos(theta) * u + np.sin(theta) * v)
        image.calc = calculator
        tangent = radius * (-np.sin(theta) * u + np.cos(theta) * v)
        work += float(image.get_forces()[index] @ tangent) * (2 * np.pi / points)
    return work


def nve_energy_drift(
    calculator: Calculator, atoms: Atoms, timestep_fs: float = 0.5, steps: int = 200,
    temperature_K: float = 300.0, seed: int = 0,
) -> dict[str, float]:  # fmt: skip
    """Total-energy drift of velocity-Verlet NVE MD: the slope of E_tot(t) (meV/atom/ps) and its largest
    excursion (meV/atom). For conservative forces the error falls as Δt²; a non-conservative force (a
    direct head) does work that does not vanish with the time step."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    system = atoms.copy()
    system.calc = calculator
    MaxwellBoltzmannDistribution(system, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    Stationary(system)
    energies, times = [], []
    dynamics = VelocityVerlet(system, timestep=timestep_fs * units.fs)

    def record() -> None:
        energies.append(system.get_total_energy())
        times.append(len(times) * timestep_fs * 1e-3)  # ps

    dynamics.attach(record, interval=1)
    dynamics.run(steps)
    energies_meV = 1e3 * (np.array(energies) - energies[0]) / len(system)
    slope = float(np.polyfit(times, energies_meV, 1)[0])
    return {"drift_meV_per_atom_ps": slope, "max_deviation_meV_per_atom": float(np.abs(energies_meV).max())}
