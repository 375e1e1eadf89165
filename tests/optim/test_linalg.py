import pytest
import torch

from mlipopt.optim import _linalg
from mlipopt.optim._linalg import eigenbasis, newton_schulz, power_iteration_basis, singular_value_power


@pytest.mark.parametrize("shape", [(16, 16), (8, 24), (24, 8)])
def test_newton_schulz_matches_polar_factor(shape):
    """NS5 returns U S' Vᵀ: the singular vectors of the SVD polar factor, S' inside NS5's band."""
    u, _ = torch.linalg.qr(torch.randn(shape[0], shape[0], dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(shape[1], shape[1], dtype=torch.float64))
    k = min(shape)
    s = torch.logspace(-2, 0, k, dtype=torch.float64)  # condition number 100
    g = u[:, :k] @ torch.diag(s) @ v[:, :k].T
    o = newton_schulz(g).double()
    core = u[:, :k].T @ o @ v[:, :k]
    diag = torch.diagonal(core)
    assert torch.all(diag > 0.6) and torch.all(diag < 1.25), diag
    off = core - torch.diag(diag)
    assert off.abs().max() < 1e-4
    polar = u[:, :k] @ v[:, :k].T
    assert float((o - polar).norm() / polar.norm()) < 0.35


def test_newton_schulz_batched_equals_unbatched():
    x = torch.randn(5, 12, 7)
    batched = newton_schulz(x)
    single = torch.stack([newton_schulz(x[i]) for i in range(5)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


def test_newton_schulz_keeps_dtype():
    x = torch.randn(3, 6, 4, dtype=torch.float64)
    assert newton_schulz(x).dtype == torch.float64


def test_rho_zero_newton_schulz_close_to_svd():
    """ρ=0 by Newton–Schulz and by SVD agree up to NS5's spread of singular values."""
    x = torch.randn(4, 20, 12, dtype=torch.float64)
    ns = newton_schulz(x).double()
    svd = singular_value_power(x, 0.0)
    for a, b in zip(ns, svd):
        cos = float((a * b).sum() / (a.norm() * b.norm()))
        assert cos > 0.95


def test_singular_value_power_identity_at_rho_one():
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(singular_value_power(x, 1.0), x)


def test_eigenbasis_falls_back_on_failure(monkeypatch):
    gram = torch.randn(3, 4, 4, dtype=torch.float64)
    gram = gram @ gram.mT
    previous = torch.linalg.qr(torch.randn(3, 4, 4, dtype=torch.float64))[0]

    def broken(mat):
        raise torch.linalg.LinAlgError("injected eigh failure")

    monkeypatch.setattr(_linalg, "eigh", broken)
    q, failed = eigenbasis(gram, previous)
    assert failed == 3
    torch.testing.assert_close(q, previous)


def test_eigenbasis_rejects_nonfinite_blocks():
    gram = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    gram[1, 0, 0] = float("nan")
    q, failed = eigenbasis(gram, None)
    assert failed == 1
    torch.testing.assert_close(q[1], torch.eye(4, dtype=torch.float64))
    assert torch.isfinite(q).all()


def test_power_iteration_keeps_basis_on_qr_failure(monkeypatch):
    gram = torch.randn(2, 5, 5, dtype=torch.float64)
    gram = gram @ gram.mT
    basis = torch.linalg.eigh(gram)[1].flip(-1)

    def broken(mat):
        raise torch.linalg.LinAlgError("injected QR failure")

    monkeypatch.setattr(_linalg, "qr", broken)
    q, order, failed = power_iteration_basis(gram, basis)
    assert failed == 2
    torch.testing.assert_close(q, basis)
    assert torch.equal(order, torch.arange(5).expand(2, 5))


def test_power_iteration_converges_to_eigenbasis():
    gram = torch.randn(1, 6, 6, dtype=torch.float64)
    gram = gram @ gram.mT
    q = torch.linalg.qr(torch.randn(1, 6, 6, dtype=torch.float64))[0]
    for _ in range(300):
        q, _, _ = power_iteration_basis(gram, q)
    rotated = q.mT @ gram @ q
    off = rotated - torch.diag_embed(torch.diagonal(rotated, dim1=-2, dim2=-1))
    assert off.abs().max() < 1e-6 * gram.abs().max()


def test_ritz_tail_diagonalises_the_gram_on_the_tail_span_whatever_basis_it_is_given():
    """Rayleigh–Ritz on the trailing k columns: the basis stays orthonormal, the tail keeps its span,
    Wᵀ G W becomes diagonal (descending) there, and a rotated tail gives the same subspaces' Ritz
    vectors (up to sign) — the isotropic null-space rule's refresh depends on no arbitrary choice."""
    gen = torch.Generator().manual_seed(3)
    d, k = 10, 4
    x = torch.randn(2, d, 6, dtype=torch.float64, generator=gen)
    gram = x @ x.mT
    basis = torch.linalg.qr(torch.randn(2, d, d, dtype=torch.float64, generator=gen))[0]
    counts = torch.tensor([k, 0])
    out, failed = _linalg.ritz_tail(gram, basis, counts)
    assert failed == 0
    torch.testing.assert_close(out.mT @ out, torch.eye(d, dtype=torch.float64).expand(2, d, d))
    torch.testing.assert_close(out[1], basis[1])  # no null columns: untouched
    torch.testing.assert_close(out[0, :, :-k], basis[0, :, :-k])
    tail, new_tail = basis[0, :, -k:], out[0, :, -k:]
    torch.testing.assert_close(new_tail @ new_tail.T, tail @ tail.T)  # same span
    compressed = new_tail.T @ gram[0] @ new_tail
    ritz = torch.diagonal(compressed)
    assert torch.all(ritz[:-1] >= ritz[1:])
    torch.testing.assert_close(compressed, torch.diag(ritz), atol=1e-10, rtol=0)
    rotation = torch.linalg.qr(torch.randn(k, k, dtype=torch.float64, generator=gen))[0]
    rotated = basis.clone()
    rotated[0, :, -k:] = tail @ rotation
    again, _ = _linalg.ritz_tail(gram, rotated, counts)
    signs = torch.sign((again[0, :, -k:] * new_tail).sum(0))
    torch.testing.assert_close(again[0, :, -k:] * signs, new_tail)


def test_ritz_tail_keeps_a_tail_that_is_still_null_and_resolves_one_that_gained_energy():
    """Columns whose span carries no Gram energy stay as they are (no basis of a null space is
    preferred, and the k × k eigh is skipped); once a gradient adds energy there they are resolved."""
    gen = torch.Generator().manual_seed(4)
    d, r = 10, 3
    x = torch.randn(d, r, dtype=torch.float64, generator=gen)
    gram = (x @ x.T).unsqueeze(0)
    range_basis = torch.linalg.qr(x)[0]
    complement = torch.linalg.qr(torch.eye(d, dtype=torch.float64) - range_basis @ range_basis.T)[0]
    complement = complement @ torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=gen))[0]
    tail = torch.linalg.qr(complement - range_basis @ (range_basis.T @ complement))[0][:, : d - r]
    basis = torch.cat([range_basis, tail], dim=1).unsqueeze(0)
    counts = torch.tensor([d - r])
    kept, _ = _linalg.ritz_tail(gram, basis, counts)
    assert torch.equal(kept, basis)
    y = tail[:, :2] @ torch.randn(2, 2, dtype=torch.float64, generator=gen)  # energy in the tail
    resolved, _ = _linalg.ritz_tail(gram + (y @ y.T).unsqueeze(0), basis, counts)
    assert not torch.equal(resolved, basis)
    new_tail = resolved[0, :, r:]
    compressed = new_tail.T @ (gram[0] + y @ y.T) @ new_tail
    torch.testing.assert_close(compressed, torch.diag(torch.diagonal(compressed)), atol=1e-10, rtol=0)
