import math

import pytest
import torch

from mlipopt.optim import Muon, muon_scale
from mlipopt.optim.reference import MuonReference

from .helpers import make_params, max_rel, run


def test_batched_equals_reference_on_blocks():
    shapes = [(40,), (6, 6), (9,), (2, 3, 4)]
    blocks = [[(0, 16, (4, 4)), (16, 32, (4, 4))], None, [], [(0, 24, (2, 3, 4))]]
    layouts = ["in_out", "out_in", "out_in", "in_out"]

    def groups(ps):
        return [{"params": ps, "role": "matrix", "blocks": blocks, "layouts": layouts}]

    for scale in ("match_rms_adamw", "original"):
        fast, slow = make_params(shapes), make_params(shapes)
        opt_fast = Muon(groups(fast), lr=1e-2, weight_decay=1e-2, scale=scale)
        opt_slow = MuonReference(groups(slow), lr=1e-2, weight_decay=1e-2, scale=scale)
        for t in range(15):
            run(opt_fast, fast, 1, start=t)
            run(opt_slow, slow, 1, start=t)
        assert max_rel(fast, slow) < 1e-6  # both orthogonalise in float32


def test_plain_params_convention():
    """Plain tensors: ≥2-D → one (d0, rest) matrix, 1-D → AdamW; matches the oracle."""
    shapes = [(5, 7), (3, 2, 4), (6,)]
    fast, slow = make_params(shapes), make_params(shapes)
    opt_fast, opt_slow = Muon(fast, lr=1e-2), MuonReference(slow, lr=1e-2)
    for t in range(10):
        run(opt_fast, fast, 1, start=t)
        run(opt_slow, slow, 1, start=t)
    assert max_rel(fast, slow) < 1e-6


def test_matrix_update_is_orthogonal_and_scaled():
    """First step from zero momentum: ΔW = −η·0.2·√max(m,n)·NS5(G), singular values near 1·scale."""
    (w,) = make_params([(16, 32)])
    w0 = w.detach().clone()
    opt = Muon([w], lr=0.1, momentum=0.0)
    w.grad = torch.randn(16, 32, dtype=torch.float64)
    opt.step()
    delta = (w0 - w.detach()) / (0.1 * 0.2 * math.sqrt(32))
    s = torch.linalg.svdvals(delta)
    assert float(s.min()) > 0.6 and float(s.max()) < 1.25


def test_adam_role_is_adamw():
    shapes = [(4, 4), (5,)]
    a, b = make_params(shapes), make_params(shapes)
    muon = Muon([{"params": a, "role": "adam"}], lr=1e-2, adam_betas=(0.9, 0.999), weight_decay=0.1)
    adamw = torch.optim.AdamW(b, lr=1e-2, betas=(0.9, 0.999), weight_decay=0.1)
    for t in range(10):
        run(muon, a, 1, start=t)
        run(adamw, b, 1, start=t)
    assert max_rel(a, b) < 1e-12


def test_scale_rules():
    assert muon_scale((64, 16), "match_rms_adamw") == pytest.approx(0.2 * 8)
    assert muon_scale((64, 16), "original", "out_in") == pytest.approx(2.0)
    assert muon_scale((64, 16), "original", "in_out") == pytest.approx(1.0)  # e3nn stores (in, out)
    assert muon_scale((2, 2, 16), "original", "in_out") == pytest.approx(2.0)
    with pytest.raises(ValueError):
        muon_scale((2, 2), "bogus")


def test_misspelled_argument_names_the_closest_valid_one():
    with pytest.raises(TypeError, match="'momentun'.*did you mean 'momentum'"):
        Muon(make_params([(3, 3)]), momentun=0.9)
