"""GPU readiness without a GPU: an ordinary step (no basis refresh) reads nothing back from the device.

On CUDA, ``.item()``, ``bool(t)``, ``.tolist()``, ``.cpu()`` and ``nonzero`` wait for the device; here
they are replaced by functions that raise while such a step runs, so any host synchronisation in the
step fails the test on a CPU. The refresh steps (every ``precondition_frequency``) may synchronise: they
group the blocks by their determined rank.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from mlipopt.optim import SOAP, Muon, SOAPMuon

SYNCING = ["item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__"]


@contextlib.contextmanager
def no_host_sync():
    saved = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def forbid(name):
        def raiser(self, *args, **kwargs):
            raise AssertionError(f"host synchronisation in step(): Tensor.{name}")

        return raiser

    saved_nonzero = torch.nonzero
    try:
        for name in SYNCING:
            setattr(torch.Tensor, name, forbid(name))
        torch.nonzero = forbid("torch.nonzero")
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)
        torch.nonzero = saved_nonzero


def _params():
    gen = torch.Generator().manual_seed(0)
    shapes = [(12, 5), (6, 4, 3), (7,)]  # non-square (a rank-deficient side), 3-D, elementwise
    return [torch.nn.Parameter(torch.randn(*s, generator=gen)) for s in shapes]


def _low_rank_grads(params, step):
    """Rank-1 gradients: the Gram matrices keep null directions, so the isotropic rule is exercised."""
    gen = torch.Generator().manual_seed(100 + step)
    for p in params:
        if p.ndim == 2:
            p.grad = torch.randn(p.shape[0], 1, generator=gen) @ torch.randn(1, p.shape[1], generator=gen)
        else:
            p.grad = torch.randn(p.shape, generator=gen)


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: SOAP(ps, lr=1e-2, nonfinite="unchecked", weight_decay=1e-3),
        lambda ps: SOAP(ps, lr=1e-2, nonfinite="unchecked", null_space="official"),
        lambda ps: SOAPMuon(ps, lr=1e-3, rho=0.0, nonfinite="unchecked"),
        lambda ps: Muon(ps, lr=1e-2, nonfinite="unchecked"),
    ],
    ids=["soap", "soap-official", "soap-muon-rho0", "muon"],
)
def test_an_ordinary_step_does_not_synchronise_with_the_device(make):
    params = _params()
    opt = make(params)
    for step in range(1, 24):
        _low_rank_grads(params, step)
        refresh = isinstance(opt, SOAP) and (step - 1) % 10 == 0
        with contextlib.nullcontext() if refresh else no_host_sync():
            opt.step()
    assert all(torch.isfinite(p).all() for p in params)


def test_the_sync_detector_sees_a_synchronising_step():
    """The checked step reads its non-finite flag back: the detector must catch that."""
    params = _params()
    opt = SOAP(params, lr=1e-2)
    _low_rank_grads(params, 1)
    opt.step()
    _low_rank_grads(params, 2)
    with pytest.raises(AssertionError, match="host synchronisation"), no_host_sync():
        opt.step()


def test_unchecked_is_a_valid_mode_and_others_are_not():
    with pytest.raises(ValueError, match="nonfinite"):
        SOAP(_params(), nonfinite="ignore")
