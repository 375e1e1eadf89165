"""A run's data, ready to train on: splits, force masks, graphs, energy references, extra test sets.

Reading is separate from training so that training, refinement, spectra and step-cost measurements
prepare the same data the same way (and the config is only read: resolved values — the element types
found in the data, the cutoff — are returned beside it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import ase.data
import numpy as np
import torch

from ..data import (
    DataError,
    Frames,
    GraphSet,
    fit_energy_references,
    force_mask,
    generate_frames,
    isolated_atom_energies,
    read_frames,
    reference_energy,
    split_indices,
)
from ..models import ModelFamily
from .config import ConfigError, RunConfig

#: Fewer force-labelled validation frames than this draw a warning (Harari et al. masks validation too).
MIN_VAL_FORCE_FRAMES = 10


@dataclass
class TrainingData:
    """Everything a run reads from its data files, turned into model inputs by the family's backend."""

    type_names: list[str]
    r_max: float
    backend: Any
    sets: dict[str, GraphSet]  # train, val, test
    extra_sets: dict[str, GraphSet]
    pool: Frames  # the frames the splits were drawn from
    e0: dict[str, float]
    constant_energy_mae: dict[str, float]  # meV/atom of per-element constants fitted on train, per split
    splits_record: dict[str, Any] = field(default_factory=dict)


def _read(config: RunConfig, path: str, max_frames: int | None = None) -> Frames:
    d = config.data
    index = ":" if max_frames is None else f":{max_frames}"
    return read_frames(path, d.energy_key, d.forces_key, index=index, require_forces=d.force_fraction > 0)


def split_frames(config: RunConfig) -> tuple[Frames, dict[str, Frames]]:
    """The pool of frames and its train/val/test split (separate val/test files replace theirs)."""
    d = config.data
    pool = generate_frames(**asdict(d.generate)) if d.generate else _read(config, d.train, d.max_frames)
    sizes = list(d.split)
    limits = {"val": None, "test": d.max_test_frames}
    given = {
        name: _read(config, getattr(d, name), limits[name]) for name in ("val", "test") if getattr(d, name)
    }
    for i, name in ((1, "val"), (2, "test")):
        if name in given:
            sizes[i] = 0
    try:
        parts = split_indices(len(pool), sizes, seed=config.seed)
    except ValueError as exc:
        raise ConfigError(f"data.split: {exc} (in {pool.source})") from None
    frames = {name: pool.subset(idx) for name, idx in zip(("train", "val", "test"), parts)}
    frames.update(given)
    if d.train_subset is not None:  # nested training sets of a learning curve; val and test stay fixed
        if d.train_subset > len(frames["train"]):
            raise ConfigError(
                f"data.train_subset={d.train_subset} exceeds the training split's {len(frames['train'])} "
                f"frames (data.split={d.split})"
            )
        frames["train"] = frames["train"].subset(list(range(d.train_subset)))
    if len(frames["train"]) == 0:
        raise ConfigError(f"the training split is empty ({len(pool)} frames, data.split={d.split})")
    return pool, frames


def prepare_data(config: RunConfig, family: ModelFamily, log: Callable[[str], None] = print) -> TrainingData:
    """Read, check, split and mask the run's data and build the family's graphs."""
    c, d = config, config.data
    pool, frames = split_frames(config)
    if not family.starts_pretrained(c.model):  # a trained model knows elements its fine-tuning data lack
        check_elements_are_trained(frames)
    warn_duplicates(frames, log)
    known_types, default_r_max = family.defaults(c.model)
    type_names = list(c.model.type_names or known_types or sorted(
        {el for f in frames.values() for el in f.elements()}, key=ase.data.atomic_numbers.__getitem__
    ))  # fmt: skip
    r_max = float(c.model.r_max or default_r_max)
    backend = family.backend(c.model, type_names, r_max)
    if d.energy_references == "fit":
        e0 = fit_energy_references(frames["train"], type_names)
    else:
        e0 = isolated_atom_energies(d.energy_references, d.energy_key)
    val_fraction = d.force_fraction if d.val_force_labels == "masked" else 1.0
    masks = {
        "train": force_mask(len(frames["train"]), d.force_fraction, c.seed, "train"),
        "val": force_mask(len(frames["val"]), val_fraction, c.seed, "val"),
        "test": None,  # never masked
    }
    sets = {name: GraphSet(f, backend, type_names, masks[name]) for name, f in frames.items()}
    extra = {name: _extra_set(config, name, frames, backend, type_names, log) for name in d.extra_tests}
    data = TrainingData(
        type_names, r_max, backend, sets, extra, pool, e0, constant_predictor_mae(frames, type_names)
    )
    data.splits_record = {
        name: {
            "source": f.source,
            "frames": [int(i) for i in f.index],
            "force_labelled": [int(i) for i, m in zip(f.index, sets[name].force_mask) if m],
        }
        for name, f in frames.items()
    }
    log(
        f"data: {len(frames['train'])} train / {len(frames['val'])} val / {len(frames['test'])} test frames; "
        f"forces on {sets['train'].n_force_frames} train and {sets['val'].n_force_frames} val frames "
        f"(s = {d.force_fraction:g}); types {','.join(type_names)}"
    )
    n_val_forces = sets["val"].n_force_frames
    if 0 < d.force_fraction and len(frames["val"]) and n_val_forces < MIN_VAL_FORCE_FRAMES:
        # the masked validation split can be widened only where it masks something (s < 1)
        widen = (
            " or set data.val_force_labels=all to keep every validation frame's forces"
            if d.val_force_labels == "masked" and n_val_forces < len(frames["val"])
            else ""
        )
        log(
            f"WARNING: only {n_val_forces} validation frame(s) carry force labels: selection and early "
            f"stopping rest on them. Enlarge the validation split (≥ {MIN_VAL_FORCE_FRAMES} labelled "
            f"frames){widen}."
        )
    return data


def energy_scale(train: GraphSet, e0: dict[str, float]) -> float:
    """Force RMS of the labelled training frames (nequip's usual per-type scale), else energy spread."""
    labelled = [f for f, m in zip(train.forces, train.force_mask) if m]
    if labelled:
        return max(float(torch.cat(labelled).square().mean().sqrt()), 1e-3)
    residual = (train.energy.numpy() - reference_energy(train.frames, e0)) / train.n_atoms.numpy()
    return max(float(np.std(residual)), 1e-3)


def _extra_set(
    config: RunConfig, name: str, splits: dict[str, Frames], backend: Any, type_names: list[str],
    log: Callable[[str], None],
) -> GraphSet:  # fmt: skip
    """A further test set; ``exclude_training`` drops frames whose structure is in train or val."""
    d, extra = config.data, config.data.extra_tests[name]
    index = f":{'' if extra.max_frames is None else extra.max_frames}:{extra.stride}"
    frames = read_frames(extra.file, d.energy_key, d.forces_key, index=index, require_forces=False)
    if extra.exclude_training:
        seen = {structure_key(a) for split in ("train", "val") for a in splits[split].atoms}
        keep = [i for i, a in enumerate(frames.atoms) if structure_key(a) not in seen]
        if not keep:
            raise ConfigError(f"data.extra_tests.{name}: every frame of {extra.file} is in train/val")
        dropped = len(frames) - len(keep)
        frames = frames.subset(keep)
        log(f"extra test {name}: {len(frames)} frames ({dropped} dropped: in train/val)")
    return GraphSet(frames, backend, type_names, None)


def with_replay(train: GraphSet, replay: Frames, type_names: list[str]) -> GraphSet:
    """The training set with pretrained-labelled replay frames appended (force-labelled)."""
    merged = Frames(
        train.frames.atoms + replay.atoms,
        np.concatenate([train.frames.energy, replay.energy]),
        train.frames.forces + replay.forces,
        train.frames.source,
        train.frames.index + [-1 - i for i in range(len(replay))],  # negative: replay frame
    )
    mask = np.concatenate([train.force_mask.numpy(), np.ones(len(replay), dtype=bool)])
    return GraphSet(merged, train.backend, type_names, mask)


def constant_predictor_mae(frames: dict[str, Frames], type_names: list[str]) -> dict[str, float]:
    """Energy MAE (meV/atom) of the best constant-per-element predictor — per-element energies fitted by
    least squares on the training split, no geometry — on every split: the floor a model must beat."""
    e0 = fit_energy_references(frames["train"], type_names)
    out = {}
    for name, f in frames.items():
        if len(f):
            residual = (f.energy - reference_energy(f, e0)) / f.n_atoms
            out[name] = float(1e3 * np.mean(np.abs(residual)))
    return out


def check_elements_are_trained(frames: dict[str, Frames]) -> None:
    """An element absent from the training split would be an untrained type: refuse, naming a frame."""
    trained = set(frames["train"].elements())
    for split in ("val", "test"):
        for i, a in zip(frames[split].index, frames[split].atoms):
            extra = sorted(set(a.get_chemical_symbols()) - trained)
            if extra:
                raise DataError(
                    f"{frames[split].source}: {split} frame {i} holds {', '.join(extra)}, which no training "
                    f"frame contains (training elements: {', '.join(sorted(trained))}); the model could not "
                    "learn it. Add such frames to the training data or remove them."
                )


def warn_duplicates(frames: dict[str, Frames], log: Callable[[str], None]) -> None:
    """Frames of validation or test that repeat a training structure (to 1e-4 Å) inflate the scores."""
    seen = {structure_key(a) for a in frames["train"].atoms}
    for split in ("val", "test"):
        repeats = [i for i, a in zip(frames[split].index, frames[split].atoms) if structure_key(a) in seen]
        if repeats:
            shown = ", ".join(map(str, repeats[:5])) + (", …" if len(repeats) > 5 else "")
            log(
                f"WARNING: {len(repeats)} of {len(frames[split])} {split} frames repeat a training "
                f"structure (frames {shown} of {frames[split].source}); their errors measure memory, "
                "not generalisation"
            )


def structure_key(atoms: Any) -> bytes:
    """Identity of a structure up to 1e-4 Å (frames copied between files keep their coordinates)."""
    return atoms.numbers.tobytes() + (np.round(atoms.positions, 4) + 0.0).tobytes()  # no -0.0
