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


def _rank_deficient_case(seed: int, d: int = 10, rank: int = 3):
    """A Gram matrix of rank ``rank`` and a basis whose first columns span its range, the rest null."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(d, rank, dtype=torch.float64, generator=gen)
    gram = x @ x.T
    full = torch.linalg.qr(torch.cat([x, torch.randn(d, d - rank, dtype=torch.float64, generator=gen)], 1))[0]
    null = torch.zeros(d, dtype=torch.bool)
    null[rank:] = True
    return gram, full, null, gen


def test_isotropic_refresh_ignores_the_null_columns_and_resolves_energy_that_entered_their_span():
    """The determined columns are power-iterated as in official SOAP, the null ones are not used at all
    (a random rotation of them gives the same bits), the new basis is orthonormal, and energy that
    entered the complement is resolved by Rayleigh–Ritz: Wᵀ G W is diagonal there and flagged live."""
    gram, basis, null, gen = _rank_deficient_case(5)
    d, r = basis.shape[0], int((~null).sum())
    y = basis[:, r : r + 2] @ torch.randn(2, 2, dtype=torch.float64, generator=gen)
    gram = (gram + y @ y.T).unsqueeze(0)  # two new directions in the old null span
    q, order, flags, failed = _linalg.isotropic_refresh(gram, basis.unsqueeze(0), null.unsqueeze(0))
    assert failed == 0
    torch.testing.assert_close(q[0].T @ q[0], torch.eye(d, dtype=torch.float64))
    assert sorted(order[0].tolist()) == list(range(d)) and set(order[0, r:].tolist()) == set(range(r, d))
    official, _, _ = _linalg.power_iteration_basis(gram, basis.unsqueeze(0), null.unsqueeze(0))
    signs = torch.sign((official[0, :, :r] * q[0, :, :r]).sum(0))
    torch.testing.assert_close(q[0, :, :r] * signs, official[0, :, :r])  # same determined columns
    tail = q[0, :, r:]
    compressed = tail.T @ gram[0] @ tail
    torch.testing.assert_close(compressed, torch.diag(torch.diagonal(compressed)), atol=1e-10, rtol=0)
    assert int((~flags[0, r:]).sum()) == 2  # the two new directions are live, the rest null
    rotated = basis.clone()
    rotated[:, r:] = (
        basis[:, r:] @ torch.linalg.qr(torch.randn(d - r, d - r, dtype=torch.float64, generator=gen))[0]
    )
    again = _linalg.isotropic_refresh(gram, rotated.unsqueeze(0), null.unsqueeze(0))
    assert torch.equal(again[0], q) and torch.equal(again[2], flags)


def test_isotropic_refresh_skips_the_eigh_while_the_null_span_stays_null(monkeypatch):
    gram, basis, null, _ = _rank_deficient_case(6)
    calls = []
    monkeypatch.setattr(
        _linalg, "eigenbasis", lambda *a: calls.append(1) or (_ for _ in ()).throw(AssertionError)
    )
    q, _, flags, failed = _linalg.isotropic_refresh(gram.unsqueeze(0), basis.unsqueeze(0), null.unsqueeze(0))
    assert not calls and failed == 0
    assert torch.equal(flags[0], null)  # still 3 determined directions, 7 null
    torch.testing.assert_close(q[0].T @ q[0], torch.eye(10, dtype=torch.float64))


def test_isotropic_refresh_keeps_the_basis_when_qr_fails(monkeypatch):
    gram, basis, null, _ = _rank_deficient_case(7)

    def broken(mat):
        raise RuntimeError("injected")

    monkeypatch.setattr(_linalg, "qr_complete", broken)
    q, order, flags, failed = _linalg.isotropic_refresh(
        gram.unsqueeze(0), basis.unsqueeze(0), null.unsqueeze(0)
    )
    assert failed == 1
    assert torch.equal(q[0], basis) and torch.equal(flags[0], null)
    assert order[0].tolist() == list(range(10))


def _with_new_directions(d: int, rank: int, new: int, seed: int):
    gram, basis, null, gen = _rank_deficient_case(seed, d, rank)
    y = basis[:, rank : rank + new] @ torch.randn(new, new, dtype=torch.float64, generator=gen)
    gram = gram + 0.1 * y @ y.T  # energy entered `new` directions of the old null span
    return gram.unsqueeze(0), basis.unsqueeze(0), null.unsqueeze(0)


def _eigenbasis_sizes(monkeypatch) -> list[int]:
    sizes, real = [], _linalg.eigenbasis
    monkeypatch.setattr(_linalg, "eigenbasis", lambda g, prev: sizes.append(g.shape[-1]) or real(g, prev))
    return sizes


def test_isotropic_refresh_resolves_low_rank_energy_in_the_complement_with_a_small_eigh(monkeypatch):
    """Issue 23: on nequip-seed001 the 1024-row blocks keep ~1020 null directions, and one period's
    gradients bring energy into only a few of them. The live directions come from a pivoted Cholesky
    factor of P G P and an ℓ × ℓ eigh (here 2 × 2, not 297 × 297), and they are the eigenvectors of
    P G P that Rayleigh–Ritz on the whole complement gives (used below LIVE_COMPLEMENT_MIN null columns)."""
    d = 300
    assert d - 3 >= _linalg.LIVE_COMPLEMENT_MIN
    gram, basis, null = _with_new_directions(d, 3, 2, seed=11)
    sizes = _eigenbasis_sizes(monkeypatch)
    q, order, flags, failed = _linalg.isotropic_refresh(gram, basis, null)
    assert failed == 0 and sizes == [2]
    torch.testing.assert_close(q[0].T @ q[0], torch.eye(d, dtype=torch.float64))
    assert int((~flags[0]).sum()) == 5 and not flags[0, :5].any()  # 3 determined + the 2 new ones
    head = q[0, :, :3]
    projector = torch.eye(d, dtype=torch.float64) - head @ head.T
    values, vectors = torch.linalg.eigh(projector @ gram[0] @ projector)
    exact = vectors[:, -2:].flip(-1)  # Rayleigh–Ritz on the whole complement: the top two
    signs = torch.sign((exact * q[0, :, 3:5]).sum(0))
    # an eigenvector is determined to about ε·λ_max/gap (here the second live eigenvalue is ~1e-5)
    bound = 1e3 * torch.finfo(torch.float64).eps * float(values[-1] / values[-2])
    torch.testing.assert_close(q[0, :, 3:5] * signs, exact, atol=bound, rtol=0)
    tail = q[0, :, 3:]
    compressed = tail.T @ gram[0] @ tail
    torch.testing.assert_close(compressed, torch.diag(torch.diagonal(compressed)), atol=1e-10, rtol=0)


def test_isotropic_refresh_falls_back_to_rayleigh_ritz_when_the_live_part_is_not_of_low_rank(monkeypatch):
    gram, basis, null = _with_new_directions(20, 2, 17, seed=12)  # 17 live of 18: above the cap of 16
    sizes = _eigenbasis_sizes(monkeypatch)
    q, _, flags, failed = _linalg.isotropic_refresh(gram, basis, null)
    assert failed == 0 and sizes == [18]  # one (d − r) × (d − r) eigh of the complement, not d × d
    torch.testing.assert_close(q[0].T @ q[0], torch.eye(20, dtype=torch.float64))
    tail = q[0, :, 2:]
    compressed = tail.T @ gram[0] @ tail
    torch.testing.assert_close(compressed, torch.diag(torch.diagonal(compressed)), atol=1e-10, rtol=0)
    assert int((~flags[0]).sum()) == 19


def test_isotropic_refresh_with_complement_energy_at_the_null_threshold():
    """The trace test (trace G minus the determined columns' share) and the pivoted Cholesky's residual
    diagonal round differently: energy at the null threshold can pass the first and not the second.
    The demo met it (an empty factor); such a refresh keeps the complement as null, orthonormal."""
    for seed in range(40):
        gram, basis, null, gen = _rank_deficient_case(seed, 24, 4)
        top = float(torch.linalg.eigvalsh(gram)[-1])
        y = basis[:, 4:6] @ torch.randn(2, 2, dtype=torch.float64, generator=gen)
        scale = _linalg.null_threshold(24, torch.float64) * top * (0.5 + seed / 20) / float((y * y).sum())
        gram = (gram + scale * y @ y.T).unsqueeze(0)
        q, order, flags, failed = _linalg.isotropic_refresh(gram, basis.unsqueeze(0), null.unsqueeze(0))
        assert failed == 0 and sorted(order[0].tolist()) == list(range(24))
        torch.testing.assert_close(q[0].T @ q[0], torch.eye(24, dtype=torch.float64))
        assert not flags[0, :4].any() and int((~flags[0]).sum()) <= 6
    head = torch.linalg.qr(torch.randn(1, 8, 2, dtype=torch.float64))[0]
    complement = torch.linalg.qr(torch.cat([head, torch.randn(1, 8, 6, dtype=torch.float64)], -1))[0][..., 2:]
    g = head @ head.mT + 1e-20 * torch.eye(8, dtype=torch.float64)
    floor = torch.tensor([1e-12], dtype=torch.float64)
    q = torch.cat([head, complement], dim=-1)
    est = torch.tensor([[1.0, 1.0, 0, 0, 0, 0, 0, 0]], dtype=torch.float64)
    q_new, est_new, failed = _linalg._live_complement(g, q, torch.tensor([2]), 2, est, floor)
    assert torch.equal(q_new, q) and torch.equal(est_new, est) and failed == 0


@pytest.mark.parametrize("d,live", [(24, 2), (300, 2)])  # Rayleigh–Ritz, pivoted Cholesky
def test_blocks_of_different_rank_refreshed_together_equal_each_alone(d, live):
    """A bucket's blocks differ in rank (on nequip-seed001 a bucket of 17 held 12 ranks): they share one
    call, padded to the largest rank, and each gets the basis, order and flags it gets alone."""
    cases = [_with_new_directions(d, rank, live, seed=20 + rank) for rank in (3, 5, 8)]
    cases.append(_with_new_directions(d, 4, 0, seed=30))  # a block whose complement stays null
    gram, basis, null = (torch.cat(parts) for parts in zip(*cases))
    q, order, flags, failed = _linalg.isotropic_refresh(gram, basis, null)
    assert failed == 0
    for i, (g, b, n) in enumerate(cases):
        q1, order1, flags1, _ = _linalg.isotropic_refresh(g, b, n)
        assert torch.equal(order[i], order1[0]) and torch.equal(flags[i], flags1[0])
        rank = int((~flags1[0]).sum())
        signs = torch.sign((q[i, :, :rank] * q1[0, :, :rank]).sum(0))
        torch.testing.assert_close(q[i, :, :rank] * signs, q1[0, :, :rank], atol=1e-9, rtol=0)
        projector = lambda m: m @ m.T  # noqa: E731 — the null span, whatever basis of it was returned
        torch.testing.assert_close(projector(q[i, :, rank:]), projector(q1[0, :, rank:]), atol=1e-9, rtol=0)
        torch.testing.assert_close(q[i].T @ q[i], torch.eye(d, dtype=torch.float64))


def test_isotropic_refresh_keeps_a_never_touched_block_null_without_an_eigh(monkeypatch):
    """A weight that never had a gradient (zero Gram matrix, every direction null) keeps its basis and
    flags; one beside it in the bucket with energy and no determined column is solved exactly."""
    d = 8
    gram = torch.zeros(2, d, d, dtype=torch.float64)
    x = torch.randn(d, 3, dtype=torch.float64)
    gram[1] = x @ x.T
    basis = torch.linalg.qr(torch.randn(2, d, d, dtype=torch.float64))[0]
    null = torch.ones(2, d, dtype=torch.bool)
    real_eigh, sizes = _linalg.eigh, []
    monkeypatch.setattr(_linalg, "eigh", lambda m: sizes.append(m.shape[0]) or real_eigh(m))
    q, order, flags, failed = _linalg.isotropic_refresh(gram[:1], basis[:1], null[:1])
    assert not sizes and failed == 0
    assert torch.equal(q, basis[:1]) and torch.equal(flags, null[:1])
    assert torch.equal(order[0], torch.arange(d))
    q, order, flags, failed = _linalg.isotropic_refresh(gram, basis, null)
    assert failed == 0 and torch.equal(q[0], basis[0]) and bool(flags[0].all())
    assert flags[1].sum() == d - 3  # the energised block: 3 determined directions, solved by eigh
    torch.testing.assert_close(q[1].T @ gram[1] @ q[1], torch.diag((q[1].T @ gram[1] @ q[1]).diagonal()))


def test_a_block_with_one_nonfinite_entry_counts_as_failed():
    x = torch.ones(3, 4, 4)
    x[1, 2, 3] = float("inf")
    x[2, 0, 0] = float("nan")
    assert _linalg._finite_per_block(x).tolist() == [True, False, False]
