"""Forgetting: how far fine-tuning moves a pretrained model away from its own behaviour.

No pretraining data is needed. Structures are sampled by Langevin MD driven by the *pretrained* model,
starting from frames of the fine-tuning training file, and labelled with the pretrained model's own
energies and forces. The fine-tuned model's error on a held-out set of them is the forgetting measure
(zero before the first step, by construction); a disjoint set of such frames can be mixed into training
("replay", in the spirit of rehearsal for continual learning) to hold the model near its pretrained
behaviour away from the new data.

Held-out and replay frames come from different trajectories: held-out ones start at training-file
frames 0, 2, 4, ...; replay ones at 1, 3, 5, ..., with their own thermostat seeds. Energies are stored
as predicted by the pretrained model; the trainer moves them onto the fine-tuning data's energy
reference with the same per-element offsets it adds to the model's shifts, so the untouched model
scores zero on them. Frames are cached under ``$MLIPOPT_CACHE/pretrained`` (keyed by checkpoint,
start structures and MD settings): a study generates them once for all its runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
from ase import Atoms

from .._filelock import exclusive
from ..data import Frames, read_frames, reference_energy
from ..data.xtb import cache_dir
from ..md import BlowUp, run_md
from ..models import PRESETS, ModelFamily
from .checkpoint import save_text
from .config import ConfigError, ForgettingConfig

STREAMS = {"heldout": 0, "replay": 1}


def _cache_file(checkpoint: str, starts: list[Atoms], n: int, stream: str, cfg: ForgettingConfig) -> Path:
    digest = hashlib.sha1()
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("frames", "replay_frames")}
    digest.update(json.dumps({"checkpoint": checkpoint, "n": n, "stream": stream, **settings}).encode())
    for atoms in starts:
        digest.update(atoms.numbers.tobytes())
        digest.update(np.round(atoms.positions, 6).tobytes())
    return cache_dir() / "pretrained" / f"{checkpoint}-{stream}-{digest.hexdigest()[:12]}.xyz"


def pretrained_frames(
    family: ModelFamily,
    model_config: Any,
    pool: Frames,
    n_frames: int,
    stream: str,
    cfg: ForgettingConfig,
    log: Callable[[str], None] = print,
) -> Frames:
    """``n_frames`` structures sampled and labelled by the trained model the run starts from
    (``model_config`` of ``family``).

    ``stream`` is ``"heldout"`` or ``"replay"`` (disjoint start frames and seeds). Labels are the
    pretrained model's raw predictions (its own energy reference).
    """
    if n_frames <= 0:
        raise ValueError("n_frames must be positive")
    offset = STREAMS[stream]
    n_traj = math.ceil(n_frames / cfg.frames_per_trajectory)
    candidates = list(range(offset, len(pool), 2))
    if not candidates:
        raise ConfigError(f"the training file has too few frames to start {stream} trajectories")
    starts = [pool.atoms[candidates[i % len(candidates)]] for i in range(n_traj)]
    checkpoint = PRESETS[model_config.preset].get("checkpoint") or Path(model_config.file or "model").stem
    cache = _cache_file(checkpoint, starts, n_frames, stream, cfg)
    with exclusive(cache.with_suffix(".lock")):  # parallel runs of a study: one samples, the rest wait
        if not cache.is_file():
            _sample(family, model_config, starts, n_frames, stream, cfg, cache, log)
    return read_frames(cache)


def _sample(
    family: ModelFamily,
    model_config: Any,
    starts: list[Atoms],
    n_frames: int,
    stream: str,
    cfg: ForgettingConfig,
    cache: Path,
    log: Callable[[str], None],
) -> None:
    offset, n_traj = STREAMS[stream], len(starts)
    model = family.build(model_config, None, 0).eval()
    type_names, r_max = family.defaults(model_config)
    calculator = family.calculator(model, type_names or [], r_max, "cpu")
    sampled: list[Atoms] = []
    for t, start in enumerate(starts):
        if len(sampled) >= n_frames:
            break
        clean = Atoms(start.numbers, start.positions, cell=start.cell, pbc=start.pbc)
        result = run_md(
            clean,
            calculator,
            temperature_K=cfg.temperature,
            steps=cfg.steps_between_frames * cfg.frames_per_trajectory,
            timestep_fs=cfg.timestep_fs,
            interval=cfg.steps_between_frames,
            monitors=[BlowUp()],
            seed=cfg.seed * 1000 + 2 * t + offset,
        )
        frames = result.frames[1:]  # the start is a training frame: never part of the sampled set
        if not result.stable:
            frames = frames[:-1]
            stop = f"{result.failed_at_ps:.3f} ps ({result.reason})"
            log(f"forgetting: {stream} trajectory {t} stopped at {stop}")
        sampled.extend(frames)
        where = f"{stream} trajectory {t + 1}/{n_traj} at {cfg.temperature:g} K"
        log(f"forgetting: {where} → {len(sampled)} frames")
    if len(sampled) < n_frames:
        raise RuntimeError(
            f"the pretrained model's MD gave {len(sampled)} of {n_frames} {stream} frames (unstable at "
            f"{cfg.temperature:g} K?); lower forgetting.temperature"
        )
    sampled = sampled[:n_frames]
    for atoms in sampled:
        atoms.info["config_type"] = f"pretrained-{stream}"
    buffer = io.StringIO()
    ase.io.write(buffer, sampled, format="extxyz")
    save_text(buffer.getvalue(), cache)  # atomic: an interrupted generation leaves no half file


def shift_energies(frames: Frames, per_element: dict[str, float]) -> Frames:
    """``frames`` with Σ_i δ(Z_i) added to every energy (the refit of the model's energy shifts)."""
    return Frames(
        frames.atoms, frames.energy + reference_energy(frames, per_element), frames.forces, frames.source
    )
