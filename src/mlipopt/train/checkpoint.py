"""Atomic checkpoint files: a reader never sees a half-written file, whenever the writer is killed."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows within one file system
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    _atomic_write(Path(path), lambda handle: torch.save(obj, handle))


def save_text(text: str, path: str | Path) -> None:
    _atomic_write(Path(path), lambda handle: handle.write(text.encode()))


def save_json(obj: Any, path: str | Path) -> None:
    save_text(json.dumps(obj, indent=2) + "\n", path)


def load_torch(path: str | Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=False)
