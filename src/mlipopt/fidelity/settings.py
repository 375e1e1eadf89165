"""What one fidelity evaluation runs: MD length, temperature, seeds and failure thresholds. A module of its
own, with no heavy imports, so a study spec can hold these settings without importing ASE or torch."""

from __future__ import annotations

from dataclasses import dataclass

#: what each protocol runs: see :mod:`mlipopt.fidelity.protocols`
PROTOCOLS = ("molecule", "liquid", "crystal")
#: reference calculators by name (else a recorded trajectory file)
REFERENCE_CALCULATORS = ("xtb", "emt")


@dataclass
class FidelitySettings:
    temperature_K: float = 600.0
    steps: int = 2000
    timestep_fs: float = 0.5
    seeds: int = 2
    interval: int = 10
    ensemble: str = "langevin"
    rmax: float = 6.0
    rdf_threshold: float = 1.0  # minimum windowed ∫|Δg| dr counted as failure (liquids, crystals)
