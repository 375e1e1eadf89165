"""A run's data and model on a device, without an optimizer: what training, L-BFGS refinement,
Hessian spectra and step-cost measurements share — eq. 11 on a batch, errors on any set, the
closed-form refit of the energy shifts.

The config is only read. Values found while setting up (element types, cutoff, neighbour
normalisation) live in :attr:`Session.resolved`, a copy that is what a run directory's
``config.yaml`` records and what a saved model is rebuilt from.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import Frames, GraphSet, composition_matrix, fit_energy_references, least_squares_per_element
from ..models import DataStats, family
from . import distributed
from .checkpoint import save_text
from .config import ConfigError, RunConfig
from .data import TrainingData, energy_scale, prepare_data, with_replay
from .distributed import Ranks
from .forgetting import pretrained_frames, shift_energies
from .loss import ErrorMetrics, LossParts, eq11_loss


def _silent(_: str) -> None:
    return None


class Session:
    """Data, model and evaluation of one run (``log`` receives setup messages)."""

    def __init__(
        self, config: RunConfig, log: Callable[[str], None] = print, ranks: Ranks | None = None
    ) -> None:
        self.config = config
        # data-parallel: every rank holds the data and the model; rank 0 speaks and writes
        self.ranks = ranks or distributed.current()
        self.log = log if self.ranks.is_main else _silent
        log = self.log
        self.run_dir = Path(config.run_dir or "runs/run")
        self.device = distributed.device_for(config.training.device, self.ranks)
        self.family = family(config.model)
        self.data_fingerprint = config.data_fingerprint()  # before reading: what the run trains on
        self.data: TrainingData = prepare_data(config, self.family, log)
        self.sets, self.extra_sets, self.backend = self.data.sets, self.data.extra_sets, self.data.backend
        self.e0 = self.data.e0
        self.shift_delta: dict[str, float] = {}
        avg_num_neighbors = config.model.avg_num_neighbors
        if self.family.starts_pretrained(config.model):
            self.model = self._pretrained_model()
        else:
            if avg_num_neighbors is None:
                avg_num_neighbors = round(self.sets["train"].avg_num_neighbors(), 6)
            self.model = self._model_from_scratch(avg_num_neighbors)
        self.ranks.broadcast_module(self.model)
        self.resolved = dataclasses.replace(
            config,
            model=dataclasses.replace(
                config.model, type_names=self.data.type_names, r_max=self.data.r_max,
                avg_num_neighbors=avg_num_neighbors,
            ),
        )  # fmt: skip
        self.forgetting_set = self._forgetting()
        self.force_normaliser = self.sets["train"].mean_force_components()
        self.frozen = self._freeze()
        self._train_counts: np.ndarray | None = None

    # ------------------------------------------------------------------ model
    def _model_from_scratch(self, avg_num_neighbors: float) -> torch.nn.Module:
        m, data = self.config.model, self.data
        missing = sorted(set(data.type_names) - set(data.e0))
        if missing:
            raise ConfigError(
                f"no reference energy for {', '.join(missing)} in {self.config.data.energy_references}"
            )
        stats = DataStats(
            data.type_names, data.r_max, avg_num_neighbors, data.e0, energy_scale(self.sets["train"], data.e0)
        )
        torch.manual_seed(self.config.seed)
        try:
            model = self.family.build(m, stats, self.config.seed).to(self.device)
        except TypeError as exc:  # an option the model builder does not take
            known = self.family.options(m)
            hint = ""
            for key in sorted(set(m.options) - set(known)):
                close = difflib.get_close_matches(key, known, n=1)
                hint += f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "") + "; "
            raise ConfigError(f"model.options: {hint}{exc}") from None
        n_params = sum(p.numel() for p in model.parameters())
        self.log(f"model: {m.preset} ({n_params:,} parameters, {m.dtype}), r_max {data.r_max} Å")
        return model

    def _pretrained_model(self) -> torch.nn.Module:
        """A foundation model with its per-element energy shifts refitted to this data's reference."""
        m = self.config.model
        torch.manual_seed(self.config.seed)
        model = self.family.build(m, None, self.config.seed).to(self.device)
        train = self.sets["train"]
        model.eval()
        predicted = torch.cat(
            [
                self.backend.predict(model, b.to(self.device).data, False)[0].detach().cpu()
                for b in train.batches(16)
            ]
        )
        residual = Frames(
            train.frames.atoms, (train.energy - predicted.double()).numpy(), train.frames.forces
        )
        self.shift_delta = fit_energy_references(residual, self.data.type_names)
        self.family.add_energy_shifts(model, self.shift_delta)
        if m.energy_shifts == "trainable":
            self.family.release_shifts(model)
        n_params = sum(p.numel() for p in model.parameters())
        shifts = ", ".join(f"{k} {v:+.3f}" for k, v in self.shift_delta.items())
        self.log(
            f"model: {m.preset} pretrained ({n_params:,} parameters), energy shifts refitted by {shifts} eV"
        )
        return model

    def _forgetting(self) -> GraphSet | None:
        """Held-out pretrained-labelled frames (forgetting measure) and replay frames mixed into train."""
        g, data = self.config.forgetting, self.data
        held_set = None
        if g.frames:
            held = pretrained_frames(
                self.family, self.config.model, data.pool, g.frames, "heldout", g, self.log
            )
            held_set = GraphSet(shift_energies(held, self.shift_delta), self.backend, data.type_names)
        if g.replay_frames:
            replay = pretrained_frames(
                self.family, self.config.model, data.pool, g.replay_frames, "replay", g, self.log
            )
            replay = shift_energies(replay, self.shift_delta)
            before = len(self.sets["train"])
            self.sets["train"] = with_replay(self.sets["train"], replay, data.type_names)
            data.splits_record["replay"] = {"source": replay.source, "frames": len(replay)}
            self.log(f"replay: {len(replay)} pretrained-labelled frames added to {before} training frames")
        return held_set

    def _freeze(self) -> int:
        """Fix the parameters whose names match ``model.freeze`` (e.g. a foundation model's embedding)."""
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

    @property
    def is_pretrained(self) -> bool:
        return self.family.starts_pretrained(self.config.model)

    @property
    def splits_record(self) -> dict[str, Any]:
        return self.data.splits_record

    @property
    def constant_energy_mae(self) -> dict[str, float]:
        return self.data.constant_energy_mae

    # ------------------------------------------------------------------ loss and errors
    def batch_loss(self, batch: Any, batch_frames: int | None = None) -> LossParts:
        """Eq. 11 on one batch (on the device); forces are computed only when the batch has labels.
        ``batch_frames``: the global batch's frame count when ``batch`` is this rank's shard of it."""
        c = self.config
        use_forces = c.loss.force_weight > 0 and self.force_normaliser > 0 and batch.has_forces
        energy, forces = self.backend.predict(self.model, batch.data, use_forces)
        return eq11_loss(
            energy, forces, batch, c.loss.energy_weight, c.loss.force_weight, self.force_normaliser,
            batch_frames,
        )  # fmt: skip

    def evaluate(self, split: str, with_forces: bool = True) -> dict[str, float | None]:
        """E (meV/atom) and F (meV/Å) MAE/RMSE on a split; forces on its labelled frames only."""
        return self.evaluate_set(self.sets[split], with_forces)

    def evaluate_set(
        self, graphs: GraphSet, with_forces: bool = True, energies: list[float] | None = None
    ) -> dict[str, float | None]:
        """Errors on any :class:`GraphSet`; predicted energies (eV) are appended to ``energies`` if given.
        Data-parallel ranks share the batches and sum their errors (all ranks when ``energies`` is asked)."""
        self.model.eval()
        metrics = ErrorMetrics()
        need_forces = with_forces and graphs.n_force_frames > 0
        shared = energies is None and self.ranks.active
        for k, indices in enumerate(graphs.batch_indices(self.config.data.eval_batch_size)):
            if shared and k % self.ranks.world != self.ranks.rank:
                continue
            batch = graphs.batch(indices).to(self.device)
            with torch.set_grad_enabled(need_forces):
                energy, forces = self.backend.predict(self.model, batch.data, need_forces)
            metrics.update(energy, forces, batch)
            if energies is not None:
                energies.extend(energy.detach().reshape(-1).double().cpu().tolist())
        if shared:
            metrics.merge_ranks(self.ranks)
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
        if self.ranks.is_main:
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

    @torch.no_grad()
    def refit_energy_shifts(self) -> dict[str, float]:
        """Closed-form least-squares refit of the per-type energy shifts on the training split.

        The energy is linear in the shifts, so given the network the best shifts solve
        ``min_δ Σ_n (E_n − E_pred,n − Σ_Z c_nZ δ_Z)²``: one energy-only pass (no force graph) and a
        least-squares solve over the precomputed composition matrix. Returns the correction δ (eV).
        """
        self.model.eval()
        train = self.sets["train"]
        predicted = torch.zeros(len(train), dtype=torch.float64)
        for k, indices in enumerate(train.batch_indices(self.config.data.eval_batch_size)):
            if k % self.ranks.world == self.ranks.rank:  # data-parallel ranks share the frames
                energy, _ = self.backend.predict(self.model, train.batch(indices).to(self.device).data, False)
                predicted[torch.as_tensor(indices)] = energy.detach().reshape(-1).double().cpu()
        self.ranks.sum_(predicted)  # exact: every frame is non-zero on one rank only
        residual = train.energy.numpy() - predicted.numpy()
        names = self.data.type_names
        if self._train_counts is None or len(self._train_counts) != len(train):
            self._train_counts = composition_matrix(train.frames, names)
        delta = least_squares_per_element(self._train_counts, residual, names)
        if self.ranks.active:  # one solution for all ranks, whatever their LAPACK
            values = self.ranks.broadcast_(torch.tensor([delta[n] for n in names], dtype=torch.float64))
            delta = dict(zip(names, values.tolist()))
        self.family.add_energy_shifts(self.model, delta)
        return delta
