"""Atomic checkpoint files: a reader never sees a half-written file, whenever the writer is killed.

Loading is safe: mlipopt writes only tensors and plain data, so every file is read with
``torch.load(weights_only=True)``, which refuses pickled objects that would run code (a run folder
received from someone else cannot execute anything through ``mlipopt.calculator.load``, ``mlipopt
refine`` or a resume).
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Permissions of written files: what ``open()`` would give (``mkstemp`` alone gives 0600).
FILE_MODE = 0o666 & ~_umask()
TMP_PATTERN = ".*.tmp"


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)  # atomic on POSIX and Windows within one file system
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_orphans(folder: str | Path) -> int:
    """Delete temporary files a killed writer left in ``folder`` (never the finished files); count."""
    removed = 0
    for tmp in Path(folder).glob(TMP_PATTERN):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    _atomic_write(Path(path), lambda handle: torch.save(obj, handle))


def save_text(text: str, path: str | Path) -> None:
    _atomic_write(Path(path), lambda handle: handle.write(text.encode()))


def save_json(obj: Any, path: str | Path) -> None:
    save_text(json.dumps(obj, indent=2) + "\n", path)


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read: foreign (it would run code), truncated, or not a torch file."""


def load_torch(path: str | Path) -> Any:
    """Tensors and plain data from a file written by :func:`save_torch`; :class:`CheckpointError` else."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused to load: it holds objects other than tensors and plain data, so loading it "
            f"could run code ({reason[:200]}). mlipopt writes only tensors and plain data; this file was "
            "not written by mlipopt or was modified."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise CheckpointError(
            f"{path}: unreadable ({str(exc).splitlines()[0][:200]}); it may have been cut short by a crash "
            "or a full disk. Start the run again with `mlipopt train CONFIG --restart`."
        ) from None
