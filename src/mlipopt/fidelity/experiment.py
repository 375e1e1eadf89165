"""Experimental references for liquids, beside the (xTB) reference MD a model was trained on.

A model trained on xTB labels should reproduce xTB's liquid, not experiment's: GFN-xTB water is
over-structured and diffuses differently from real water, so a gap between a model and experiment that
its xTB reference shares is the reference's, not the optimizer's. The report therefore shows both.

Water (``observed: water``):

- O–O pair-distribution function of ambient water from X-ray diffraction: first maximum at
  2.80(1) Å with height 2.57(5) (Skinner, Huang, Schlesinger, Pettersson, Nilsson & Benmore,
  J. Chem. Phys. 138, 074506 (2013), doi:10.1063/1.4790861).
- Self-diffusion coefficient from NMR, fitted by Holz, Heil & Sacco, Phys. Chem. Chem. Phys. 2, 4740
  (2000), doi:10.1039/B005319H, as the Speedy–Angell power law D = D₀ (T/Tₛ − 1)^γ with
  D₀ = 1.635·10⁻⁸ m²/s, Tₛ = 215.05 K, γ = 2.063, over 0–100 °C: 2.30·10⁻⁹ m²/s at 298.15 K.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: 1e-9 m²/s in Å²/ps (1e-9 · 1e20 Å² / 1e12 ps)
NM2_PER_NS_IN_A2_PER_PS = 0.1


@dataclass(frozen=True)
class PeakObservation:
    pair: str  # element pair as the fidelity results name it, e.g. "O-O"
    position_A: float
    position_error_A: float
    height: float
    height_error: float
    source: str


@dataclass(frozen=True)
class DiffusionLaw:
    """D(T) = D₀ (T/Tₛ − 1)^γ over [t_min_K, t_max_K] (Speedy–Angell form)."""

    d0_m2_per_s: float
    ts_K: float
    gamma: float
    t_min_K: float
    t_max_K: float
    source: str

    def at(self, temperature_K: float) -> float | None:
        """D in Å²/ps at ``temperature_K``, or None outside the fitted range (no extrapolation)."""
        if not self.t_min_K <= temperature_K <= self.t_max_K:
            return None
        d = self.d0_m2_per_s * (temperature_K / self.ts_K - 1.0) ** self.gamma
        return d / 1e-9 * NM2_PER_NS_IN_A2_PER_PS


@dataclass(frozen=True)
class LiquidObservation:
    name: str
    peak: PeakObservation
    diffusion: DiffusionLaw


WATER = LiquidObservation(
    name="water",
    peak=PeakObservation(
        pair="O-O",
        position_A=2.80,
        position_error_A=0.01,
        height=2.57,
        height_error=0.05,
        source="Skinner et al., J. Chem. Phys. 138, 074506 (2013)",
    ),
    diffusion=DiffusionLaw(
        d0_m2_per_s=1.635e-8,
        ts_K=215.05,
        gamma=2.063,
        t_min_K=273.15,
        t_max_K=373.15,
        source="Holz, Heil & Sacco, Phys. Chem. Chem. Phys. 2, 4740 (2000)",
    ),
)

OBSERVATIONS = {"water": WATER}


def observation(name: str) -> LiquidObservation:
    """The experimental reference called ``name`` (a study's ``fidelity.observed``)."""
    if name not in OBSERVATIONS:
        raise ValueError(f"no experimental reference {name!r}; known: {', '.join(OBSERVATIONS)}")
    return OBSERVATIONS[name]


def first_peak(r: np.ndarray, g: np.ndarray) -> tuple[float, float]:
    """Position and height of the first maximum of g(r) that rises above 1 (the first coordination
    shell), refined by a parabola through the highest bin and its neighbours."""
    r, g = np.asarray(r, dtype=float), np.asarray(g, dtype=float)
    above = np.flatnonzero(g > 1.0)
    if len(above) == 0:
        raise ValueError("g(r) never exceeds 1: no coordination peak")
    i = above[0]
    while i + 1 < len(g) and g[i + 1] >= g[i]:
        i += 1
    if 0 < i < len(g) - 1:
        a, b, c = g[i - 1], g[i], g[i + 1]
        denominator = a - 2 * b + c
        shift = 0.5 * (a - c) / denominator if denominator < 0 else 0.0
        step = r[1] - r[0]
        return float(r[i] + shift * step), float(b - 0.25 * (a - c) * shift)
    return float(r[i]), float(g[i])
