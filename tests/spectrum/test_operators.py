"""Known answers: planted spectra, closed-form preconditioned spectra, HVPs against finite differences."""

import numpy as np
import pytest
import torch

from mlipopt.optim import SOAP
from mlipopt.optim.lbfgs import LBFGS
from mlipopt.spectrum import (
    FlatParameters,
    HessianOperator,
    analyse,
    extremal_eigenvalues,
    from_lbfgs_history,
    from_optimizer,
    slq_density,
)

F64 = torch.float64


def _planted(n=60, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    values = np.concatenate([np.geomspace(1e3, 1e1, n - 5), [-1.0, -5.0, -10.0, -20.0, -50.0]])
    return torch.tensor(q @ np.diag(values) @ q.T), np.sort(values)[::-1]


def _quadratic_operator(a, method="autograd"):
    theta = torch.nn.Parameter(torch.randn(a.shape[0], dtype=F64))
    return HessianOperator([theta], lambda: [(1.0, lambda: 0.5 * theta @ a @ theta)], method=method)


def test_planted_spectrum_and_kappa_are_recovered():
    a, values = _planted()
    h = _quadratic_operator(a)
    s = analyse(h.matvec, h.size, "H", F64, torch.device("cpu"), k=5, bottom=True, counter=lambda: h.products)
    np.testing.assert_allclose(s.top, values[:5], rtol=1e-6)
    np.testing.assert_allclose(s.bottom, values[-5:], rtol=1e-6)
    assert s.kappa_top == pytest.approx(values[0] / values[4], rel=1e-6)
    assert s.products == h.products > 0
    grid, density = np.array(s.density.grid), np.array(s.density.density)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, rel=1e-3)  # a probability density


def test_slq_traces_are_exact_with_a_full_krylov_space():
    """With as many Lanczos steps as dimensions the quadrature is exact for every probe: the trace
    estimates are then the Hutchinson estimates, and tr(A²) of a diagonal A is exact for ±1 probes."""
    diag = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.25], dtype=F64)
    density = slq_density(lambda v: diag * v, 6, F64, torch.device("cpu"), probes=4, steps=6)
    assert density.trace_of(lambda x: x, 6) == pytest.approx(float(diag.sum()), rel=1e-10)
    assert density.trace_of(lambda x: x**2, 6) == pytest.approx(float((diag**2).sum()), rel=1e-10)


def test_finite_difference_fallback_agrees_with_double_backward():
    a, _ = _planted(30, seed=1)
    exact, fd = _quadratic_operator(a), _quadratic_operator(a, method="fd")
    with torch.no_grad():
        fd.flat.params[0].copy_(exact.flat.params[0])
    v = torch.randn(30, dtype=F64)
    torch.testing.assert_close(fd.matvec(v), exact.matvec(v), rtol=1e-7, atol=1e-7)


def _adam_state_for(h_diag, c=2.0):
    """A linear least-squares loss with Hessian diag(h) and an AdamW state with v = (c·h)² (seed 002's
    α = 1 regime: v ∝ λ²)."""
    theta = torch.nn.Parameter(torch.zeros(len(h_diag), dtype=F64))
    opt = torch.optim.AdamW([theta], lr=1e-3)
    theta.grad = torch.ones_like(theta)
    opt.step()
    opt.state[theta]["exp_avg_sq"] = (c * h_diag) ** 2
    opt.state[theta]["step"] = torch.tensor(1e6)  # bias correction → 1
    return theta, opt


def test_adam_preconditioned_spectrum_matches_its_closed_form():
    h_diag = torch.tensor(np.geomspace(100.0, 0.01, 40), dtype=F64)
    theta, opt = _adam_state_for(h_diag)
    flat = FlatParameters([theta])
    pre = from_optimizer("adamw", opt, flat)
    op = lambda v: pre.sqrt_apply(h_diag * pre.sqrt_apply(v))  # noqa: E731
    top = extremal_eigenvalues(op, 40, 5, "LA", F64, torch.device("cpu"))
    eps = opt.param_groups[0]["eps"]
    closed = np.sort((h_diag / (2.0 * h_diag + eps)).numpy())[::-1][:5]  # ≈ 1/2: PH ≈ I/c
    np.testing.assert_allclose(top, closed, rtol=1e-6)
    assert top[0] / top[-1] < 1 + 1e-5  # κ(PH) = 1 where κ(H) = 1e4 over these five (α = 1)


def _kron_problem(m=5, n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(7, m, dtype=F64, generator=gen), torch.randn(n, 6, dtype=F64, generator=gen)
    ata, bbt = a.T @ a, b @ b.T
    return a, b, ata, bbt, torch.kron(ata, bbt)  # row-major vec: vec(A W B) = (A ⊗ Bᵀ) vec(W)


def test_soap_in_the_hessians_own_eigenbasis_gives_an_identity_like_preconditioned_spectrum():
    """For L = ½‖A W B‖², H = AᵀA ⊗ BBᵀ. With SOAP's bases the eigenvectors of AᵀA and BBᵀ and its
    second moment v = (a_i b_j)² in that basis, P H has eigenvalues a_i b_j / (a_i b_j + ε): κ(PH) ≈ 1,
    while Adam's diagonal P on the same H (not diagonal in the parameter basis) leaves κ > 1."""
    m, n = 5, 4
    a, b, ata, bbt, hess = _kron_problem(m, n)
    ea, qa = torch.linalg.eigh(ata)
    eb, qb = torch.linalg.eigh(bbt)
    w = torch.nn.Parameter(torch.randn(m, n, dtype=F64))
    opt = SOAP([w], lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        (0.5 * (a @ w @ b).square().sum()).backward()
        opt.step()
    opt.load_state_dict(opt.state_dict())  # per-parameter state, as a checkpoint holds it
    state = opt.state[w]
    state["Q"] = [[qa, qb]]
    curvature = torch.outer(ea, eb)  # H in the (Q_L, Q_R) basis: diagonal a_i b_j
    state["exp_avg_sq"] = curvature.square()
    flat = FlatParameters([w])
    pre = from_optimizer("soap", opt, flat)
    op = lambda v: pre.sqrt_apply(hess @ pre.sqrt_apply(v))  # noqa: E731
    top = extremal_eigenvalues(op, m * n, 6, "LA", F64, torch.device("cpu"))
    eps = opt.param_groups[0]["eps"]
    closed = np.sort((curvature / (curvature + eps)).reshape(-1).numpy())[::-1][:6]
    np.testing.assert_allclose(top, closed, rtol=1e-6)
    # the dense P^{1/2} H P^{1/2} from the closed form agrees with the operator
    kron_q = torch.kron(qa, qb)
    p_half = kron_q @ torch.diag((curvature.reshape(-1) + eps) ** -0.5) @ kron_q.T
    dense = torch.linalg.eigvalsh(p_half @ hess @ p_half).numpy()[::-1][:6]
    np.testing.assert_allclose(top, dense, rtol=1e-6)
    # Adam's diagonal P with its own (diagonal) curvature estimate leaves the coupling: κ(PH) > 1
    adam_d = torch.diag(hess)
    adam_op = lambda v: (adam_d**-0.5) * (hess @ ((adam_d**-0.5) * v))  # noqa: E731
    adam_top = extremal_eigenvalues(adam_op, m * n, 6, "LA", F64, torch.device("cpu"))
    assert adam_top[0] / adam_top[-1] > 1.5 > top[0] / top[-1]


def test_lbfgs_preconditioner_square_root_squares_to_its_two_loop_recursion():
    a, _ = _planted(25, seed=2)
    a = a @ a.T + torch.eye(25, dtype=F64)  # positive definite
    x = torch.nn.Parameter(torch.randn(25, dtype=F64))
    opt = LBFGS([x], memory=6)

    def closure():
        opt.zero_grad()
        loss = 0.5 * x @ a @ x
        loss.backward()
        return loss

    for _ in range(8):
        opt.step(closure)
    history = opt.state["lbfgs"]
    pre = from_lbfgs_history(history["s"], history["y"], FlatParameters([x]))
    v = torch.randn(25, dtype=F64)
    torch.testing.assert_close(pre.sqrt_apply(pre.sqrt_apply(v)), -opt._direction(v), rtol=1e-9, atol=1e-9)
