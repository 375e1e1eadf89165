"""The training loop: eq. 11, any optimizer by name, schedulers, early stopping, exact resume.

A run directory holds ``config.yaml`` (resolved), ``splits.json`` (frames and force masks),
``metrics.csv`` (one row per epoch), ``checkpoint.pt`` (last epoch, written atomically),
``best_model.pt`` (weights with the best validation metric) and ``final_metrics.json``.

Resuming is exact: the shuffle order of epoch k depends only on (seed, k), and the checkpoint holds
model, optimizer, scheduler, early-stopping state and RNG state, so a run killed at any moment and
restarted from its last checkpoint produces bitwise the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..machine import cpu_model
from ..optim import build_optimizer, has_train_eval_modes
from .checkpoint import load_torch, remove_orphans, save_json, save_text, save_torch
from .config import ConfigError, RunConfig, dump_config
from .diagnostics import training_flags
from .distributed import Ranks, init_from_environment, joined, shutdown
from .loss import ErrorMetrics, validation_metric
from .records import incompatible_changes, log_final, write_metrics_csv
from .session import Session


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint is left untouched."""


class Trainer(Session):
    """Train one model on one dataset with one optimizer, as described by a :class:`RunConfig`: a
    :class:`Session` (data, model, evaluation) plus the optimizer, the scheduler and the loop.

    ``log`` receives one line per epoch and setup messages (default: print to stdout).
    """

    def __init__(
        self, config: RunConfig, log: Callable[[str], None] = print, ranks: Ranks | None = None
    ) -> None:
        super().__init__(config, log, ranks)
        o = config.optimizer
        try:
            self.optimizer = build_optimizer(
                o.name, self.model, lr=o.lr, weight_decay=o.weight_decay, structure=o.structure or None,
                **o.options,
            )  # fmt: skip
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"optimizer ({o.name}): {exc}") from None
        if self.ranks.active and config.distributed.shard_optimizer:
            shard = getattr(self.optimizer, "shard_blocks", None)
            if shard is None:
                self.log(
                    f"distributed.shard_optimizer: {o.name} has no block work to share; every rank steps"
                )
            else:
                shard(self.ranks)
        self.scheduler = self._build_scheduler()
        self.epoch = 0
        self.train_time = 0.0
        self.best_metric = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []
        self.best_state: dict[str, torch.Tensor] | None = None

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

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def state_dict(self) -> dict[str, Any]:
        """The run's full state (on every data-parallel rank: a sharded optimizer gathers its state)."""
        return {
            "epoch": self.epoch,
            "config": self.resolved.to_dict(),
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
            "world_size": self.ranks.world,
        }

    def save_checkpoint(self, path: Path | None = None) -> None:
        """Written by rank 0 only, atomically; every rank takes part in gathering a sharded optimizer."""
        state = self.state_dict()
        if self.ranks.is_main:
            save_torch(state, path or self.checkpoint_path)

    def resume(self) -> bool:
        """Load ``checkpoint.pt`` from the run directory if present; False when starting fresh."""
        if self.ranks.is_main and self.run_dir.is_dir() and (removed := remove_orphans(self.run_dir)):
            self.log(f"removed {removed} unfinished temporary file(s) a killed run left in {self.run_dir}")
        if not self.checkpoint_path.exists():
            return False
        state = load_torch(self.checkpoint_path)
        diff = incompatible_changes(state["config"], self.resolved.to_dict())
        if diff:
            keys = ", ".join(diff)
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
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.ranks.world and not self.config.distributed.allow_world_size_change:
            raise ConfigError(
                f"{self.checkpoint_path} was written by a run on {saved_world} process(es); this one has "
                f"{self.ranks.world}. The trajectory continues to round-off only: resume with the same "
                "world size, or set distributed.allow_world_size_change=true"
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

    def train_epoch(self) -> dict[str, float]:
        c = self.config
        self.model.train()
        self._set_eval_mode(False)
        train = self.sets["train"]
        sums = {"train_loss": 0.0, "train_energy_loss": 0.0, "train_force_loss": 0.0}
        batches = train.batch_indices(c.data.batch_size, shuffle_seed=[c.seed, self.epoch])
        if c.training.progress and sys.stderr.isatty() and self.ranks.is_main:
            from tqdm import tqdm

            n_batches = math.ceil(len(train) / c.data.batch_size)
            batches = tqdm(
                batches, total=n_batches, leave=False, desc=f"epoch {self.epoch + 1}", file=sys.stderr
            )
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        for step, indices in enumerate(batches):
            mine = self.ranks.share(indices)  # all of them in a single process
            parts = None
            if len(mine):
                parts = self.batch_loss(train.batch(mine).to(self.device), len(indices))
            values = torch.zeros(3, dtype=torch.float64)
            if parts is not None:
                values = (
                    torch.stack([parts.total, parts.energy, parts.forces]).detach().to("cpu", torch.float64)
                )
            total, energy_loss, force_loss = self.ranks.sum_(values).tolist()  # the global batch's loss
            if not math.isfinite(total):
                saved = (
                    f"the last good checkpoint is {self.checkpoint_path}"
                    if self.checkpoint_path.is_file()
                    else "no checkpoint was written yet"
                )
                raise TrainingDiverged(
                    f"loss is {total} at epoch {self.epoch + 1}, batch {step + 1}; "
                    f"{saved} — lower optimizer.lr or set training.clip_grad_norm"
                )
            self.optimizer.zero_grad(set_to_none=True)
            if parts is not None:
                parts.total.backward()
            self.ranks.sum_gradients(trainable)  # shards' gradients sum to the global batch's
            if c.training.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.training.clip_grad_norm)
            self.optimizer.step()
            weight = len(indices) / len(train)
            sums["train_loss"] += weight * total
            sums["train_energy_loss"] += weight * energy_loss
            sums["train_force_loss"] += weight * force_loss
        return sums

    def fit(self, prune: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """Train until max_epochs or early stopping, then test the best model; returns final metrics.
        ``prune``: asked after every epoch with its row (a hyperparameter search's pruner, e.g.
        successive halving); True stops the run there (``stop_reason`` "pruned"), checkpointed, so the
        same run can later be continued to its full schedule."""
        c = self.config
        main = self.ranks.is_main  # rank 0 writes; the other ranks compute alongside
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_text(dump_config(self.resolved), self.run_dir / "config.yaml")
            save_json(self.splits_record, self.run_dir / "splits.json")
        baseline = self.run_dir / "pretrained_metrics.json"
        if self.epoch == 0 and self.is_pretrained:
            # the starting point of fine-tuning, on the same held-out data (shifts already refitted)
            pretrained = self.test_metrics(tag="_pretrained")
            if main:
                save_json(pretrained, baseline)
        stop = self._stop_reason()
        while self.epoch < c.training.max_epochs and stop is None:
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
                if main:
                    save_torch(
                        {"model": self.best_state, "epoch": self.epoch}, self.run_dir / "best_model.pt"
                    )
            else:
                self.bad_epochs += 1
            self._set_eval_mode(False)
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(metric)
            elif self.scheduler is not None:
                self.scheduler.step()
            self._log_epoch(row)
            self.ranks.check_identical(self.model)
            stop = self._stop_reason()
            if stop is None and prune is not None and self.epoch < c.training.max_epochs and prune(row):
                stop = "pruned"
                self.log(f"pruned after epoch {self.epoch} (validation metric {metric:.4g})")
            if (
                self.epoch % c.training.checkpoint_every == 0
                or stop is not None
                or self.epoch == c.training.max_epochs
            ):
                if main:
                    write_metrics_csv(self.history, self.run_dir / "metrics.csv")
                self.save_checkpoint()
            if self.epoch in c.training.keep_checkpoints:
                self.save_checkpoint(self.run_dir / f"checkpoint_epoch{self.epoch}.pt")
            if stop == "patience":
                self.log(
                    f"early stopping: no improvement > {c.training.early_stopping_min_delta} "
                    f"for {c.training.early_stopping_patience} epochs"
                )
            elif stop == "lr_floor":
                self.log(
                    f"early stopping: learning rate {self._lr():.3g} fell below the floor "
                    f"{c.training.early_stopping_lr_floor:g}"
                )
        return self._finish(stop or "max_epochs")

    def _stop_reason(self) -> str | None:
        """The stopping rule the run has met (``patience`` or ``lr_floor``), None while it trains on.
        Derived from the state alone, so a resumed run stops where the uninterrupted one would."""
        t = self.config.training
        if t.early_stopping_patience is not None and self.bad_epochs >= t.early_stopping_patience:
            return "patience"
        if t.early_stopping_lr_floor is not None and self.epoch and self._lr() < t.early_stopping_lr_floor:
            return "lr_floor"
        return None

    def _finish(self, stop_reason: str) -> dict[str, Any]:
        # Evaluation weights first (ScheduleFree swaps in its average), then the best ones over them;
        # the model is left holding the best weights.
        self._set_eval_mode(True)
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        measured = self.test_metrics()
        flags = training_flags(
            self.history,
            self.config.training.max_epochs,
            self.best_epoch,
            self.constant_energy_mae.get("val"),
            converged=None if stop_reason == "pruned" else stop_reason != "max_epochs",
        )
        final = {
            **measured,
            "flags": flags,
            "best_epoch": self.best_epoch,
            "best_val_metric": self.best_metric,
            "epochs": self.epoch,
            "stopped_early": stop_reason != "max_epochs",
            # patience, lr_floor (both: converged by the run's rule), max_epochs (capped: not converged) or
            # pruned (stopped by a hyperparameter search's pruner)
            "stop_reason": stop_reason,
            "train_time_s": self.train_time,
            "steps_per_epoch": math.ceil(len(self.sets["train"]) / self.config.data.batch_size),
            "optimizer": self.config.optimizer.name,
            "force_fraction": self.config.data.force_fraction,
            "frames": {name: len(s) for name, s in self.sets.items()},
            "force_frames": {name: s.n_force_frames for name, s in self.sets.items()},
            # what no model achieves: per-element energies fitted on train (meV/atom), per split
            "constant_energy_mae": self.constant_energy_mae,
            # what decides whether a re-run is bitwise equal: more than one intra-op thread makes the
            # summation order of torch's CPU kernels vary (docs/study.md, "Reproducibility")
            "torch_threads": torch.get_num_threads(),
            "torch_version": torch.__version__,
            "cpu_model": cpu_model(),  # another CPU model gives other bits (docs/study.md)
            "world_size": self.ranks.world,
        }
        baseline = self.run_dir / "pretrained_metrics.json"
        if self.is_pretrained and baseline.is_file():
            final["pretrained"] = json.loads(baseline.read_text())
        if self.ranks.is_main:
            save_json(final, self.run_dir / "final_metrics.json")
        log_final(self.log, final)
        return final

    def _log_epoch(self, row: dict[str, Any]) -> None:
        def fmt(value: float | None, spec: str) -> str:
            return "—" if value is None else format(value, spec)

        self.log(
            f"epoch {row['epoch']:>4}/{self.config.training.max_epochs}  loss {row['train_loss']:.4g}  "
            f"val E {fmt(row['val_e_mae'], '.2f')} meV/atom  F {fmt(row['val_f_mae'], '.1f')} meV/Å  "
            f"metric {row['val_metric']:.2f}  lr {row['lr']:.3g}  t {row['train_time_s']:.1f}s"
        )


def train(config: RunConfig, restart: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or resume) the run described by ``config``; returns the final metrics. Under ``torchrun``
    or ``srun`` it joins the launcher's process group, trains data-parallel and leaves the group again
    (a group the caller joined stays joined)."""
    owns_group = not joined()
    ranks = init_from_environment(config.training.device, config.distributed.timeout_minutes)
    try:
        trainer = Trainer(config, log=log, ranks=ranks)
        if restart and ranks.is_main:
            trainer.checkpoint_path.unlink(missing_ok=True)
            (trainer.run_dir / "best_model.pt").unlink(missing_ok=True)
        ranks.barrier()
        trainer.resume()
        final = trainer.fit()
        ranks.barrier()  # no rank leaves the group while another still has collectives to finish
        return final
    finally:
        if owns_group:
            shutdown()
