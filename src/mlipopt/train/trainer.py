"""The training loop: eq. 11, any optimizer by name, schedulers, early stopping, exact resume.

A run directory holds ``config.yaml`` (resolved), ``splits.json`` (frames and force masks),
``metrics.csv`` (one row per epoch), ``checkpoint.pt`` (last epoch, written atomically),
``best_model.pt`` (weights with the best validation metric) and ``final_metrics.json``.

Resuming is exact: the shuffle order of epoch k depends only on (seed, k), and the checkpoint holds
model, optimizer, scheduler, early-stopping state and RNG state, so a run killed at any moment and
restarted from its last checkpoint produces bitwise the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ase.data
import numpy as np
import torch

from ..data import (
    DataError,
    Frames,
    GraphSet,
    composition_matrix,
    fit_energy_references,
    force_mask,
    generate_frames,
    isolated_atom_energies,
    least_squares_per_element,
    read_frames,
    reference_energy,
    split_indices,
)
from ..models import PRESETS
from ..models.backends import forces_enabled  # noqa: F401  (re-exported: mlipopt.train.forces_enabled)
from ..models.energy_shifts import add_energy_shifts, make_shifts_trainable
from ..models.presets import model_options
from ..optim import build_optimizer, has_train_eval_modes
from .checkpoint import load_torch, remove_orphans, save_json, save_text, save_torch
from .config import ConfigError, RunConfig, dump_config
from .diagnostics import FLAGS, VERDICT, training_flags
from .loss import ErrorMetrics, eq11_loss, validation_metric

METRIC_COLUMNS = (
    "epoch",
    "train_time_s",
    "eval_time_s",
    "lr",
    "train_loss",
    "train_energy_loss",
    "train_force_loss",
    "val_e_mae",
    "val_e_rmse",
    "val_e_bias",
    "val_f_mae",
    "val_f_rmse",
    "val_metric",
)

#: Fewer force-labelled validation frames than this draw a warning (seed 001 masks validation too).
MIN_VAL_FORCE_FRAMES = 10

#: Config keys that may change between an interrupted run and its resumption.
_RESUMABLE_CHANGES = {("run_dir",), ("training", "max_epochs"), ("training", "progress")}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint is left untouched."""


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key in sorted(set(a) | set(b)):
        path = (*prefix, key)
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, path)
        elif va != vb:
            out.append(path)
    return out


class Trainer:
    """Train one model on one dataset with one optimizer, as described by a :class:`RunConfig`.

    ``log`` receives one line per epoch and setup messages (default: print to stdout).
    """

    def __init__(self, config: RunConfig, log: Callable[[str], None] = print) -> None:
        self.config = config
        self.log = log
        self.run_dir = Path(config.run_dir or "runs/run")
        self.device = torch.device(config.training.device)
        self.data_fingerprint = config.data_fingerprint()  # before reading: what the run trains on
        self._setup_data()
        self._setup_model()
        self._setup_forgetting()
        self.force_normaliser = self.sets["train"].mean_force_components()
        self.frozen = self._freeze()
        try:
            self.optimizer = build_optimizer(
                config.optimizer.name,
                self.model,
                lr=config.optimizer.lr,
                weight_decay=config.optimizer.weight_decay,
                structure=config.optimizer.structure or None,
                **config.optimizer.options,
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"optimizer ({config.optimizer.name}): {exc}") from None
        self.scheduler = self._build_scheduler()
        self.epoch = 0
        self.train_time = 0.0
        self.best_metric = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self._train_counts: np.ndarray | None = None

    # ------------------------------------------------------------------ setup
    def _read(self, path: str, max_frames: int | None = None) -> Frames:
        d = self.config.data
        index = ":" if max_frames is None else f":{max_frames}"
        return read_frames(path, d.energy_key, d.forces_key, index=index, require_forces=d.force_fraction > 0)

    def _setup_data(self) -> None:
        c, d = self.config, self.config.data
        pool = generate_frames(**asdict(d.generate)) if d.generate else self._read(d.train, d.max_frames)
        sizes = list(d.split)
        limits = {"val": None, "test": d.max_test_frames}
        given = {
            name: self._read(getattr(d, name), limits[name]) for name in ("val", "test") if getattr(d, name)
        }
        if "val" in given:
            sizes[1] = 0
        if "test" in given:
            sizes[2] = 0
        try:
            parts = split_indices(len(pool), sizes, seed=c.seed)
        except ValueError as exc:
            raise ConfigError(f"data.split: {exc} (in {pool.source})") from None
        frames = {name: pool.subset(idx) for name, idx in zip(("train", "val", "test"), parts)}
        frames.update(given)
        if len(frames["train"]) == 0:
            raise ConfigError(f"the training split is empty ({len(pool)} frames, data.split={d.split})")
        if not self.is_pretrained:  # a foundation model knows elements its fine-tuning data lack
            _check_elements_are_trained(frames)
        self._warn_duplicates(frames)
        names = c.model.type_names or sorted(
            {el for f in frames.values() for el in f.elements()}, key=ase.data.atomic_numbers.__getitem__
        )
        c.model.type_names = list(names)
        from ..models import make_backend

        c.model.r_max = float(c.model.r_max or PRESETS[c.model.preset]["r_max"])
        self.backend = make_backend(c.model.preset, c.model.type_names, c.model.r_max)
        if d.energy_references == "fit":
            self.e0 = fit_energy_references(frames["train"], c.model.type_names)
        else:
            self.e0 = isolated_atom_energies(d.energy_references, d.energy_key)
        self.constant_energy_mae = _constant_predictor_mae(frames, c.model.type_names)
        masks = {
            "train": force_mask(len(frames["train"]), d.force_fraction, c.seed, "train"),
            "val": force_mask(
                len(frames["val"]), d.force_fraction if d.val_force_labels == "masked" else 1.0, c.seed, "val"
            ),
            "test": None,  # never masked
        }
        self.sets = {
            name: GraphSet(f, c.model.type_names, c.model.r_max, masks[name], self.backend)
            for name, f in frames.items()
        }
        self.pool = pool
        self.extra_sets = {name: self._extra_set(name, frames) for name in d.extra_tests}
        self.splits_record = {
            name: {
                "source": f.source,
                "frames": [int(i) for i in f.index],
                "force_labelled": [int(i) for i, m in zip(f.index, self.sets[name].force_mask) if m],
            }
            for name, f in frames.items()
        }
        self.log(
            f"data: {len(frames['train'])} train / {len(frames['val'])} val / "
            f"{len(frames['test'])} test frames; "
            f"forces on {self.sets['train'].n_force_frames} train and {self.sets['val'].n_force_frames} val "
            f"frames (s = {d.force_fraction:g}); types {','.join(c.model.type_names)}"
        )
        n_val_forces = self.sets["val"].n_force_frames
        if 0 < d.force_fraction and len(frames["val"]) and n_val_forces < MIN_VAL_FORCE_FRAMES:
            self.log(
                f"WARNING: only {n_val_forces} validation frame(s) keep force labels: selection and early "
                f"stopping rest on them. Enlarge the validation split (≥ {MIN_VAL_FORCE_FRAMES} labelled "
                "frames) or set data.val_force_labels=all if your validation frames are all labelled."
            )

    def _warn_duplicates(self, frames: dict[str, Frames]) -> None:
        """Frames of validation or test that repeat a training structure (to 1e-4 Å) inflate the scores."""
        seen = {_structure_key(a) for a in frames["train"].atoms}
        for split in ("val", "test"):
            repeats = [
                i for i, a in zip(frames[split].index, frames[split].atoms) if _structure_key(a) in seen
            ]
            if repeats:
                shown = ", ".join(map(str, repeats[:5])) + (", …" if len(repeats) > 5 else "")
                self.log(
                    f"WARNING: {len(repeats)} of {len(frames[split])} {split} frames repeat a training "
                    f"structure (frames {shown} of {frames[split].source}); their errors measure memory, "
                    "not generalisation"
                )

    def _extra_set(self, name: str, splits: dict[str, Frames]) -> GraphSet:
        """A further test set; ``exclude_training`` drops frames whose structure is in train or val."""
        d, extra = self.config.data, self.config.data.extra_tests[name]
        index = f":{'' if extra.max_frames is None else extra.max_frames}:{extra.stride}"
        frames = read_frames(extra.file, d.energy_key, d.forces_key, index=index, require_forces=False)
        if extra.exclude_training:
            seen = {_structure_key(a) for split in ("train", "val") for a in splits[split].atoms}
            keep = [i for i, a in enumerate(frames.atoms) if _structure_key(a) not in seen]
            if not keep:
                raise ConfigError(f"data.extra_tests.{name}: every frame of {extra.file} is in train/val")
            dropped = len(frames) - len(keep)
            frames = frames.subset(keep)
            self.log(f"extra test {name}: {len(frames)} frames ({dropped} dropped: in train/val)")
        return GraphSet(frames, self.config.model.type_names, self.config.model.r_max, None, self.backend)

    def _setup_forgetting(self) -> None:
        """Held-out pretrained-labelled frames (forgetting measure) and replay frames mixed into train."""
        from .forgetting import pretrained_frames, shift_energies

        g, m = self.config.forgetting, self.config.model
        self.forgetting_set: GraphSet | None = None
        if g.frames:
            held = pretrained_frames(m.preset, self.pool, g.frames, "heldout", g, self.log)
            held = shift_energies(held, self.shift_delta)
            self.forgetting_set = GraphSet(held, m.type_names, m.r_max, None, self.backend)
        if g.replay_frames:
            replay = pretrained_frames(m.preset, self.pool, g.replay_frames, "replay", g, self.log)
            replay = shift_energies(replay, self.shift_delta)
            train = self.sets["train"]
            merged = Frames(
                train.frames.atoms + replay.atoms,
                np.concatenate([train.frames.energy, replay.energy]),
                train.frames.forces + replay.forces,
                train.frames.source,
                train.frames.index + [-1 - i for i in range(len(replay))],  # negative: replay frame
            )
            mask = np.concatenate([train.force_mask.numpy(), np.ones(len(replay), dtype=bool)])
            self.sets["train"] = GraphSet(merged, m.type_names, m.r_max, mask, self.backend)
            self.splits_record["replay"] = {"source": replay.source, "frames": len(replay)}
            self.log(
                f"replay: {len(replay)} pretrained-labelled frames added to {len(train)} training frames"
            )

    def _energy_scale(self) -> float:
        """Force RMS of the labelled training frames (nequip's usual per-type scale), else energy spread."""
        train = self.sets["train"]
        labelled = [f for f, m in zip(train.forces, train.force_mask) if m]
        if labelled:
            return max(float(torch.cat(labelled).square().mean().sqrt()), 1e-3)
        residual = (train.energy.numpy() - reference_energy(train.frames, self.e0)) / train.n_atoms.numpy()
        return max(float(np.std(residual)), 1e-3)

    def _setup_model(self) -> None:
        from ..models import build_model

        m = self.config.model
        if PRESETS[m.preset]["family"] == "sevennet":
            return self._setup_pretrained()
        if m.avg_num_neighbors is None:
            m.avg_num_neighbors = round(self.sets["train"].avg_num_neighbors(), 6)
        missing = sorted(set(m.type_names) - set(self.e0))
        if missing:
            raise ConfigError(
                f"no reference energy for {', '.join(missing)} in {self.config.data.energy_references}"
            )
        scale = self._energy_scale()
        options = {
            "per_type_energy_shifts": {t: self.e0[t] for t in m.type_names},
            "per_type_energy_scales": dict.fromkeys(m.type_names, scale),
            "per_type_energy_shifts_trainable": m.energy_shifts == "trainable",
            **m.options,
        }
        torch.manual_seed(self.config.seed)
        try:
            self.model = build_model(
                m.preset,
                type_names=m.type_names,
                model_dtype=m.dtype,
                seed=self.config.seed,
                avg_num_neighbors=m.avg_num_neighbors,
                r_max=m.r_max,
                **options,
            ).to(self.device)
        except TypeError as exc:  # an option the model builder does not take
            known = model_options(m.preset)
            unknown = sorted(set(m.options) - set(known))
            close = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
            hint = "".join(
                f"unknown key {k!r}" + (f" (did you mean {c[0]!r}?)" if c else "") + "; "
                for k, c in close.items()
            )
            raise ConfigError(f"model.options: {hint}{exc}") from None
        n_params = sum(p.numel() for p in self.model.parameters())
        self.log(f"model: {m.preset} ({n_params:,} parameters, {m.dtype}), r_max {m.r_max} Å")

    def _setup_pretrained(self) -> None:
        """A pretrained foundation model: load it and refit its per-element energy shifts to this data."""
        from ..data import Frames
        from ..models import build_model, refit_sevennet_shifts

        m = self.config.model
        torch.manual_seed(self.config.seed)
        self.model = build_model(m.preset).to(self.device)
        train = self.sets["train"]
        self.model.eval()
        predicted = torch.cat(
            [
                self.backend.predict(self.model, b.to(self.device).data, False)[0].detach().cpu()
                for b in train.batches(16)
            ]
        )
        residual = Frames(
            train.frames.atoms, (train.energy - predicted.double()).numpy(), train.frames.forces
        )
        delta = fit_energy_references(residual, m.type_names)
        refit_sevennet_shifts(self.model, delta)
        self.shift_delta = delta
        if m.energy_shifts == "trainable":
            make_shifts_trainable(self.model, "sevennet")
        n_params = sum(p.numel() for p in self.model.parameters())
        self.log(
            f"model: {m.preset} pretrained ({n_params:,} parameters), energy shifts refitted by "
            + ", ".join(f"{k} {v:+.3f}" for k, v in delta.items())
            + " eV"
        )

    @property
    def is_pretrained(self) -> bool:
        """True when training starts from a pretrained foundation model (fine-tuning)."""
        return "checkpoint" in PRESETS[self.config.model.preset]

    def _freeze(self) -> int:
        """Fix the parameters whose names match ``model.freeze`` (e.g. a foundation model's embedding)."""
        import re

        patterns = [re.compile(p) for p in self.config.model.freeze]
        if not patterns:
            return 0
        frozen = 0
        for name, p in self.model.named_parameters():
            if any(pat.search(name) for pat in patterns):
                p.requires_grad_(False)
                frozen += p.numel()
        if not frozen:
            raise ConfigError(f"model.freeze {self.config.model.freeze} matches no parameter")
        self.log(f"frozen: {frozen:,} parameters matching {', '.join(self.config.model.freeze)}")
        return frozen

    def _build_scheduler(self) -> Any:
        s = self.config.scheduler
        if s.name == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode="min", factor=s.factor, patience=s.patience, min_lr=s.min_lr
            )
        if s.name == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=self.config.training.max_epochs, eta_min=s.min_lr
            )
        return None

    @property
    def family(self) -> str:
        return PRESETS[self.config.model.preset]["family"]

    @torch.no_grad()
    def refit_energy_shifts(self) -> dict[str, float]:
        """Closed-form least-squares refit of the per-type energy shifts on the training split.

        The energy is linear in the shifts, so given the network the best shifts solve
        ``min_δ Σ_n (E_n − E_pred,n − Σ_Z c_nZ δ_Z)²``: one energy-only pass (no force graph) and a
        least-squares solve over the precomputed composition matrix. Returns the correction δ (eV).
        """
        self.model.eval()
        train = self.sets["train"]
        predicted = []
        for batch in train.batches(self.config.data.eval_batch_size):
            energy, _ = self.backend.predict(self.model, batch.to(self.device).data, False)
            predicted.append(energy.detach().double().cpu())
        residual = train.energy.numpy() - torch.cat(predicted).numpy()
        if self._train_counts is None or len(self._train_counts) != len(train):
            self._train_counts = composition_matrix(train.frames, self.config.model.type_names)
        delta = least_squares_per_element(self._train_counts, residual, self.config.model.type_names)
        add_energy_shifts(self.model, self.family, delta)
        return delta

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "train_time": self.train_time,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "torch_rng": torch.get_rng_state(),
            "data_fingerprint": self.data_fingerprint,
        }

    def save_checkpoint(self) -> None:
        save_torch(self.state_dict(), self.checkpoint_path)

    def resume(self) -> bool:
        """Load ``checkpoint.pt`` from the run directory if present; False when starting fresh."""
        if self.run_dir.is_dir() and (removed := remove_orphans(self.run_dir)):
            self.log(f"removed {removed} unfinished temporary file(s) a killed run left in {self.run_dir}")
        if not self.checkpoint_path.exists():
            return False
        state = load_torch(self.checkpoint_path)
        diff = [
            p for p in _differences(state["config"], self.config.to_dict()) if p not in _RESUMABLE_CHANGES
        ]
        if diff:
            keys = ", ".join(".".join(p) for p in diff)
            raise ConfigError(
                f"{self.run_dir} holds a run with a different config (differs in: {keys}); "
                "choose another run_dir or restart it (mlipopt train --restart)"
            )
        saved = state.get("data_fingerprint") or {}  # absent in checkpoints of older versions
        changed = [path for path, digest in saved.items() if self.data_fingerprint.get(path) != digest]
        if changed:
            raise ConfigError(
                f"{self.run_dir} holds a run trained on other data: {', '.join(changed)} changed since its "
                "checkpoint; restart it (mlipopt train --restart) or choose another run_dir"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        for key in ("epoch", "train_time", "best_metric", "best_epoch", "bad_epochs", "history"):
            setattr(self, key, state[key])
        torch.set_rng_state(state["torch_rng"])
        best = self.run_dir / "best_model.pt"
        self.best_state = load_torch(best)["model"] if best.exists() else None
        self.log(f"resumed from {self.checkpoint_path} after epoch {self.epoch}")
        return True

    # ------------------------------------------------------------------ loops
    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _set_eval_mode(self, evaluating: bool) -> None:
        """ScheduleFree optimizers hold different weights for training and evaluation."""
        if has_train_eval_modes(self.optimizer):
            (self.optimizer.eval if evaluating else self.optimizer.train)()

    def batch_loss(self, batch: Any) -> Any:
        """Eq. 11 on one batch (on the device); forces are computed only when the batch has labels."""
        c = self.config
        use_forces = c.loss.force_weight > 0 and self.force_normaliser > 0 and batch.has_forces
        energy, forces = self.backend.predict(self.model, batch.data, use_forces)
        return eq11_loss(
            energy, forces, batch, c.loss.energy_weight, c.loss.force_weight, self.force_normaliser
        )

    def train_epoch(self) -> dict[str, float]:
        c = self.config
        self.model.train()
        self._set_eval_mode(False)
        train = self.sets["train"]
        sums = {"train_loss": 0.0, "train_energy_loss": 0.0, "train_force_loss": 0.0}
        batches = train.batches(c.data.batch_size, shuffle_seed=[c.seed, self.epoch])
        n_batches = math.ceil(len(train) / c.data.batch_size)
        show = c.training.progress and sys.stderr.isatty()
        if show:
            from tqdm import tqdm

            batches = tqdm(
                batches, total=n_batches, leave=False, desc=f"epoch {self.epoch + 1}", file=sys.stderr
            )
        for step, batch in enumerate(batches):
            batch = batch.to(self.device)
            parts = self.batch_loss(batch)
            if not torch.isfinite(parts.total):
                saved = (
                    f"the last good checkpoint is {self.checkpoint_path}"
                    if self.checkpoint_path.is_file()
                    else "no checkpoint was written yet"
                )
                raise TrainingDiverged(
                    f"loss is {float(parts.total.detach())} at epoch {self.epoch + 1}, batch {step + 1}; "
                    f"{saved} — lower optimizer.lr or set training.clip_grad_norm"
                )
            self.optimizer.zero_grad(set_to_none=True)
            parts.total.backward()
            if c.training.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.training.clip_grad_norm)
            self.optimizer.step()
            weight = len(batch.energy) / len(train)
            sums["train_loss"] += weight * float(parts.total.detach())
            sums["train_energy_loss"] += weight * float(parts.energy.detach())
            sums["train_force_loss"] += weight * float(parts.forces.detach())
        return sums

    def evaluate(self, split: str, with_forces: bool = True) -> dict[str, float | None]:
        """E (meV/atom) and F (meV/Å) MAE/RMSE on a split; forces on its labelled frames only."""
        return self.evaluate_set(self.sets[split], with_forces)

    def evaluate_set(
        self, graphs: GraphSet, with_forces: bool = True, energies: list[float] | None = None
    ) -> dict[str, float | None]:
        """Errors on any :class:`GraphSet`; predicted energies (eV) are appended to ``energies`` if given."""
        self.model.eval()
        metrics = ErrorMetrics()
        need_forces = with_forces and graphs.n_force_frames > 0
        for batch in graphs.batches(self.config.data.eval_batch_size):
            batch = batch.to(self.device)
            with torch.set_grad_enabled(need_forces):
                energy, forces = self.backend.predict(self.model, batch.data, need_forces)
            metrics.update(energy, forces, batch)
            if energies is not None:
                energies.extend(energy.detach().reshape(-1).double().cpu().tolist())
        return metrics.result()

    def extra_test_metrics(self, name: str, tag: str = "") -> dict[str, Any]:
        """Errors on extra test ``name``, plus the energy MAE after removing the mean per-atom offset (the
        shape of a path, whatever its absolute reference); per-frame energies go to
        ``extra_test_<name><tag>.csv``."""
        graphs, extra = self.extra_sets[name], self.config.data.extra_tests[name]
        predicted: list[float] = []
        result: dict[str, Any] = dict(self.evaluate_set(graphs, energies=predicted))
        reference, n_atoms = graphs.energy.numpy(), graphs.n_atoms.numpy()
        per_atom = (np.array(predicted) - reference) / n_atoms
        result["e_mae_offset_free"] = float(1e3 * np.mean(np.abs(per_atom - per_atom.mean())))
        result["frames"] = len(graphs)
        rows = ["frame,coordinate,n_atoms,energy_ref,energy_pred"]
        for i, (a, e_ref, e_pred) in enumerate(zip(graphs.frames.atoms, reference, predicted)):
            coordinate = a.info.get(extra.coordinate, "") if extra.coordinate else ""
            rows.append(f"{graphs.frames.index[i]},{coordinate},{len(a)},{float(e_ref)!r},{float(e_pred)!r}")
        save_text("\n".join(rows) + "\n", self.run_dir / f"extra_test_{name}{tag}.csv")
        return result

    def test_metrics(self, tag: str = "") -> dict[str, Any]:
        """Everything measured on held-out data: the test split, extra test sets, forgetting."""
        out: dict[str, Any] = {"test": self.evaluate("test") if len(self.sets["test"]) else {}}
        if self.extra_sets:
            out["extra_tests"] = {name: self.extra_test_metrics(name, tag) for name in self.extra_sets}
        if self.forgetting_set is not None:
            out["forgetting"] = self.evaluate_set(self.forgetting_set)
        return out

    def fit(self) -> dict[str, Any]:
        """Train until max_epochs or early stopping, then test the best model; returns final metrics."""
        c = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_text(dump_config(c), self.run_dir / "config.yaml")
        save_json(self.splits_record, self.run_dir / "splits.json")
        baseline = self.run_dir / "pretrained_metrics.json"
        if self.epoch == 0 and self.is_pretrained:
            # the starting point of fine-tuning, on the same held-out data (shifts already refitted)
            save_json(self.test_metrics(tag="_pretrained"), baseline)
        patience = c.training.early_stopping_patience
        stopped_early = patience is not None and self.bad_epochs >= patience
        while self.epoch < c.training.max_epochs and not stopped_early:
            start = time.perf_counter()
            train_row = self.train_epoch()
            self._set_eval_mode(True)
            if c.model.energy_shifts == "refit":
                self.refit_energy_shifts()  # part of training: it changes the model
            self.train_time += time.perf_counter() - start
            self.epoch += 1

            start = time.perf_counter()
            val = self.evaluate("val") if len(self.sets["val"]) else ErrorMetrics().result()
            metric = validation_metric(val)
            eval_time = time.perf_counter() - start
            row = {
                "epoch": self.epoch,
                "train_time_s": self.train_time,
                "eval_time_s": eval_time,
                "lr": self._lr(),
                **train_row,
                **{f"val_{k}": v for k, v in val.items()},
                "val_metric": metric,
            }
            self.history.append(row)
            # without a validation split the latest model is the best one
            improved = metric < self.best_metric - c.training.early_stopping_min_delta or not len(
                self.sets["val"]
            )
            if improved or self.best_state is None:
                self.best_metric, self.best_epoch, self.bad_epochs = (
                    min(metric, self.best_metric),
                    self.epoch,
                    0,
                )
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                save_torch({"model": self.best_state, "epoch": self.epoch}, self.run_dir / "best_model.pt")
            else:
                self.bad_epochs += 1
            self._set_eval_mode(False)
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(metric)
            elif self.scheduler is not None:
                self.scheduler.step()
            self._log_epoch(row)
            stopped_early = patience is not None and self.bad_epochs >= patience
            if (
                self.epoch % c.training.checkpoint_every == 0
                or stopped_early
                or self.epoch == c.training.max_epochs
            ):
                self._write_metrics_csv()
                self.save_checkpoint()
            if self.epoch in c.training.keep_checkpoints:
                save_torch(self.state_dict(), self.run_dir / f"checkpoint_epoch{self.epoch}.pt")
            if stopped_early:
                self.log(
                    f"early stopping: no improvement > {c.training.early_stopping_min_delta} "
                    f"for {patience} epochs"
                )
        return self._finish(stopped_early)

    def _finish(self, stopped_early: bool) -> dict[str, Any]:
        # Evaluation weights first (ScheduleFree swaps in its average), then the best ones over them;
        # the model is left holding the best weights.
        self._set_eval_mode(True)
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        measured = self.test_metrics()
        test = measured["test"]
        flags = training_flags(
            self.history,
            self.config.training.max_epochs,
            self.best_epoch,
            self.constant_energy_mae.get("val"),
        )
        final = {
            **measured,
            "flags": flags,
            "best_epoch": self.best_epoch,
            "best_val_metric": self.best_metric,
            "epochs": self.epoch,
            "stopped_early": stopped_early,
            "train_time_s": self.train_time,
            "steps_per_epoch": math.ceil(len(self.sets["train"]) / self.config.data.batch_size),
            "optimizer": self.config.optimizer.name,
            "force_fraction": self.config.data.force_fraction,
            "frames": {name: len(s) for name, s in self.sets.items()},
            "force_frames": {name: s.n_force_frames for name, s in self.sets.items()},
            # what no model achieves: per-element energies fitted on train (meV/atom), per split
            "constant_energy_mae": self.constant_energy_mae,
        }
        baseline = self.run_dir / "pretrained_metrics.json"
        if self.is_pretrained and baseline.is_file():
            final["pretrained"] = json.loads(baseline.read_text())
        save_json(final, self.run_dir / "final_metrics.json")
        if test:
            self.log(
                "test: E MAE {e_mae:.3f} / RMSE {e_rmse:.3f} meV/atom, "
                "F MAE {f_mae:.2f} / RMSE {f_rmse:.2f} meV/Å".format(**test)
            )
        for flag in flags:
            self.log(
                f"WARNING: {FLAGS[flag]} (best epoch {self.best_epoch} of {self.epoch}) — {VERDICT[flag]}?"
            )
        for name, errors in measured.get("extra_tests", {}).items():
            self.log(f"{name}: {_describe(errors)}")
        if "forgetting" in measured:
            self.log(f"forgetting (vs the pretrained model): {_describe(measured['forgetting'])}")
        return final

    def _write_metrics_csv(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        for row in self.history:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in METRIC_COLUMNS})
        save_text(buffer.getvalue(), self.run_dir / "metrics.csv")

    def _log_epoch(self, row: dict[str, Any]) -> None:
        def fmt(value: float | None, spec: str) -> str:
            return "—" if value is None else format(value, spec)

        self.log(
            f"epoch {row['epoch']:>4}/{self.config.training.max_epochs}  loss {row['train_loss']:.4g}  "
            f"val E {fmt(row['val_e_mae'], '.2f')} meV/atom  F {fmt(row['val_f_mae'], '.1f')} meV/Å  "
            f"metric {row['val_metric']:.2f}  lr {row['lr']:.3g}  t {row['train_time_s']:.1f}s"
        )


def _constant_predictor_mae(frames: dict[str, Frames], type_names: list[str]) -> dict[str, float]:
    """Energy MAE (meV/atom) of the best constant-per-element predictor — per-element energies fitted by
    least squares on the training split, no geometry — on every split: the floor a model must beat."""
    e0 = fit_energy_references(frames["train"], type_names)
    out = {}
    for name, f in frames.items():
        if len(f):
            residual = (f.energy - reference_energy(f, e0)) / f.n_atoms
            out[name] = float(1e3 * np.mean(np.abs(residual)))
    return out


def _check_elements_are_trained(frames: dict[str, Frames]) -> None:
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


def _structure_key(atoms: Any) -> bytes:
    """Identity of a structure up to 1e-4 Å (frames copied between files keep their coordinates)."""
    return atoms.numbers.tobytes() + (np.round(atoms.positions, 4) + 0.0).tobytes()  # no -0.0


def _describe(errors: dict[str, Any]) -> str:
    text = f"E MAE {errors['e_mae']:.3f} meV/atom"
    if errors.get("e_mae_offset_free") is not None:
        text += f" ({errors['e_mae_offset_free']:.3f} offset-free)"
    if errors.get("f_mae") is not None:
        text += f", F MAE {errors['f_mae']:.2f} meV/Å"
    return text


def train(config: RunConfig, restart: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or resume) the run described by ``config``; returns the final metrics."""
    trainer = Trainer(config, log=log)
    if restart:
        trainer.checkpoint_path.unlink(missing_ok=True)
        (trainer.run_dir / "best_model.pt").unlink(missing_ok=True)
    trainer.resume()
    return trainer.fit()
