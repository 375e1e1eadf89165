"""Reproducible train/validation/test splits and sparse force masks (Harari et al. appendix B).

Both are functions of the seed alone, so every optimizer in a study sees the same frames and the same
force-labelled subset.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Salts that make the force masks of different splits independent draws for one seed.
_SPLIT_SALT = {"train": 1, "val": 2}


def split_indices(n: int, sizes: Sequence[float], seed: int) -> list[np.ndarray]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into consecutive parts of the given ``sizes``.

    A size up to 1 is a fraction of ``n`` (rounded half up); a larger size is a frame count. The parts
    must fit into ``n``.
    """
    counts = []
    for s in sizes:
        if s < 0:
            raise ValueError(f"split sizes must be non-negative, got {list(sizes)}")
        if s > 1 and s != int(s):
            raise ValueError(f"split size {s} is neither a fraction (≤ 1) nor a whole frame count")
        counts.append(int(np.floor(s * n + 0.5)) if s <= 1 else int(s))
    if sum(counts) > n:
        raise ValueError(f"split sizes {list(sizes)} ask for {sum(counts)} frames but only {n} exist")
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum([0, *counts])
    return [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def n_keep(n: int, fraction: float) -> int:
    """N_keep = round(s·N), rounding half up (Harari et al. appendix B)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"force fraction must lie in [0, 1], got {fraction}")
    return int(np.floor(fraction * n + 0.5))


def force_mask(n: int, fraction: float, seed: int, split: str = "train") -> np.ndarray:
    """Boolean mask of the ``round(fraction·n)`` frames that keep force labels in ``split``.

    Drawn uniformly without replacement, once per (split, seed); the test split is never masked.
    """
    if split not in _SPLIT_SALT:
        raise ValueError(
            f"force masks apply to {sorted(_SPLIT_SALT)} only (test keeps all forces), got {split!r}"
        )
    mask = np.zeros(n, dtype=bool)
    keep = n_keep(n, fraction)
    mask[np.random.default_rng([seed, _SPLIT_SALT[split]]).choice(n, size=keep, replace=False)] = True
    return mask
