"""Writing figures: one place for the layout, resolution and clean-up every figure of mlipopt shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_figure(fig: Any, path: Path | str, dpi: int = 130) -> None:
    """Lay out, write and close ``fig`` (pyplot keeps every open figure alive until closed, which
    long studies that draw many reports would otherwise accumulate)."""
    import matplotlib.pyplot as plt  # matplotlib comes with the study extra: imported when drawing

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
