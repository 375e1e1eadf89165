"""Failure criteria of the fidelity protocols (Fu et al. 2022): bonds that stray, liquids whose RDF drifts.

They plug into the MD runner of :mod:`mlipopt.md` (which also provides ``BlowUp`` and ``run_md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms
from ase.data import covalent_radii

from ..md import BlowUp, MDResult, Monitor, run_md
from .observables import integrated_absolute_difference, rdf

__all__ = ["BlowUp", "BondLength", "MDResult", "Monitor", "RDFDrift", "run_md"]


class BondLength(Monitor):
    """A bonded pair deviating more than ``max_deviation`` Å from its reference length (molecules).

    Bonds are the pairs closer than 1.2 × the sum of covalent radii in ``reference``; the reference
    length is their distance there (or a mean over reference frames).
    """

    def __init__(self, reference: Atoms | Sequence[Atoms], max_deviation: float = 0.5) -> None:
        frames = [reference] if isinstance(reference, Atoms) else list(reference)
        first = frames[0]
        radii = covalent_radii[first.numbers]
        d = first.get_all_distances()
        i, j = np.nonzero(np.triu(d < 1.2 * (radii[:, None] + radii[None, :]), k=1))
        self.pairs = np.stack([i, j], axis=1)
        self.reference = np.mean([f.get_all_distances()[i, j] for f in frames], axis=0)
        self.max_deviation = max_deviation

    def __call__(self, atoms: Atoms, history: list[Atoms]) -> str | None:
        i, j = self.pairs.T
        dev = np.abs(atoms.get_all_distances()[i, j] - self.reference)
        k = int(np.argmax(dev))
        if dev[k] > self.max_deviation:
            return f"bond {i[k]}-{j[k]} deviates {dev[k]:.2f} Å from its reference length"
        return None


class RDFDrift(Monitor):
    """Windowed g(r) (last ``window`` frames) drifting from the reference: ∫|Δg| dr > ``threshold``."""

    def __init__(
        self, reference_frames: Sequence[Atoms], rmax: float, window: int = 10, threshold: float = 1.0
    ):
        self.rmax, self.window, self.threshold = rmax, window, threshold
        self.r, self.g_ref = rdf(reference_frames, rmax)

    def __call__(self, atoms: Atoms, history: list[Atoms]) -> str | None:
        if len(history) < self.window:
            return None
        _, g = rdf(history[-self.window :], self.rmax)
        error = integrated_absolute_difference(self.r, g, self.g_ref)
        return f"windowed RDF error {error:.2f} > {self.threshold}" if error > self.threshold else None
