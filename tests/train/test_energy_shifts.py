"""Per-type energy shifts (refit / fixed / trainable) and the diagnostics that flag drift and divergence."""

import numpy as np
import pytest
import torch

from mlipopt.data import composition_matrix
from mlipopt.models.energy_shifts import add_energy_shifts, energy_shifts
from mlipopt.train import ConfigError, Trainer
from mlipopt.train.diagnostics import training_flags, verdicts

from .helpers import tiny_config


def _train_residuals(trainer):
    """E_ref − E_pred (eV) of every training frame with the trainer's current model."""
    trainer.model.eval()
    predicted = []
    with torch.no_grad():
        for batch in trainer.sets["train"].batches(32):
            predicted.append(trainer.backend.predict(trainer.model, batch.data, False)[0].double())
    return trainer.sets["train"].energy.numpy() - torch.cat(predicted).numpy()


def test_refit_leaves_no_per_element_offset_in_the_training_residuals(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, training={"max_epochs": 2}), log=lambda _: None)
    trainer.fit()
    residual = _train_residuals(trainer)
    counts = composition_matrix(trainer.sets["train"].frames, trainer.resolved.model.type_names)
    # the normal equations of the least-squares fit hold: Cᵀ r = 0 (to float32 model round-off)
    assert np.abs(counts.T @ residual).max() < 1e-3 * np.abs(residual).sum()
    assert abs(residual.mean()) < 1e-4
    # and it was the refit that did it: the shifts moved away from E0
    shifts = energy_shifts(trainer.model, "nequip")
    assert any(abs(shifts[t] - trainer.e0[t]) > 1e-6 for t in shifts)


def test_fixed_shifts_stay_at_e0_and_trainable_shifts_are_trained(tmp_path):
    fixed = Trainer(tiny_config(tmp_path / "f", model={"energy_shifts": "fixed"}), log=lambda _: None)
    fixed.fit()
    assert energy_shifts(fixed.model, "nequip") == pytest.approx(fixed.e0, abs=1e-12)
    trainable = Trainer(tiny_config(tmp_path / "t", model={"energy_shifts": "trainable"}), log=lambda _: None)
    names = [n for n, p in trainable.model.named_parameters() if "shifts" in n]
    assert names, "shifts are parameters in trainable mode"
    trainable.fit()
    moved = energy_shifts(trainable.model, "nequip")
    assert any(abs(moved[t] - trainable.e0[t]) > 1e-6 for t in moved)
    refit = Trainer(tiny_config(tmp_path / "r"), log=lambda _: None)
    assert not [n for n, _ in refit.model.named_parameters() if "shifts" in n]  # closed form, not trained


def test_shift_options_conflict_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="energy_shifts"):
        tiny_config(tmp_path, model={"options": {"per_type_energy_shifts_trainable": True}})
    with pytest.raises(ConfigError, match="energy_shifts must be one of"):
        tiny_config(tmp_path, model={"energy_shifts": "trained"})


def _plant_offset_drift(monkeypatch, per_epoch_ev):
    """After every training epoch, add a growing per-atom energy offset to the model (as force
    training does in the network's mean output on real data)."""
    original = Trainer.train_epoch

    def drifting(self):
        row = original(self)
        add_energy_shifts(self.model, "nequip", dict.fromkeys(self.resolved.model.type_names, per_epoch_ev))
        return row

    monkeypatch.setattr(Trainer, "train_epoch", drifting)


def test_planted_drift_is_flagged_with_fixed_shifts_and_removed_by_the_refit(tmp_path, monkeypatch):
    _plant_offset_drift(monkeypatch, 0.3)  # 300 meV/atom more every epoch
    cfg = {"training": {"max_epochs": 5}}
    drifted = Trainer(tiny_config(tmp_path / "fixed", model={"energy_shifts": "fixed"}, **cfg), log=print)
    final = drifted.fit()
    assert "energy_drift" in final["flags"]
    biases = [row["val_e_bias"] for row in drifted.history]
    # the planted offset shows as a bias common to all frames (the energy loss pulls part of it back)
    assert 0.6 * 4 * 300.0 < biases[-1] - biases[0] < 1.1 * 4 * 300.0
    refit = Trainer(tiny_config(tmp_path / "refit", **cfg), log=lambda _: None).fit()
    assert "energy_drift" not in refit["flags"]
    assert abs(refit["test"]["e_bias"]) < 0.2 * abs(final["test"]["e_bias"])


def test_planted_divergence_is_flagged_as_did_not_train(tmp_path, monkeypatch):
    """Weights scrambled a little more after every epoch: the validation metric only worsens."""
    original = Trainer.train_epoch

    def diverging(self):
        row = original(self)
        generator = torch.Generator().manual_seed(self.epoch)
        with torch.no_grad():
            for p in self.model.parameters():
                p.add_(0.3 * (self.epoch + 1) * torch.randn(p.shape, generator=generator, dtype=p.dtype))
        return row

    monkeypatch.setattr(Trainer, "train_epoch", diverging)
    final = Trainer(tiny_config(tmp_path, training={"max_epochs": 6}), log=lambda _: None).fit()
    assert final["best_epoch"] == 1
    assert {"early_best", "no_progress"} <= set(final["flags"])
    assert verdicts(final["flags"])[0] == "did not train"


def test_flags_from_a_curve():
    rows = lambda metric, energy: [  # noqa: E731
        {"val_metric": m, "val_e_mae": e} for m, e in zip(metric, energy)
    ]
    healthy = rows([100, 80, 60, 50, 45], [10, 9, 8, 8, 7])
    assert training_flags(healthy, 5, 5) == []
    assert training_flags(rows([100, 120, 130, 140, 150], [10, 9, 8, 8, 7]), 5, 1) == [
        "early_best",
        "no_progress",
    ]
    assert training_flags(rows([100, 80, 60, 50, 45], [10, 25, 8, 8, 7]), 5, 5) == ["energy_drift"]
    assert training_flags(rows([100, 80, 60, 50, 45], [10, 20, 8, 8, 7]), 5, 5) == []  # 2× is the limit
    assert training_flags(rows([100], [10]), 1, 1) == []  # one epoch says nothing
    assert training_flags(rows([100, 80], [None, None]), 2, 2) == []  # no validation energy
    # energy-only runs (no validation force) are compared with per-element constants
    energy_only = rows([50.1, 50.0, 49.9], [5.01, 5.0, 4.99])
    assert training_flags(energy_only, 3, 3, constant_val_e_mae=5.0) == ["constant_energy"]
    learned = rows([50.1, 40.0, 30.0], [5.01, 4.0, 3.0])
    assert training_flags(learned, 3, 3, constant_val_e_mae=5.0) == []
    with_forces = [{**r, "val_f_mae": 100.0} for r in energy_only]
    assert training_flags(with_forces, 3, 3, constant_val_e_mae=5.0) == []


def test_a_run_stopped_by_its_rule_is_judged_on_the_epochs_it_ran_not_on_the_cap():
    """Issue 24's converged runs: max_epochs = 1000 is a cap. A run that improved for 60 epochs and then
    stopped after 40 epochs of patience trained; one that peaked at epoch 5 of 45 did not."""
    learned = [{"val_metric": 100.0 - min(e, 60), "val_e_mae": 5.0} for e in range(1, 101)]
    assert training_flags(learned, 1000, 60, converged=True) == []
    assert training_flags(learned, 1000, 60, converged=False) == ["early_best", "not_converged"]
    peaked = [{"val_metric": 100.0 - min(e, 5), "val_e_mae": 5.0} for e in range(1, 46)]
    assert training_flags(peaked, 1000, 5, converged=True) == ["early_best"]
