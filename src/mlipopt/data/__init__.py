"""Datasets: reading and checking labelled frames, splits, force masks, energy references, batching."""

from .._lazy import lazy_exports

_EXPORTS = {
    "SYSTEMS": ".generate",
    "generate_frames": ".generate",
    "Batch": ".graphs",
    "GraphSet": ".graphs",
    "DataError": ".io",
    "Frames": ".io",
    "file_digest": ".io",
    "read_frames": ".io",
    "composition_matrix": ".references",
    "fit_energy_references": ".references",
    "isolated_atom_energies": ".references",
    "least_squares_per_element": ".references",
    "reference_energy": ".references",
    "force_mask": ".splits",
    "n_keep": ".splits",
    "split_indices": ".splits",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
