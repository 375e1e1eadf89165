"""Batched linear algebra shared by the matrix optimizers.

Every routine takes a stack of blocks ``(B, ...)`` so that blocks of equal shape are processed in
one call (the main speed lever on CPU and GPU alike). The eigen/QR helpers never
raise: a failed or non-finite factorisation keeps the previous basis for that block and reports
how many blocks failed, so a bad batch cannot crash a training run.
"""

from __future__ import annotations

from collections.abc import Callable

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
    """Whether each block of ``x`` is finite, from one reduction per block (a NaN or inf entry makes the
    sum non-finite; a sum that overflows flags the block too, which only keeps its previous basis):
    ``isfinite`` over every entry of the ``d × d`` bases cost a tenth of a refresh on nequip-seed001."""
    return torch.isfinite(x.sum(dim=tuple(range(1, x.ndim))))


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
    top = estimates.amax(dim=-1, keepdim=True).clamp_min(0.0)
    return estimates <= null_threshold(estimates.shape[-1], estimates.dtype, tolerance) * top


def null_modes(nulls: list[Tensor | None]) -> tuple[bool, ...]:
    """Per mode, whether any block has a null direction there (reads the flags back to the host)."""
    return tuple(n is not None and bool(n.any()) for n in nulls)


def null_threshold(d: int, dtype: torch.dtype, tolerance: float | None = None) -> float:
    """The relative eigenvalue ``λ/λ_max`` at or below which a direction is null: ``tolerance``, or
    ``10·d·ε`` of ``dtype`` when none is given (see :func:`null_directions`)."""
    return 10.0 * d * torch.finfo(dtype).eps if tolerance is None else tolerance


#: Null counts from which the live part of a complement is found by a pivoted Cholesky factor
#: (:func:`_live_complement`) rather than by Rayleigh–Ritz on the whole complement. Below it the
#: Rayleigh–Ritz products and ``eigh`` are cheaper than the factor's Python loop of one batched step per
#: live direction: on allegro-seed001 (blocks of 8–128 rows) the isotropic refresh step cost 68 ms with the
#: factor everywhere and 35 ms from 256, on nequip-seed001 (nine 1024-row blocks) it changed nothing.
LIVE_COMPLEMENT_MIN = 256


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


def qr_complete(mat: Tensor) -> Tensor:
    """Complete Q factor ``(…, d, d)`` of a stack of tall matrices ``(…, d, r)`` (wrapped for tests)."""
    q, _ = torch.linalg.qr(mat, mode="complete")
    return q


def isotropic_refresh(
    gram: Tensor, basis: Tensor, null: Tensor, tolerance: float | None = None
) -> tuple[Tensor, Tensor, Tensor, int]:
    """A basis refresh under the isotropic null-space rule; returns ``(Q_new, order, null_new, n_failed)``.

    Blocks without null columns get official SOAP's refresh (:func:`power_iteration_basis`). In a block
    with ``k`` null columns (``null`` ``(B, d)``) those columns are arbitrary, so they are not iterated:
    the ``r = d − k`` determined columns are sorted by their eigenvalue estimates and power-iterated,
    and the complete QR of that ``d × r`` iterate gives the new determined columns and, as its other
    ``k`` columns, a basis of their orthogonal complement — a span that depends on no arbitrary choice.
    That costs ``O(d² r)`` instead of ``O(d³)``. If the complement carries Gram energy above the null
    threshold (``trace(G)`` minus the determined columns' share), it is resolved by Rayleigh–Ritz
    (``eigh`` of ``Wᵀ G W``, ``k × k``); otherwise all of it is null and no basis of it is preferred.
    ``order`` lists the old columns in their new positions (determined ones by estimate, then the null
    ones), for re-sorting the second moment. The null flags of the new basis come with it, without
    another ``d³`` product. A block whose factorisation fails keeps its basis, order and flags.
    """
    d = basis.shape[-1]
    determined = d - null.sum(dim=-1)
    # three kinds of block, each refreshed in one batched call whatever their ranks (one call per rank
    # cost 1.6–4× on buckets whose blocks differ in rank, as most buckets of a real model's do)
    # 2 full rank; 1 partial, or a zero Gram matrix (nothing to resolve: it keeps its basis); 0 no
    # determined column but energy (solved by eigh)
    empty = torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1) <= 0
    kind = torch.where(determined == d, 2, ((determined > 0) | empty).long())
    kinds = sorted({int(x) for x in kind.tolist()})
    whole = len(kinds) == 1  # no row copies
    if not whole:
        q_out, order_out, null_out = basis.clone(), torch.empty_like(null, dtype=torch.long), null.clone()
    n_failed = 0
    for k in kinds:
        rows = None if whole else (kind == k).nonzero().squeeze(-1)
        picked = None if whole else rows.tolist()
        g, b, nl = (
            (gram, basis, null)
            if whole
            else (torch.stack([t[i] for i in picked]) for t in (gram, basis, null))
        )
        if k == 2:
            q, order, failed = power_iteration_basis(g, b, None)
            flags = null_directions(eigenvalue_estimates(g, q), tolerance)
        elif k == 0:
            q, order, flags, failed = _refresh_undetermined(g, b, nl, tolerance)
        else:
            rank = determined if whole else determined[rows]
            q, order, flags, failed = _refresh_determined(g, b, nl, rank, tolerance)
            q = rows_where(rank > 0, q, b)  # zero Gram matrices keep their basis (and the index order)
        if whole:
            return q, order, flags, failed
        for j, i in enumerate(picked):
            q_out[i].copy_(q[j])
            order_out[i].copy_(order[j])
            null_out[i].copy_(flags[j])
        n_failed += failed
    return q_out, order_out, null_out, n_failed


def _refresh_undetermined(
    g: Tensor, b: Tensor, null: Tensor, tolerance: float | None
) -> tuple[Tensor, Tensor, Tensor, int]:
    """:func:`isotropic_refresh` for blocks with no determined column whose Gram matrix has energy: solved
    exactly by ``eigh``. (A Gram matrix that is still zero — a weight that never had a gradient, e.g. a
    path of a species absent from the data — goes with the partly determined blocks and keeps its basis
    without an ``eigh``: on nequip-seed001 two such 1024 × 1024 matrices made two thirds of the ``eigh``
    time of a refresh.)"""
    n, d = b.shape[0], b.shape[-1]
    q, failed = eigenbasis(g, b)
    flags = null_directions(eigenvalue_estimates(g, q), tolerance)
    return q, torch.arange(d, device=b.device).expand(n, d), flags, failed


def _refresh_determined(
    g: Tensor, b: Tensor, null: Tensor, rank: Tensor, tolerance: float | None
) -> tuple[Tensor, Tensor, Tensor, int]:
    """:func:`isotropic_refresh` for blocks with ``rank`` ``(n,)`` determined columns each (0 < r < d).

    Blocks of different rank share every call: the determined columns are padded to the largest rank
    ``R`` with zero columns, which change no product and which Householder QR passes over (a zero
    column gets the identity reflector), so each block's result is the one it would get alone, up to
    rounding; the complement is then resolved per block at its own rank."""
    n, d = b.shape[0], b.shape[-1]
    big = int(rank.max())
    cols = torch.arange(d, device=b.device)
    if big == 0:  # only zero Gram matrices: nothing to refresh
        return b, cols.expand(n, d), null, 0
    is_head = cols < rank.unsqueeze(-1)  # (n, d): the block's determined positions
    head_mask = is_head[:, None, :big]
    idx = torch.argsort(null.to(torch.int8), dim=-1, stable=True)  # determined first, index order
    head_old = b.gather(-1, idx[:, None, :big].expand(n, d, big)) * head_mask
    prod = g @ head_old
    estimates = (head_old * prod).sum(dim=-2).masked_fill(~is_head[:, :big], float("-inf"))
    by_estimate = torch.argsort(estimates, dim=-1, descending=True, stable=True)  # padding stays last
    order = torch.cat([idx[:, :big].gather(-1, by_estimate), idx[:, big:]], dim=-1)
    power = prod.gather(-1, by_estimate[:, None, :].expand(n, d, big))
    work = power if power.dtype in (torch.float32, torch.float64) else power.float()
    try:
        q = qr_complete(work).to(b.dtype)
    except RuntimeError:
        q = torch.full_like(b, float("nan"))
    head = q[..., :big]
    head_est = ((head * (g @ head)).sum(dim=-2) * is_head[:, :big]).to(g.dtype)
    est = torch.cat([head_est, head_est.new_zeros(n, d - big)], dim=-1)
    tol = null_threshold(d, g.dtype, tolerance)
    tail_energy = torch.diagonal(g, dim1=-2, dim2=-1).sum(-1) - head_est.sum(-1)
    live = tail_energy > tol * head_est.amax(dim=-1).clamp_min(0.0)
    n_failed = 0
    if bool(live.any()):  # resolve the energy that entered the complement
        floor = tol * head_est.amax(dim=-1).clamp_min(0.0)
        resolved = None
        if d - big >= LIVE_COMPLEMENT_MIN:  # every block at once (a row copy costs more than its work)
            stopped = floor.masked_fill(~live, float("inf"))  # no factor column for the others
            resolved = _live_complement(g, q, rank, big, est, stopped)
            if resolved is not None:
                q_new, est_new, n_failed = resolved
                q, est = rows_where(live, q_new, q), rows_where(live, est_new, est)
        if resolved is None:  # the live part is not of low rank: Rayleigh–Ritz on the whole complement
            every = bool(live.all())  # no row copies of the d × d matrices then
            rows = live.nonzero().squeeze(-1)
            pick = (lambda t: t) if every else (lambda t: t.index_select(0, rows))
            q_new, est_new, n_failed = _rayleigh_ritz_complement(pick(g), pick(q), pick(rank), pick(est))
            if every:
                q, est = q_new, est_new
            else:
                q, est = q.index_copy_(0, rows, q_new), est.index_copy_(0, rows, est_new)
    flags = null_directions(est, tolerance)
    ok = _finite_per_block(q) & _finite_per_block(g)
    if not bool(ok.all()):
        n_failed = int((~ok).sum())
        q = torch.where(ok.view(-1, 1, 1), q, b)
        identity = torch.arange(d, device=b.device).expand_as(order)
        order = torch.where(ok.view(-1, 1), order, identity)
        flags = torch.where(ok.view(-1, 1), flags, null)
    return q, order, flags, n_failed


def rows_where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``a`` where ``mask`` ``(n,)`` is set, else ``b``, row by row: row copies instead of ``torch.where``
    over every entry (a broadcast ``where`` over seven 1024 × 1024 matrices cost 5 ms on CPU). May return
    (and then modify) ``a``."""
    if bool(mask.all()):
        return a
    if not bool(mask.any()):
        return b
    for row in (~mask).nonzero().squeeze(-1).tolist():  # plain copies: index_copy_ was 2× slower here
        a[row].copy_(b[row])
    return a


def _place_after_head(head: Tensor, rest: Tensor, rank: Tensor) -> Tensor:
    """Per block, ``head``'s first ``r`` entries along the last axis followed by ``rest``'s first ``d − r``
    (``head`` ``(…, d)``, ``rest`` ``(…, K)`` with ``K ≥ d − r``, ``rank`` ``(n,)``): a basis assembled at
    each block's own rank."""
    d = head.shape[-1]
    cols = torch.arange(d, device=head.device)
    at = torch.where(cols < rank.unsqueeze(-1), cols, d + cols - rank.unsqueeze(-1))  # (n, d)
    at = at.view(at.shape[0], *([1] * (head.ndim - 2)), d).expand(head.shape)
    return torch.cat([head, rest], dim=-1).gather(-1, at)


def _rayleigh_ritz_complement(g: Tensor, q: Tensor, rank: Tensor, est: Tensor) -> tuple[Tensor, Tensor, int]:
    """The complement of each block's first ``r`` columns of ``q`` resolved by Rayleigh–Ritz, blocks of
    any rank in one ``eigh`` of width ``K = d − min r``: with ``W`` the last ``K`` columns of ``q``,
    ``C = Wᵀ G W`` with the rows and columns of determined columns inside ``W`` (a block of higher rank
    has some) replaced by distinct negative diagonal entries (``−(1+j)·(trace G + 1)``) is block
    diagonal, so its eigenvectors of non-negative eigenvalue are the complement's Ritz vectors,
    descending, followed by the determined positions. (``K × K`` rather than ``d × d``: on
    allegro-seed001's blocks, where ``r`` is a fifth of ``d``, half the ``eigh`` work.) Returns
    ``(Q_new, estimates, n_failed)`` with ``est``'s determined entries kept."""
    d = q.shape[-1]
    low = int(rank.min())
    w = q[..., low:]
    compressed = w.mT @ (g @ w)
    compressed = (compressed + compressed.mT) / 2
    cols = torch.arange(d - low, device=q.device)
    is_head = cols < (rank - low).unsqueeze(-1)
    keep = ~(is_head.unsqueeze(-1) | is_head.unsqueeze(-2))
    shift = torch.diagonal(g, dim1=-2, dim2=-1).sum(-1).abs() + 1.0
    marks = -(1.0 + cols.to(g.dtype)) * shift.unsqueeze(-1) * is_head
    compressed = torch.where(keep, compressed, 0.0) + torch.diag_embed(marks)
    rotation, n_failed = eigenbasis(compressed, None)
    ritz = eigenvalue_estimates(compressed, rotation)
    q_new = _place_after_head(q, w @ rotation, rank)
    return q_new, _place_after_head(est, ritz, rank), n_failed


def _live_complement(
    g: Tensor, q: Tensor, rank: Tensor, big: int, est: Tensor, floor: Tensor
) -> tuple[Tensor, Tensor, int] | None:
    """The complement of each block's first ``r`` columns of ``q`` (``head``, padded with zero columns to
    ``big``), live directions first: returns ``(Q_new, estimates, n_failed)`` with ``est``'s determined
    entries kept, or None when the live part is not of low rank (the caller then runs Rayleigh–Ritz).

    The Gram energy in the complement is ``H = P G P`` with ``P = I − head headᵀ``; between two refreshes
    only one period's gradients enter it, so its rank ``ℓ`` is far below the null count ``k = d − r`` (on
    nequip-seed001's 1024-row blocks ``k ≈ 1020``). A pivoted Cholesky factor ``H ≈ L Lᵀ``, stopped once
    the residual trace is at most ``floor`` (the null threshold), needs only the diagonal of ``H`` and
    ``ℓ`` of its columns; with ``X = G·head − ½·head·(headᵀ G head)``, ``H = G − head Xᵀ − X headᵀ``, so
    each is ``O(d r)`` and ``H`` itself (``d × d``, seven passes over it when formed) never is. The live
    directions come from the ``ℓ × ℓ`` eigenproblem of ``Lᵀ L``, and a complete QR of ``[head, live]``
    completes the basis: ``O(d² ℓ)`` instead of the ``O(d³)`` products and ``k × k`` ``eigh`` of
    Rayleigh–Ritz. Nothing here reads the old null columns, so the result does not depend on which basis
    of the null span the last refresh returned; the directions left in the residual carry less energy
    than the null threshold, so they are null either way. (torch has no rank-revealing pivoted Cholesky
    or QR, hence this loop; scipy's would leave the device.)"""
    n, d = q.shape[0], q.shape[-1]
    head = q[..., :big] * (torch.arange(big, device=q.device) < rank.unsqueeze(-1)).unsqueeze(-2)
    gh = g @ head
    x = gh - head @ (head.mT @ gh) / 2
    diag = torch.diagonal(g, dim1=-2, dim2=-1) - 2 * (head * x).sum(-1)
    blocks = torch.arange(n, device=g.device)

    def column(pivot: Tensor) -> Tensor:
        """``H[:, pivot]`` of each block, ``(n, d)``."""
        at_pivot = (head[blocks, pivot], x[blocks, pivot])  # rows of head and X, (n, big) each
        return (
            g[blocks, :, pivot]
            - (head @ x[blocks, pivot].unsqueeze(-1)).squeeze(-1)
            - (x @ at_pivot[0].unsqueeze(-1)).squeeze(-1)
        )

    cap = min(d - big, max(16, (d - big) // 8))  # beyond it the factor costs what Rayleigh–Ritz does
    factor = _pivoted_cholesky(diag, column, floor, cap)
    if factor is None:
        return None
    ell = factor.shape[-1]
    if ell == 0:  # the trace test saw energy (its rounding differs); none is above the floor
        return q, est, 0
    small = factor.mT @ factor
    rotation, n_failed = eigenbasis((small + small.mT) / 2, None)
    weights = eigenvalue_estimates(small, rotation)
    keep = weights > ell * torch.finfo(g.dtype).eps * weights.amax(-1, keepdim=True)
    live = (factor @ rotation) / weights.clamp_min(torch.finfo(g.dtype).tiny).sqrt().unsqueeze(-2)
    live = torch.where(keep.unsqueeze(-2), live, 0.0)
    # [head, live, 0…] at each block's rank: zero columns (padding, dropped directions) get the identity
    # reflector, so the complete QR's columns r…r+ℓ span the live directions and the rest completes them
    # (only the first big + ℓ columns: a QR of all d would cost d³ however many are zero)
    stacked = torch.cat([head, live, live.new_zeros(n, d, 1)], dim=-1)
    width = torch.arange(big + ell, device=q.device)
    r = rank.unsqueeze(-1)
    at = torch.where(width < r, width, torch.where(width < r + ell, big + width - r, big + ell))
    try:
        completed = qr_complete(stacked.gather(-1, at.unsqueeze(-2).expand(n, d, big + ell)))
    except RuntimeError:
        completed = torch.full_like(q, float("nan"))
    # its first r columns are ±head up to rounding (Householder QR of orthonormal columns): the
    # determined columns are taken from it too (a per-column select over d × d costs more than the QR)
    q_new = completed
    live_at = (r + torch.arange(ell, device=q.device)).unsqueeze(-2).expand(n, d, ell)
    live_est = eigenvalue_estimates(g, completed.gather(-1, live_at))
    est_new = est.scatter(-1, live_at[:, 0, :], live_est)
    return q_new, est_new, n_failed


def _pivoted_cholesky(
    diagonal: Tensor, column: Callable[[Tensor], Tensor], floor: Tensor, cap: int
) -> Tensor | None:
    """``L`` ``(n, d, ℓ)`` with ``H ≈ L Lᵀ`` for a stack of PSD matrices given by their ``diagonal``
    ``(n, d)`` and ``column(pivot)`` (``H[:, pivot]`` per block, ``(n, d)``), pivoting on the largest
    residual diagonal and stopping when the residual trace is at most ``floor`` ``(n,)``; None when some
    matrix needs more than ``cap`` columns. Blocks that stop early get zero columns."""
    n, d = diagonal.shape
    diag = diagonal.clamp_min(0.0)
    factor = diag.new_zeros(n, d, cap)
    blocks = torch.arange(n, device=diag.device)
    for j in range(cap + 1):
        active = diag.sum(-1) > floor
        if not bool(active.any()):
            return factor[..., :j]
        if j == cap:
            return None
        pivot = diag.argmax(dim=-1)
        col = column(pivot) - (factor[..., :j] @ factor[blocks, pivot, :j].unsqueeze(-1)).squeeze(-1)
        scale = col[blocks, pivot].clamp_min(torch.finfo(diag.dtype).tiny).sqrt()
        col = torch.where(active.unsqueeze(-1), col / scale.unsqueeze(-1), 0.0)
        factor[..., j] = col
        diag = (diag - col.square()).clamp_min(0.0)
        diag[blocks, pivot] = torch.where(active, 0.0, diag[blocks, pivot])
    return None


def _identity_like(mat: Tensor) -> Tensor:
    eye = torch.eye(mat.shape[-1], dtype=mat.dtype, device=mat.device)
    return eye.expand_as(mat).clone()
