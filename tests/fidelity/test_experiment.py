"""Experimental liquid references: the cited figures, the D(T) law in the units the fidelity results
use, and the first-peak finder the report compares them with."""

from __future__ import annotations

import numpy as np
import pytest

from mlipopt.fidelity.experiment import WATER, first_peak, observation


def test_water_diffusion_law_gives_the_measured_value_at_25_celsius_in_A2_per_ps():
    # Holz et al. 2000: 2.299e-9 m²/s at 298.15 K = 0.2299 Å²/ps
    assert WATER.diffusion.at(298.15) == pytest.approx(0.2299, abs=0.0005)
    assert WATER.diffusion.at(350.0) > WATER.diffusion.at(300.0)
    assert WATER.diffusion.at(450.0) is None  # outside the fit: no extrapolation


def test_first_peak_is_found_between_bins_and_ignores_a_higher_second_shell():
    r = np.arange(0.0, 6.0, 0.05)
    g = 1 - np.exp(-(((r - 2.0) / 0.4) ** 4))  # rises to 1, never above: no shell yet
    g += 1.57 * np.exp(-(((r - 2.8123) / 0.15) ** 2)) + 3.0 * np.exp(-(((r - 4.5) / 0.2) ** 2))
    position, height = first_peak(r, g)
    assert position == pytest.approx(2.8123, abs=0.005)
    assert height == pytest.approx(2.57, abs=0.02)
    with pytest.raises(ValueError, match="no coordination peak"):
        first_peak(r, 0.5 * np.ones_like(r))


def test_an_unknown_experimental_reference_names_the_known_ones():
    assert observation("water") is WATER
    with pytest.raises(ValueError, match="known: water"):
        observation("ammonia")
