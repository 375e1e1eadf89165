"""``mlipopt doctor``: what a bug report needs to know about this environment, in one paste."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import sys

from . import __version__
from .machine import cpu_model

#: extra → the distributions it brings (pyproject.toml); "installed" when every one is importable
EXTRAS = {
    "nequip": ["nequip", "nequip-allegro", "e3nn", "ase"],
    "study": ["sqlalchemy", "matplotlib", "tblite"],
    "fidelity": ["phonopy", "scipy"],
    "sevennet": ["sevenn"],
    "mace": ["mace-torch"],
    "ray": ["ray"],
}

#: model family → the module that must import for it
FAMILIES = {
    "nequip / allegro": "nequip",
    "sevennet-0": "sevenn",
    "mace": "mace",
    "cartesian": "torch",
}


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def report() -> str:
    """Versions, extras, model families, threads and CPU, as plain lines."""
    import torch  # the one heavy import: its version and threads are the point

    lines = [
        f"mlipopt {__version__} ({__file__.rsplit('/', 2)[0]})",
        f"python {platform.python_version()} ({sys.executable})",
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s), "
        f"CUDA {'available' if torch.cuda.is_available() else 'not available'}",
        f"cpu {cpu_model()} ({platform.machine()}, {platform.system()} {platform.release()})",
        "",
        "extras:",
    ]
    for extra, distributions in EXTRAS.items():
        versions = {d: _version(d) for d in distributions}
        missing = [d for d, v in versions.items() if v is None]
        state = "installed" if not missing else f"missing {', '.join(missing)}"
        found = ", ".join(f"{d} {v}" for d, v in versions.items() if v)
        lines.append(f"  [{extra}] {state}" + (f" ({found})" if found else ""))
    lines += ["", "model families:"]
    for name, module in FAMILIES.items():
        available = importlib.util.find_spec(module) is not None
        lines.append(f"  {name}: {'available' if available else 'not installed'}")
    if importlib.util.find_spec("mace") is None:
        lines.append("  (MACE trains in an environment of its own: README, 'Model families')")
    lines += ["", "Bit-for-bit re-runs hold on the same CPU model, torch build and thread count only."]
    return "\n".join(lines)
