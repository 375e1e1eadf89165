"""Checkpoint round trips, non-finite gradients and per-group settings for all block optimizers."""

import io

import pytest
import torch

from mlipopt.optim import SOAP, Muon, NonFiniteGradientError, SOAPMuon

from ..conftest import same_state
from .helpers import make_params, run

SHAPES = [(40,), (6, 6), (9,), (3, 4, 5)]
BLOCKS = [[(0, 16, (4, 4)), (16, 32, (4, 4))], None, [], None]
FACTORIES = {
    "soap": lambda g: SOAP(g, lr=1e-2, precondition_frequency=3, weight_decay=1e-3),
    "soap_muon": lambda g: SOAPMuon(g, lr=1e-2, precondition_frequency=3, adam_betas=(0.9, 0.99)),
    "soap_muon_ns": lambda g: SOAPMuon(g, lr=1e-2, precondition_frequency=3, rho=0.0),
    "muon": lambda g: Muon(g, lr=1e-2, weight_decay=1e-3),
}


def groups(params):
    return [
        {"params": params[:3], "role": "matrix", "blocks": BLOCKS[:3], "param_names": ["a", "b", "c"]},
        {"params": params[3:], "role": "adam", "lr": 5e-3, "param_names": ["d"]},
    ]


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_state_dict_round_trip_is_bit_identical(name, dtype):
    make = FACTORIES[name]
    straight = make_params(SHAPES, dtype)
    opt = make(groups(straight))
    run(opt, straight, 7)
    buffer = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in straight], "opt": opt.state_dict()}, buffer)
    run(opt, straight, 8, start=7)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed = [torch.nn.Parameter(p) for p in saved["params"]]
    opt2 = make(groups(resumed))
    opt2.load_state_dict(saved["opt"])
    run(opt2, resumed, 8, start=7)
    for a, b in zip(straight, resumed):
        assert torch.equal(a.detach(), b.detach())


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_a_loaded_state_is_the_saved_state_dtypes_included(name):
    """torch's load_state_dict casts every state tensor to the parameter's dtype; SOAP's boolean null-space
    flags must come back boolean, so that a trainer that saves a just-loaded optimizer (MACE's restart)
    writes the checkpoint it read."""
    params = make_params(SHAPES, torch.float32)
    opt = FACTORIES[name](groups(params))
    run(opt, params, 4)
    saved = opt.state_dict()
    kinds = {v.dtype for state in saved["state"].values() for v in state.values() if torch.is_tensor(v)}
    kinds |= {t.dtype for st in saved["state"].values() for v in st.values() if isinstance(v, list)
              for row in v if isinstance(row, list) for t in row if torch.is_tensor(t)}  # fmt: skip
    if name.startswith("soap"):
        assert torch.bool in kinds  # the null flags: what the cast used to turn into floats
    again = FACTORIES[name](groups(params))
    again.load_state_dict(saved)
    assert same_state(saved["state"], again.state_dict()["state"])


def test_state_dict_is_a_snapshot_of_plain_tensors():
    params = make_params(SHAPES)
    opt = SOAP(groups(params), lr=1e-2)
    run(opt, params, 3)
    sd = opt.state_dict()
    assert set(sd["state"][0]) == {"exp_avg", "exp_avg_sq", "GG", "Q", "null"}
    assert sd["state"][0]["exp_avg"].shape == (40,)
    assert [len(x) for x in sd["state"][0]["GG"]] == [2, 2]
    assert sd["param_groups"][0]["blocks"][0] == [(0, 16, (4, 4)), (16, 32, (4, 4))]
    before = sd["state"][1]["exp_avg"].clone()
    run(opt, params, 2, start=3)
    assert torch.equal(sd["state"][1]["exp_avg"], before)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_nonfinite_gradient_raises_with_parameter_name(name):
    params = make_params(SHAPES)
    opt = FACTORIES[name](groups(params))
    run(opt, params, 2)
    before = [p.detach().clone() for p in params]
    opt.zero_grad()
    for p in params:
        p.grad = torch.zeros_like(p)
    params[2].grad[3] = float("nan")
    with pytest.raises(NonFiniteGradientError, match=r"parameter c of shape \(9,\)"):
        opt.step()
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, params))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_nonfinite_gradient_skip_counts_and_recovers(name):
    params = make_params(SHAPES)
    opt = FACTORIES[name](groups(params))
    opt.defaults["nonfinite"] = "skip"
    run(opt, params, 2)
    before = [p.detach().clone() for p in params]
    opt.zero_grad()
    for p in params:
        p.grad = torch.full_like(p, float("inf"))
    opt.step()
    assert opt.skipped_steps == 1
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, params))
    run(opt, params, 2, start=2)
    assert all(torch.isfinite(p).all() for p in params)
    assert not all(torch.equal(a, b.detach()) for a, b in zip(before, params))
    assert opt.state_dict()["param_groups"][0]["skipped_steps"] == 1


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_a_huge_finite_gradient_is_not_taken_for_a_nonfinite_one(name):
    """The check's fast path is a 2-norm, which overflows in float32 for entries beyond ~1e19: such a
    gradient is finite, so the step must be taken (not raised on, not skipped)."""
    params = make_params(SHAPES, torch.float32)
    opt = FACTORIES[name](groups(params))
    opt.defaults["nonfinite"] = "skip"
    run(opt, params, 2)
    for p in params:
        p.grad = torch.full_like(p, 1e25)
    assert not torch.isfinite(torch.linalg.vector_norm(params[0].grad))  # the fast path does overflow
    opt.step()
    assert opt.skipped_steps == 0


def test_nonfinite_option_is_validated():
    with pytest.raises(ValueError, match="nonfinite"):
        SOAP(make_params([(3, 3)]), nonfinite="ignore")


def test_parameters_without_gradients_are_left_alone():
    params = make_params([(4, 4), (5, 5)])
    opt = SOAP(params, lr=1e-2)
    frozen = params[1].detach().clone()
    for _ in range(4):
        opt.zero_grad()
        (params[0] ** 2).sum().backward()
        opt.step()
    assert torch.equal(params[1].detach(), frozen)
    # and a parameter that starts receiving gradients later is initialised then
    for _t in range(4):
        opt.zero_grad()
        sum((p**2).sum() for p in params).backward()
        opt.step()
    assert not torch.equal(params[1].detach(), frozen)
    assert len(opt.state_dict()["state"]) == 2


def test_per_group_learning_rates_apply():
    a, b = make_params([(4, 4)]), make_params([(4, 4)])
    opt = Muon([{"params": a, "lr": 0.0}, {"params": b, "lr": 1e-2}])
    a0 = a[0].detach().clone()
    run(opt, a + b, 3)
    assert torch.equal(a[0].detach(), a0)
