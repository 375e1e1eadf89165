"""Batched linear algebra shared by the matrix optimizers.

Every routine takes a stack of blocks ``(B, ...)`` so that blocks of equal shape are processed in
one call (the main speed lever on CPU and GPU alike). The eigen/QR helpers never
raise: a failed or non-finite factorisation keeps the previous basis for that block and reports
how many blocks failed, so a bad batch cannot crash a training run.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Quintic Newton–Schulz coefficients of Jordan et al. (2024), Harari et al. algorithm 1.
NS_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)
NS_EPS = 1e-7


def newton_schulz(x: Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> Tensor:
    """Approximate the orthogonal polar factor ``U Vᵀ`` of each matrix in ``x`` (shape ``(..., m, n)``).

    Quintic iteration ``X ← aX + (bA + cA²)X`` with ``A = XXᵀ`` after Frobenius normalisation,
    run in ``dtype`` (float32 by default; bfloat16 is an opt-in for CUDA). As in Muon, the result
    is ``U S' Vᵀ`` with ``S'`` in roughly ``[0.7, 1.2]`` rather than exactly the polar factor.
    Returns a tensor in ``x.dtype``.
    """
    a, b, c = NS_COEFFICIENTS
    out_dtype = x.dtype
    X = x.to(dtype)
    transposed = X.size(-2) > X.size(-1)
    if transposed:
        X = X.mT
    X = X / (torch.linalg.matrix_norm(X, keepdim=True) + NS_EPS)
    for _ in range(steps):
        A = X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c) if A.ndim == 3 else b * A + c * (A @ A)
        X = torch.baddbmm(X, B, X, beta=a) if X.ndim == 3 else a * X + B @ X
    if transposed:
        X = X.mT
    return X.to(out_dtype)


def singular_value_power(u: Tensor, rho: float) -> Tensor:
    """Return ``P Σ^ρ Rᵀ`` for ``u = P Σ Rᵀ`` (batched, SOAP-Muon algorithm 2 line 14).

    Computed by reduced SVD in at least float32; an SVD failure falls back to Newton–Schulz (ρ=0),
    which shares the singular vectors, rather than crashing training.
    """
    work = u if u.dtype in (torch.float32, torch.float64) else u.float()
    try:
        P, S, Rh = torch.linalg.svd(work, full_matrices=False)
    except RuntimeError:  # LAPACK non-convergence on a pathological block
        return newton_schulz(u)
    return ((P * S.pow(rho).unsqueeze(-2)) @ Rh).to(u.dtype)


def eigh(mat: Tensor) -> Tensor:
    """Eigenvectors of a stack of symmetric matrices, columns sorted by descending eigenvalue.

    Wrapped so that tests can inject a failure; see :func:`eigenbasis`.
    """
    _, q = torch.linalg.eigh(mat)
    return q.flip(-1)


def qr(mat: Tensor) -> Tensor:
    """Q factor of a stack of matrices (wrapped for failure injection in tests)."""
    q, _ = torch.linalg.qr(mat)
    return q


def _finite_per_block(x: Tensor) -> Tensor:
    return torch.isfinite(x).flatten(1).all(dim=1)


def eigenbasis(gram: Tensor, previous: Tensor | None) -> tuple[Tensor, int]:
    """Eigenbasis of each Gram matrix in ``gram`` ``(B, d, d)``; returns ``(Q, n_failed)``.

    Tries one batched call; if it raises, retries block by block. A block whose factorisation
    fails or is non-finite keeps ``previous`` (or the identity when there is none).
    """
    fallback = previous if previous is not None else _identity_like(gram)
    work = gram if gram.dtype in (torch.float32, torch.float64) else gram.float()
    try:
        q = eigh(work).to(gram.dtype)
    except RuntimeError:
        q = torch.empty_like(gram)
        for i in range(gram.shape[0]):
            try:
                q[i] = eigh(work[i : i + 1])[0].to(gram.dtype)
            except RuntimeError:
                q[i] = float("nan")
    ok = _finite_per_block(q) & _finite_per_block(gram)
    n_failed = int((~ok).sum())
    if n_failed:
        q = torch.where(ok.view(-1, 1, 1), q, fallback)
    return q, n_failed


def eigenvalue_estimates(gram: Tensor, basis: Tensor) -> Tensor:
    """``diag(Qᵀ G Q)`` per block ``(B, d)``: the eigenvalues when ``Q`` is G's eigenbasis."""
    return (basis * (gram @ basis)).sum(dim=-2)


def null_directions(estimates: Tensor, tolerance: float | None = None) -> Tensor:
    """Columns ``(B, d)`` whose Gram eigenvalue is zero up to rounding: ``λ ≤ 10·d·ε·λ_max``, or
    ``λ ≤ tolerance·λ_max`` when a relative ``tolerance`` is given.

    A Gram matrix ``XᵀX`` computed in floating point carries errors of order ``d·ε·‖X‖²`` (ε of the
    dtype), so smaller eigenvalues cannot be told from zero and their eigenvectors are arbitrary.
    An all-zero Gram matrix (a block that never had a gradient) is null in every direction.
    """
    d = estimates.shape[-1]
    tol = 10.0 * d * torch.finfo(estimates.dtype).eps if tolerance is None else tolerance
    top = estimates.amax(dim=-1, keepdim=True).clamp_min(0.0)
    return estimates <= tol * top


def power_iteration_basis(
    gram: Tensor, basis: Tensor, last: Tensor | None = None
) -> tuple[Tensor, Tensor, int]:
    """One power-iteration step with QR refresh of an eigenbasis (official SOAP's refresh).

    Columns are first re-sorted by the estimated eigenvalues ``diag(Qᵀ G Q)`` (descending); the
    permutation is returned so that the caller can re-sort the second moment to match. Columns
    flagged in ``last`` ``(B, d)`` (null directions, whose estimates depend on an arbitrary basis)
    are sorted after all others, in their index order.
    Returns ``(Q_new, order (B, d), n_failed)``. A failed block keeps ``basis`` and the identity order.
    """
    prod = gram @ basis
    est_eig = (basis * prod).sum(dim=-2)
    if last is not None:
        est_eig = est_eig.masked_fill(last, float("-inf"))
    order = torch.argsort(est_eig, dim=-1, descending=True, stable=True)
    power = torch.gather(prod, -1, order.unsqueeze(-2).expand_as(prod))
    # QR in at least float32: orthogonality of Q matters more than speed (as in official SOAP).
    work = power if power.dtype in (torch.float32, torch.float64) else power.float()
    try:
        q = qr(work).to(basis.dtype)
    except RuntimeError:
        q = torch.full_like(basis, float("nan"))
        for i in range(basis.shape[0]):
            try:
                q[i] = qr(work[i : i + 1])[0].to(basis.dtype)
            except RuntimeError:
                pass
    ok = _finite_per_block(q) & _finite_per_block(gram)
    n_failed = int((~ok).sum())
    if n_failed:
        q = torch.where(ok.view(-1, 1, 1), q, basis)
        identity_order = torch.arange(order.shape[-1], device=order.device).expand_as(order)
        order = torch.where(ok.view(-1, 1), order, identity_order)
    return q, order, n_failed


def ritz_tail(
    gram: Tensor, basis: Tensor, counts: Tensor, tolerance: float | None = None
) -> tuple[Tensor, int]:
    """Rotate the last ``counts[b]`` columns of each orthonormal ``basis[b]`` into the Ritz vectors of
    ``gram[b]`` on their span (Rayleigh–Ritz: the eigenvectors of ``Wᵀ G W`` for those columns ``W``).

    A refresh that started from a basis with null columns leaves them last (power iteration cannot
    carry arbitrary columns to meaningful ones), and after QR their span is the orthogonal complement
    of the power iterate of the determined columns — itself determined. Resolving only that span
    costs an ``eigh`` of ``k × k`` instead of ``d × d`` (``k`` = the null count), and the result does
    not depend on which null basis the previous ``eigh`` returned. Columns come out by descending Ritz
    value. Rows of equal ``k`` are batched.

    Where the span is still null — its whole energy ``trace(Wᵀ G W) = trace(G) − trace(Hᵀ G H)`` (``H``
    the other columns) is at most the null threshold of :func:`null_directions` — every Ritz value is
    null too and no basis of it is preferred: the columns are kept as they are, and neither the
    ``k × k`` product nor its ``eigh`` is computed (the common case in training: gradients of a tall
    block fill few new directions per period). Returns ``(basis, n_failed)``; a failed block keeps its
    columns.
    """
    d = basis.shape[-1]
    out = basis.clone()
    n_failed = 0
    tol = 10.0 * d * torch.finfo(gram.dtype).eps if tolerance is None else tolerance
    for k in sorted({int(c) for c in counts.tolist()} - {0}):
        rows = (counts == k).nonzero().squeeze(-1)
        g = gram.index_select(0, rows)
        b = basis.index_select(0, rows)
        if k < d:
            head = b[..., : d - k]
            head_energy = (head * (g @ head)).sum(dim=-2)
            tail_energy = torch.diagonal(g, dim1=-2, dim2=-1).sum(-1) - head_energy.sum(-1)
            live = tail_energy > tol * head_energy.amax(dim=-1).clamp_min(0.0)
            if not bool(live.any()):
                continue
            rows, g, b = rows[live], g[live], b[live]
        tail = b[..., d - k :]
        compressed = tail.mT @ (g @ tail)
        rotation, failed = eigenbasis((compressed + compressed.mT) / 2, None)
        n_failed += failed
        out[rows, :, d - k :] = tail @ rotation
    return out, n_failed


def _identity_like(mat: Tensor) -> Tensor:
    eye = torch.eye(mat.shape[-1], dtype=mat.dtype, device=mat.device)
    return eye.expand_as(mat).clone()
