"""Spectra of symmetric matrix-free operators: extremal eigenvalues (ARPACK), the spectral density
(stochastic Lanczos quadrature) and the numbers a reader compares (κ, effective rank).

Extremal eigenvalues come from ``scipy.sparse.linalg.eigsh`` on a ``LinearOperator`` (implicitly
restarted Lanczos, ARPACK). The density needs the Lanczos *tridiagonalisation* itself, which scipy does
not expose: it is the short three-term recurrence below (with full reorthogonalisation, so the Ritz
values are not duplicated by the loss of orthogonality), and the quadrature nodes and weights come from
``scipy.linalg.eigh_tridiagonal``. curvlinops has the same algorithm (Papyan 2020) but needs BackPACK,
which requires torchvision — not installable beside this project's CPU build of torch.

Numbers (all per operator):

* ``top``: the k largest eigenvalues (and ``bottom``: the k smallest, possibly negative);
* ``kappa_top``: λ₁/λ_k — the condition number of the dominant k-dimensional eigenspace, where the stable
  step size and the slow directions among the stiff ones are decided. The full κ = λ_max/λ_min of an
  over-parameterised model is infinite (a large null space), so the small end is *stated*: the k-th
  largest eigenvalue. Liu et al. appendix A's model κ(PH) = κ(H)^{1−α} applies to it unchanged;
* ``effective_rank``: (tr H)² / tr(H²), the participation ratio (how many directions carry curvature);
* ``density``: the Gaussian-broadened spectral density, averaged over random probes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

Matvec = Callable[[torch.Tensor], torch.Tensor]


def as_linear_operator(matvec: Matvec, size: int, dtype: torch.dtype, device: torch.device) -> LinearOperator:
    """A scipy ``LinearOperator`` (float64 numpy) over a torch ``matvec``."""

    def apply(x: np.ndarray) -> np.ndarray:
        v = torch.as_tensor(np.ascontiguousarray(x).reshape(-1), dtype=dtype, device=device)
        return matvec(v).detach().to("cpu", torch.float64).numpy()

    return LinearOperator((size, size), matvec=apply, rmatvec=apply, dtype=np.float64)


def extremal_eigenvalues(
    matvec: Matvec,
    size: int,
    k: int,
    which: str,
    dtype: torch.dtype,
    device: torch.device,
    tol: float = 1e-6,
    seed: int = 0,
) -> np.ndarray:
    """The ``k`` eigenvalues at one end (``which``: "LA" largest, "SA" smallest), descending.

    ARPACK's start vector is drawn from ``seed`` (reproducible). If it stops short of convergence, the
    converged values are returned (fewer than k) rather than failing the analysis.
    """
    k = max(1, min(k, size - 1))
    operator = as_linear_operator(matvec, size, dtype, device)
    v0 = np.random.default_rng(seed).standard_normal(size)
    try:
        values = eigsh(operator, k=k, which=which, tol=tol, v0=v0, return_eigenvectors=False)
    except ArpackNoConvergence as exc:
        values = exc.eigenvalues
    return np.sort(np.asarray(values, dtype=float))[::-1]


def lanczos_tridiagonal(matvec: Matvec, start: torch.Tensor, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Diagonal α and off-diagonal β of the Lanczos tridiagonalisation from ``start`` (normalised),
    fully reorthogonalised; stops early when the Krylov space is exhausted (β ≈ 0)."""
    q = start / start.norm()
    basis = [q]
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(steps):
        w = matvec(basis[-1])
        alpha = float(torch.dot(w, basis[-1]))
        alphas.append(alpha)
        stacked = torch.stack(basis)
        for _ in range(2):  # twice is enough (Kahan): orthogonal to working precision
            w = w - stacked.T @ (stacked @ w)
        beta = float(w.norm())
        if j == steps - 1 or beta < 1e-12 * max(1.0, abs(alpha)):
            break
        betas.append(beta)
        basis.append(w / beta)
    return np.array(alphas), np.array(betas)


@dataclass
class Density:
    """Spectral density on a grid, and the quadrature nodes/weights it was built from."""

    grid: list[float]
    density: list[float]
    nodes: list[list[float]] = field(default_factory=list)
    weights: list[list[float]] = field(default_factory=list)

    def trace_of(self, f: Callable[[np.ndarray], np.ndarray], size: int) -> float:
        """tr f(A) ≈ n · mean over probes of Σ w f(node) (exact for polynomials of degree < 2·steps)."""
        return float(
            size * np.mean([np.sum(np.array(w) * f(np.array(x))) for x, w in zip(self.nodes, self.weights)])
        )


def slq_density(
    matvec: Matvec,
    size: int,
    dtype: torch.dtype,
    device: torch.device,
    probes: int = 3,
    steps: int = 30,
    points: int = 400,
    width: float | None = None,
    seed: int = 0,
) -> Density:
    """Stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017; Ghorbani et al. 2019): for each random
    Rademacher probe, the eigenpairs (θ, u) of the Lanczos tridiagonal give nodes θ and weights u₀²;
    the density is their average, each node broadened by a Gaussian of standard deviation ``width``
    (default: 1 % of the spectral range)."""
    generator = torch.Generator().manual_seed(seed)
    nodes, weights = [], []
    for _ in range(probes):
        probe = (torch.randint(0, 2, (size,), generator=generator) * 2 - 1).to(dtype=dtype, device=device)
        alpha, beta = lanczos_tridiagonal(matvec, probe, steps)
        if len(alpha) == 1:
            theta, vectors = alpha, np.ones((1, 1))
        else:
            theta, vectors = eigh_tridiagonal(alpha, beta)
        nodes.append(theta.tolist())
        weights.append((vectors[0] ** 2).tolist())
    all_nodes = np.concatenate([np.array(n) for n in nodes])
    low, high = float(all_nodes.min()), float(all_nodes.max())
    span = max(high - low, 1e-30 + 1e-12 * max(abs(low), abs(high)))
    sigma = width or 0.01 * span
    grid = np.linspace(low - 5 * sigma, high + 5 * sigma, points)
    density = np.zeros_like(grid)
    for x, w in zip(nodes, weights):
        for node, weight in zip(x, w):
            density += weight * np.exp(-0.5 * ((grid - node) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    return Density(grid.tolist(), (density / probes).tolist(), nodes, weights)


@dataclass
class Spectrum:
    """What is reported for one operator (H, or P^{1/2} H P^{1/2} for a preconditioner P)."""

    label: str
    size: int
    top: list[float]
    bottom: list[float] = field(default_factory=list)
    kappa_top: float | None = None
    effective_rank: float | None = None
    trace: float | None = None
    density: Density | None = None
    products: int = 0
    seconds: float = 0.0
    note: str = ""

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "density"}
        if self.density is not None:
            out["density"] = {"grid": self.density.grid, "density": self.density.density}
        return out


def analyse(
    matvec: Matvec,
    size: int,
    label: str,
    dtype: torch.dtype,
    device: torch.device,
    k: int = 20,
    bottom: bool = False,
    density: bool = True,
    probes: int = 3,
    steps: int = 30,
    counter: Callable[[], int] | None = None,
    seed: int = 0,
    tol: float = 1e-6,
) -> Spectrum:
    """Top-k (and bottom-k) eigenvalues, κ of the top-k eigenspace, effective rank and density."""
    start = time.perf_counter()
    before = counter() if counter else 0
    top = extremal_eigenvalues(matvec, size, k, "LA", dtype, device, seed=seed)
    low = (
        extremal_eigenvalues(matvec, size, k, "SA", dtype, device, seed=seed + 1) if bottom else np.array([])
    )
    spectrum = Spectrum(label, size, top.tolist(), low.tolist())
    if len(top) and top[-1] > 0:
        spectrum.kappa_top = float(top[0] / top[-1])
    if density:
        spectrum.density = slq_density(matvec, size, dtype, device, probes, steps, seed=seed + 2)
        trace = spectrum.density.trace_of(lambda x: x, size)
        square = spectrum.density.trace_of(lambda x: x**2, size)
        spectrum.trace = trace
        spectrum.effective_rank = trace**2 / square if square > 0 else None
    spectrum.products = (counter() - before) if counter else 0
    spectrum.seconds = time.perf_counter() - start
    return spectrum
