"""L-BFGS refinement optimizer against the textbook: quadratics, Rosenbrock, damping, evaluations."""

import math

import pytest
import torch

from mlipopt.optim.lbfgs import LBFGS


def quadratic(n=50, condition=1e4, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eig = torch.logspace(0, math.log10(condition), n, dtype=torch.float64)
    A = q @ torch.diag(eig) @ q.T
    b = torch.randn(n, generator=g, dtype=torch.float64)
    return A, b


def run(optimizer_factory, f, x, max_iter, tol=1e-8):
    opt = optimizer_factory([x])

    def closure():
        opt.zero_grad()
        loss = f(x)
        loss.backward()
        return loss

    for k in range(1, max_iter + 1):
        info = opt.step(closure)
        if info.grad_norm < tol:
            return k, info
    return max_iter, info


def test_ill_conditioned_quadratic_in_far_fewer_iterations_than_gradient_descent():
    A, b = quadratic()

    def f(x):
        return 0.5 * x @ A @ x - b @ x

    x = torch.zeros(50, dtype=torch.float64, requires_grad=True)
    iterations, info = run(lambda p: LBFGS(p, memory=20), f, x, 2000)
    assert info.grad_norm < 1e-8
    assert torch.allclose(x.detach(), torch.linalg.solve(A, b), atol=1e-6)
    # gradient descent with the optimal fixed step 2/(L+μ) contracts the error by (κ−1)/(κ+1) per step
    kappa = 1e4
    gd_iterations = math.log(1e-8 / float(b.norm())) / math.log((kappa - 1) / (kappa + 1))
    assert iterations < gd_iterations / 50, (iterations, gd_iterations)
    assert info.function_evals >= iterations


def test_rosenbrock_converges():
    def f(x):
        return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2

    x = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)
    iterations, info = run(lambda p: LBFGS(p, memory=10), f, x, 500, tol=1e-8)
    assert info.grad_norm < 1e-8 and iterations < 200
    assert torch.allclose(x.detach(), torch.ones(2, dtype=torch.float64), atol=1e-6)


def test_powell_damping_on_negative_curvature():
    """f = x⁴/4 − x² starting in its concave region: the Armijo step has yᵀs < 0 and gets damped."""

    def f(x):
        return (x**4 / 4 - x**2).sum()

    x = torch.tensor([0.1], dtype=torch.float64, requires_grad=True)
    opt = LBFGS([x], memory=5)

    def closure():
        opt.zero_grad()
        loss = f(x)
        loss.backward()
        return loss

    infos = [opt.step(closure) for _ in range(30)]
    assert infos[0].damped and not infos[0].wolfe
    assert opt.damped_steps >= 1
    assert float(x) == pytest.approx(math.sqrt(2), abs=1e-6)  # still converges to the minimum
    assert all(b.loss <= a.loss + 1e-12 for a, b in zip(infos, infos[1:]))  # monotone decrease


def test_float32_and_a_non_descent_restart_keep_working():
    A, b = quadratic(n=10, condition=100.0)
    A, b = A.float(), b.float()
    x = torch.zeros(10, dtype=torch.float32, requires_grad=True)
    _, info = run(lambda p: LBFGS(p), lambda x: 0.5 * x @ A @ x - b @ x, x, 200, tol=1e-4)
    assert info.grad_norm < 1e-4


def test_arguments_are_checked():
    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="memory"):
        LBFGS(p, memory=0)
    with pytest.raises(ValueError, match="c1 < c2"):
        LBFGS(p, c1=0.9, c2=0.1)
