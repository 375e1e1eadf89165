"""Datasets: reading and checking labelled frames, splits, force masks, energy references, batching."""

from .generate import SYSTEMS, generate_frames
from .graphs import Batch, GraphSet
from .io import DataError, Frames, file_digest, read_frames
from .references import (
    composition_matrix,
    fit_energy_references,
    isolated_atom_energies,
    least_squares_per_element,
    reference_energy,
)
from .splits import force_mask, n_keep, split_indices

__all__ = [
    "Batch",
    "DataError",
    "Frames",
    "GraphSet",
    "SYSTEMS",
    "composition_matrix",
    "file_digest",
    "fit_energy_references",
    "generate_frames",
    "force_mask",
    "isolated_atom_energies",
    "least_squares_per_element",
    "n_keep",
    "read_frames",
    "reference_energy",
    "split_indices",
]
