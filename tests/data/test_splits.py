import numpy as np
import pytest

from mlipopt.data import force_mask, n_keep, split_indices


def test_split_is_reproducible_disjoint_and_sized():
    a = split_indices(100, [0.8, 0.1, 0.1], seed=7)
    b = split_indices(100, [0.8, 0.1, 0.1], seed=7)
    assert [len(p) for p in a] == [80, 10, 10]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert len(set(np.concatenate(a))) == 100
    c = split_indices(100, [0.8, 0.1, 0.1], seed=8)
    assert not np.array_equal(a[1], c[1])


def test_split_counts_and_errors():
    parts = split_indices(50, [30, 10, 0], seed=0)
    assert [len(p) for p in parts] == [30, 10, 0]
    with pytest.raises(ValueError, match="ask for 60 frames but only 50"):
        split_indices(50, [40, 20, 0], seed=0)
    with pytest.raises(ValueError, match="neither a fraction"):
        split_indices(50, [2.5, 0, 0], seed=0)


@pytest.mark.parametrize(
    "n, s, keep", [(10, 0.25, 3), (10, 0.15, 2), (500, 0.05, 25), (7, 0.0, 0), (7, 1.0, 7)]
)
def test_n_keep_is_round_half_up(n, s, keep):
    assert n_keep(n, s) == keep
    assert force_mask(n, s, seed=1).sum() == keep


def test_mask_is_fixed_per_split_and_seed():
    m1 = force_mask(200, 0.1, seed=42, split="train")
    np.testing.assert_array_equal(m1, force_mask(200, 0.1, seed=42, split="train"))
    assert not np.array_equal(m1, force_mask(200, 0.1, seed=42, split="val"))
    assert not np.array_equal(m1, force_mask(200, 0.1, seed=7, split="train"))


def test_mask_refuses_test_split_and_bad_fraction():
    with pytest.raises(ValueError, match="test keeps all forces"):
        force_mask(10, 0.5, seed=0, split="test")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        force_mask(10, 1.5, seed=0)
