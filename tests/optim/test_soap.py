import pytest
import torch
from pytorch_optimizer import SOAP as OfficialSOAP

from mlipopt.optim import SOAP, SOAPMuon
from mlipopt.optim.reference import SOAPReference

from .helpers import make_params, max_rel, run

FULL_RANK = [(6, 6), (5, 5), (8,), (3, 4, 5)]  # every mode's Gram matrix can be full rank


def test_matches_pytorch_optimizer_soap_float64():
    """Plain parameters follow official SOAP: agree with pytorch-optimizer's SOAP over 40 steps.

    pytorch-optimizer runs its QR refresh in float32, which bounds the agreement near 1e-8.
    """
    ours, theirs = make_params(FULL_RANK), make_params(FULL_RANK)
    opt_a = SOAP(ours, lr=1e-2, weight_decay=1e-3, precondition_frequency=10)
    opt_b = OfficialSOAP(theirs, lr=1e-2, weight_decay=1e-3, precondition_frequency=10)
    for t in range(40):
        run(opt_a, ours, 1, start=t)
        run(opt_b, theirs, 1, start=t)
        assert max_rel(ours, theirs) < 1e-6, t
    assert max_rel(ours, make_params(FULL_RANK)) > 1e-2  # it did move


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (SOAP, {}),
        (SOAPMuon, {"rho": 0.5}),
        (SOAPMuon, {"rho": 1.0, "normalize": True}),
    ],
)
def test_batched_equals_reference_on_blocks(cls, kwargs):
    """Flat parameters split into blocks (2-D, 3-D, partly elementwise) match the one-block oracle."""
    shapes = [(40,), (40,), (7, 7), (9,)]
    blocks = [
        [(0, 16, (4, 4)), (16, 32, (4, 4))],  # 8 elementwise elements at the end
        [(0, 12, (2, 2, 3)), (12, 28, (4, 4))],
        None,  # own shape
        [],  # matrix role but no block: elementwise
    ]
    group = lambda ps: [{"params": ps, "role": "matrix", "blocks": blocks}]  # noqa: E731
    fast, slow = make_params(shapes), make_params(shapes)
    opt_fast = cls(group(fast), lr=1e-2, precondition_frequency=4, weight_decay=1e-2, **kwargs)
    ref_kwargs = dict(ortho=cls is SOAPMuon, **kwargs)
    if cls is SOAPMuon:
        ref_kwargs.setdefault("normalize", True)
    opt_slow = SOAPReference(group(slow), lr=1e-2, precondition_frequency=4, weight_decay=1e-2, **ref_kwargs)
    for t in range(25):
        run(opt_fast, fast, 1, start=t)
        run(opt_slow, slow, 1, start=t)
        assert max_rel(fast, slow) < 1e-10, t


def test_newton_schulz_soap_muon_matches_reference():
    """Full-rank shapes only: a rank-deficient Gram matrix has no unique eigenbasis (next test)."""
    shapes = [(6, 6), (5, 5), (3, 4, 5)]
    fast, slow = make_params(shapes), make_params(shapes)
    opt_fast = SOAPMuon(fast, lr=1e-2, rho=0.0)
    opt_slow = SOAPReference(slow, lr=1e-2, ortho=True, rho=0.0, normalize=True)
    for t in range(15):
        run(opt_fast, fast, 1, start=t)
        run(opt_slow, slow, 1, start=t)
    assert max_rel(fast, slow) < 1e-5  # Newton–Schulz runs in float32 in both
    assert max_rel(fast, make_params(shapes)) > 1e-2  # it did move


def test_rank_deficient_block_agrees_with_reference_outside_the_null_space():
    """Official SOAP on a (5, 8) block: after the first step the 8 × 8 Gram matrix has rank 5, so its
    null-space eigenvectors are arbitrary (batched and single ``eigh`` may differ). The first update
    must still agree with the oracle on the 5-dimensional row space, and later steps stay finite."""
    from .helpers import stochastic_loss

    fast, slow = make_params([(5, 8)]), make_params([(5, 8)])
    p0 = make_params([(5, 8)])[0].detach()
    opt_fast = SOAP(fast, lr=1e-2, null_space="official")
    opt_slow = SOAPReference(slow, lr=1e-2, null_space="official")
    probe = make_params([(5, 8)])
    (grad,) = torch.autograd.grad(stochastic_loss(probe, 0), probe)
    # the first gradient's row space: the range of the first Gram matrix Gᵀ G
    vh = torch.linalg.svd(grad, full_matrices=False).Vh
    row_space = vh.mT @ vh  # (8, 8) projector, rank 5
    run(opt_fast, fast, 2)
    run(opt_slow, slow, 2)
    step_fast = (fast[0].detach() - p0) @ row_space
    step_slow = (slow[0].detach() - p0) @ row_space
    assert float(step_slow.norm()) > 1e-3  # the step has a real row-space part
    assert float((step_fast - step_slow).norm() / step_slow.norm()) < 1e-10
    run(opt_fast, fast, 30, start=2)
    assert torch.isfinite(fast[0]).all()


def _rotate_null_basis(optimizer, seed):
    """Replace every null-space part of the optimizer's eigenbases by a random rotation of it."""
    sd = optimizer.state_dict()
    gen = torch.Generator().manual_seed(seed)
    rotated = 0
    for entry in sd["state"].values():
        for bases, nulls in zip(entry["Q"], entry["null"]):
            for q, null in zip(bases, nulls):
                k = int(null.sum()) if null is not None else 0
                if k < 2:
                    continue
                w = torch.linalg.qr(torch.randn(k, k, dtype=torch.float64, generator=gen))[0].to(q.dtype)
                q[:, null.bool()] = q[:, null.bool()] @ w
                rotated += 1
    optimizer.load_state_dict(sd)
    return rotated


@pytest.mark.parametrize("cls,kwargs", [(SOAP, {}), (SOAPMuon, {"rho": 0.5}), (SOAPMuon, {"rho": 0.0})])
def test_update_does_not_depend_on_the_null_space_basis(cls, kwargs):
    """Two runs that differ only in the (arbitrary) eigenvectors of a rank-deficient Gram matrix —
    here a random rotation of them — take the same steps under the isotropic null-space rule, through
    basis refreshes; official SOAP does not (which shows the test can fail)."""
    shapes = [(12, 16), (3, 4, 5), (6, 9)]
    finals = {}
    for rule in ("isotropic", "official"):
        a, b = make_params(shapes), make_params(shapes)
        opt_a = cls(a, lr=1e-2, precondition_frequency=5, null_space=rule, **kwargs)
        opt_b = cls(b, lr=1e-2, precondition_frequency=5, null_space=rule, **kwargs)
        run(opt_a, a, 1)
        run(opt_b, b, 1)
        assert _rotate_null_basis(opt_b, seed=5) >= 2  # the 16- and 9-sided modes have null spaces
        run(opt_a, a, 30, start=1)
        run(opt_b, b, 30, start=1)
        finals[rule] = max_rel(a, b)
    assert finals["isotropic"] < 1e-10
    assert finals["official"] > 1e-6


def test_rank_deficient_blocks_match_reference_under_the_isotropic_rule():
    """With the null space handled isotropically the batched optimizer and the oracle agree on
    non-square blocks too, step by step (no dependence on how either ``eigh`` breaks ties)."""
    shapes = [(5, 8), (12, 16), (9, 4)]
    for cls, ref_kwargs in ((SOAP, {}), (SOAPMuon, {"ortho": True, "rho": 0.5, "normalize": True})):
        fast, slow = make_params(shapes), make_params(shapes)
        opt_fast = cls(fast, lr=1e-2, precondition_frequency=4, **({"rho": 0.5} if cls is SOAPMuon else {}))
        opt_slow = SOAPReference(slow, lr=1e-2, precondition_frequency=4, **ref_kwargs)
        for t in range(25):
            run(opt_fast, fast, 1, start=t)
            run(opt_slow, slow, 1, start=t)
            assert max_rel(fast, slow) < 1e-9, (cls.__name__, t)


def test_isotropic_rule_leaves_full_rank_blocks_as_official_soap():
    a, b = make_params(FULL_RANK), make_params(FULL_RANK)
    opt_a = SOAP(a, lr=1e-2, precondition_frequency=3)
    opt_b = SOAP(b, lr=1e-2, precondition_frequency=3, null_space="official")
    run(opt_a, a, 20)
    run(opt_b, b, 20)
    assert max_rel(a, b) == 0.0


def test_misspelled_arguments_name_the_closest_valid_one():
    ps = make_params([(3, 3)])
    with pytest.raises(TypeError, match="'precondition_frequncy'.*did you mean 'precondition_frequency'"):
        SOAP(ps, precondition_frequncy=1)
    with pytest.raises(TypeError, match="'rhoo'.*did you mean 'rho'"):
        SOAPMuon(ps, rhoo=0.5)
    with pytest.raises(ValueError, match="null_space"):
        SOAP(ps, null_space="ignore")


def test_identity_basis_is_adam():
    """With every mode unpreconditioned (identity basis) SOAP is Adam, one step behind."""
    shapes = [(6, 4), (5,)]
    soap_params, adam_params = make_params(shapes), make_params(shapes)
    soap = SOAP(soap_params, lr=1e-2, betas=(0.9, 0.99), eps=0.0, max_precond_dim=0)
    adam = torch.optim.Adam(adam_params, lr=1e-2, betas=(0.9, 0.99), eps=0.0)

    def loss(ps):
        return sum(((p - 0.5) ** 4).sum() + p.sum() ** 2 for p in ps)

    soap.zero_grad()
    loss(soap_params).backward()
    soap.step()  # SOAP's first step only builds the (identity) basis
    for _ in range(20):
        for ps, opt in ((soap_params, soap), (adam_params, adam)):
            opt.zero_grad()
            loss(ps).backward()
            opt.step()
    assert max_rel(soap_params, adam_params) < 1e-12


def test_soap_muon_rho_one_without_normalisation_is_soap():
    shapes = [(6, 6), (3, 4, 5), (7,)]
    a, b = make_params(shapes), make_params(shapes)
    opt_a = SOAPMuon(a, lr=1e-2, rho=1.0, normalize=False, precondition_frequency=3)
    opt_b = SOAP(b, lr=1e-2, precondition_frequency=3)
    for t in range(20):
        run(opt_a, a, 1, start=t)
        run(opt_b, b, 1, start=t)
    assert max_rel(a, b) == 0.0


def test_soap_muon_rho_zero_newton_schulz_close_to_svd():
    """ρ=0 (Newton–Schulz) and ρ→0 through the SVD path give nearly the same first update."""
    shapes = [(12, 8)]
    p0 = make_params(shapes)
    updates = []
    for rho in (0.0, 1e-12):
        ps = make_params(shapes)
        opt = SOAPMuon(ps, lr=1e-2, rho=rho)
        run(opt, ps, 2)
        updates.append(ps[0].detach() - p0[0].detach())
    a, b = updates
    assert float((a * b).sum() / (a.norm() * b.norm())) > 0.95


@pytest.mark.parametrize("cls,kwargs", [(SOAP, {}), (SOAPMuon, {"rho": 0.5, "normalize": True})])
def test_several_three_mode_blocks_of_one_shape_match_the_reference(cls, kwargs):
    """Blocks of equal 3-D shape are stacked in one bucket; each must be rotated by its own bases
    (a broadcasting slip once mixed the blocks, or failed when a mode had size 1)."""
    shapes = [(3, 1, 8), (3, 1, 8), (3, 1, 8), (2, 3, 4), (2, 3, 4)]
    fast, slow = make_params(shapes), make_params(shapes)
    opt_fast = cls(fast, lr=1e-2, precondition_frequency=3, **kwargs)
    ref_kwargs = {"ortho": cls is SOAPMuon, **kwargs}
    opt_slow = SOAPReference(slow, lr=1e-2, precondition_frequency=3, **ref_kwargs)
    for t in range(12):
        run(opt_fast, fast, 1, start=t)
        run(opt_slow, slow, 1, start=t)
        assert max_rel(fast, slow) < 1e-9, t


def test_size_one_mode_equals_two_dimensional_block():
    """A 3-D block (m, 1, n) is preconditioned exactly like the 2-D block (m, n)."""
    flat2d, flat3d = make_params([(20,)]), make_params([(20,)])
    opt2 = SOAP(
        [{"params": flat2d, "role": "matrix", "blocks": [[(0, 20, (4, 5))]]}],
        lr=1e-2,
        precondition_frequency=3,
    )
    opt3 = SOAP(
        [{"params": flat3d, "role": "matrix", "blocks": [[(0, 20, (4, 1, 5))]]}],
        lr=1e-2,
        precondition_frequency=3,
    )
    for t in range(15):
        run(opt2, flat2d, 1, start=t)
        run(opt3, flat3d, 1, start=t)
    assert max_rel(flat3d, flat2d) < 1e-12


@pytest.mark.parametrize("cls", [SOAP, SOAPMuon])
def test_flat_blocks_equal_separate_matrices(cls):
    """Updating blocks of one flat (e3nn-style) weight == updating the reshaped blocks separately."""
    flat = make_params([(40,)])
    with torch.no_grad():
        parts = [flat[0][:12].view(3, 4).clone(), flat[0][12:32].view(4, 5).clone(), flat[0][32:].clone()]
    separate = [torch.nn.Parameter(x) for x in parts]
    opt_flat = cls(
        [{"params": flat, "role": "matrix", "blocks": [[(0, 12, (3, 4)), (12, 32, (4, 5))]]}],
        lr=1e-2,
        precondition_frequency=3,
    )
    opt_sep = cls(separate, lr=1e-2, precondition_frequency=3)
    gen = torch.Generator().manual_seed(3)
    for _ in range(12):
        target = torch.randn(40, dtype=torch.float64, generator=gen)
        opt_flat.zero_grad()
        opt_sep.zero_grad()
        (((flat[0] - target) ** 3).abs().sum() + (flat[0] @ target) ** 2).backward()
        joined = torch.cat([p.reshape(-1) for p in separate])
        (((joined - target) ** 3).abs().sum() + (joined @ target) ** 2).backward()
        opt_flat.step()
        opt_sep.step()
    joined = torch.cat([p.detach().reshape(-1) for p in separate])
    torch.testing.assert_close(flat[0].detach(), joined, rtol=1e-12, atol=1e-12)


def test_max_precond_dim_leaves_large_mode_unpreconditioned():
    ps = make_params([(3, 50)])
    opt = SOAP(ps, lr=1e-2, max_precond_dim=10)
    run(opt, ps, 3)
    state = opt.state_dict()["state"][0]
    gg, q = state["GG"][0], state["Q"][0]
    assert gg[0].shape == (3, 3) and gg[1] is None and q[1] is None


def test_float32_parameters_keep_their_dtype_and_track_float64():
    shapes = [(6, 6), (3, 4, 5), (7,)]
    p32, p64 = make_params(shapes, dtype=torch.float32), make_params(shapes)
    opt32, opt64 = SOAP(p32, lr=1e-2), SOAP(p64, lr=1e-2)
    run(opt32, p32, 15)
    run(opt64, p64, 15)
    assert all(p.dtype == torch.float32 for p in p32)
    state = opt32.state_dict()["state"][0]
    assert state["exp_avg"].dtype == torch.float32 and state["Q"][0][0].dtype == torch.float32
    assert max_rel([p.double() for p in p32], p64) < 1e-3


def test_basis_failure_is_counted_and_training_continues(monkeypatch):
    from mlipopt.optim import _linalg

    ps = make_params([(6, 6), (4, 5)])
    opt = SOAP(ps, lr=1e-2, precondition_frequency=2)

    def broken(mat):
        raise torch.linalg.LinAlgError("injected")

    monkeypatch.setattr(_linalg, "eigh", broken)
    monkeypatch.setattr(_linalg, "qr", broken)
    run(opt, ps, 6)
    assert opt.basis_failures > 0
    assert all(torch.isfinite(p).all() for p in ps)
    # the identity fallback basis makes these steps Adam steps: parameters still moved
    assert max_rel(ps, make_params([(6, 6), (4, 5)])) > 1e-3


def test_invalid_arguments_raise():
    ps = make_params([(3, 3)])
    with pytest.raises(ValueError, match="betas"):
        SOAP(ps, betas=(0.9, 1.5))
    with pytest.raises(ValueError, match="rho"):
        SOAPMuon(ps, rho=2.0)
    with pytest.raises(ValueError, match="does not fit"):
        SOAP([{"params": make_params([(10,)]), "role": "matrix", "blocks": [[(0, 12, (3, 4))]]}])
    with pytest.raises(ValueError, match="overlap"):
        SOAP(
            [
                {
                    "params": make_params([(20,)]),
                    "role": "matrix",
                    "blocks": [[(0, 12, (3, 4)), (8, 12, (2, 2))]],
                }
            ]
        )
    with pytest.raises(ValueError, match="role"):
        SOAP([{"params": ps, "role": "muon"}])
