import csv
import json
import math

import pytest
import torch

from mlipopt.train import ConfigError, Trainer, TrainingDiverged, train

from .helpers import tiny_config


def read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_training_reduces_loss_and_writes_the_run_dir(tmp_path):
    final = train(tiny_config(tmp_path / "run", training={"max_epochs": 6}), log=lambda _: None)
    rows = read_csv(tmp_path / "run" / "metrics.csv")
    assert len(rows) == 6
    assert float(rows[-1]["train_loss"]) < 0.8 * float(rows[0]["train_loss"])
    assert float(rows[-1]["train_time_s"]) > float(rows[0]["train_time_s"]) > 0
    assert all(float(r["eval_time_s"]) > 0 for r in rows)
    for name in ("config.yaml", "splits.json", "checkpoint.pt", "best_model.pt", "final_metrics.json"):
        assert (tmp_path / "run" / name).is_file()
    saved = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert saved["frames"] == {"train": 12, "val": 4, "test": 4}
    assert set(saved["test"]) == {"e_mae", "e_rmse", "e_bias", "f_mae", "f_rmse"}
    assert final["best_epoch"] == min(range(1, 7), key=lambda e: float(rows[e - 1]["val_metric"]))
    # the floor no model should miss: per-element constants fitted on train
    assert set(final["constant_energy_mae"]) == {"train", "val", "test"}
    assert final["test"]["e_mae"] < final["constant_energy_mae"]["test"]


def test_force_masks_are_applied_and_recorded(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, data={"force_fraction": 0.25}), log=lambda _: None)
    splits = trainer.splits_record
    assert len(splits["train"]["force_labelled"]) == 3  # round(0.25 · 12)
    assert len(splits["val"]["force_labelled"]) == 1  # round(0.25 · 4)
    assert splits["test"]["force_labelled"] == splits["test"]["frames"]  # test is never masked
    assert trainer.sets["train"].n_force_frames == 3
    other = Trainer(tiny_config(tmp_path / "b", data={"force_fraction": 0.25}, optimizer={"name": "soap"}))
    assert torch.equal(other.sets["train"].force_mask, trainer.sets["train"].force_mask)


def test_energy_only_training_never_computes_forces(tmp_path, monkeypatch):
    from nequip.nn.grad_output import ForceStressOutput

    calls = []
    original = ForceStressOutput.forward

    def spy(self, data):
        calls.append((self.training, self.do_derivatives))
        return original(self, data)

    monkeypatch.setattr(ForceStressOutput, "forward", spy)
    final = train(tiny_config(tmp_path, data={"force_fraction": 0.0}), log=lambda _: None)
    training_calls = [d for t, d in calls if t]
    assert training_calls and not any(training_calls)
    rows = read_csv(tmp_path / "metrics.csv")
    assert rows[0]["val_f_mae"] == "" and float(rows[0]["train_force_loss"]) == 0.0
    assert final["test"]["f_mae"] is not None  # test keeps all forces


def test_early_stopping_on_the_validation_metric(tmp_path):
    config = tiny_config(
        tmp_path, optimizer={"lr": 0.0}, training={"max_epochs": 10, "early_stopping_patience": 2}
    )
    final = train(config, log=lambda _: None)
    assert final["stopped_early"] and final["epochs"] == 3 and final["best_epoch"] == 1
    assert final["stop_reason"] == "patience" and "not_converged" not in final["flags"]


def test_a_run_capped_by_max_epochs_is_flagged_not_converged(tmp_path):
    """Issue 24: a run that ends at its epoch cap, with or without a stopping rule, was still learning."""
    lines = []
    final = train(tiny_config(tmp_path, training={"max_epochs": 2}), log=lines.append)
    assert final["stop_reason"] == "max_epochs" and not final["stopped_early"]
    assert "not_converged" in final["flags"]
    assert any("ended at max_epochs" in line and "not converged" in line for line in lines)


def test_the_learning_rate_floor_stops_a_plateau_schedule(tmp_path):
    """nequip's early_stopping_lower_bounds LR: the plateau schedule halves the rate after epochs 2 and
    3 (as in test_schedulers); 2.5e-7 is below the floor 4e-7, so the run stops after epoch 3, converged."""
    config = tiny_config(
        tmp_path,
        optimizer={"lr": 0.0},
        scheduler={"name": "plateau", "patience": 0, "factor": 0.5},
        training={"max_epochs": 10, "early_stopping_lr_floor": 4e-7},
    )
    lines = []
    trainer = Trainer(config, log=lines.append)
    for group in trainer.optimizer.param_groups:
        group["lr"] = 1e-6
    final = trainer.fit()
    assert final["epochs"] == 3 and final["stop_reason"] == "lr_floor" and final["stopped_early"]
    assert "not_converged" not in final["flags"]
    assert any("learning rate 2.5e-07 fell below the floor 4e-07" in line for line in lines)


@pytest.mark.parametrize(
    "scheduler, message",
    [
        ({"name": "none"}, "needs a schedule that lowers"),
        ({"name": "plateau", "min_lr": 1e-5}, "never be crossed"),
    ],
)
def test_a_learning_rate_floor_that_cannot_be_met_is_a_config_error(tmp_path, scheduler, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(tmp_path, scheduler=scheduler, training={"early_stopping_lr_floor": 1e-5})


def test_schedulers(tmp_path):
    config = tiny_config(
        tmp_path / "c", scheduler={"name": "cosine", "min_lr": 1e-4}, training={"max_epochs": 4}
    )
    train(config, log=lambda _: None)
    lrs = [float(r["lr"]) for r in read_csv(tmp_path / "c" / "metrics.csv")]
    expected = [
        1e-4 + 0.5 * (5e-3 - 1e-4) * (1 + math.cos(math.pi * k / 4)) for k in range(4)
    ]  # LR used in epoch k+1
    assert lrs == pytest.approx(expected)
    config = tiny_config(
        tmp_path / "p",
        optimizer={"lr": 0.0},
        scheduler={"name": "plateau", "patience": 0, "factor": 0.5},
        training={"max_epochs": 4},
    )
    trainer = Trainer(config, log=lambda _: None)
    for group in trainer.optimizer.param_groups:
        group["lr"] = 1e-6  # the metric improves by far less than the plateau threshold (1e-4 relative)
    trainer.fit()
    lrs = [float(r["lr"]) for r in trainer.history]
    assert lrs == pytest.approx([1e-6, 1e-6, 5e-7, 2.5e-7])  # epoch 1 sets the best; then halving


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, training={"max_epochs": 2}), log=lambda _: None)
    trainer.fit()
    before = (tmp_path / "checkpoint.pt").read_bytes()
    config = tiny_config(tmp_path, training={"max_epochs": 3})
    trainer = Trainer(config, log=lambda _: None)
    trainer.resume()
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch 3, batch 1.*lower optimizer.lr"):
        trainer.fit()
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_resume_refuses_a_different_config_and_touches_nothing(tmp_path):
    train(tiny_config(tmp_path, training={"max_epochs": 1}), log=lambda _: None)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ConfigError, match=r"differs in: data.force_fraction, optimizer.lr"):
        train(tiny_config(tmp_path, optimizer={"lr": 1e-2}, data={"force_fraction": 0.5}), log=lambda _: None)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


class Killed(Exception):
    pass


@pytest.mark.parametrize("optimizer", ["adamw", "soap", "soap_muon"])
def test_killed_run_resumes_bitwise(tmp_path, optimizer):
    """Kill mid-epoch 3 (after the epoch-2 checkpoint), resume, and match an uninterrupted run exactly."""
    options = {"precondition_frequency": 2} if optimizer != "adamw" else {}
    sections = {"optimizer": {"name": optimizer, "options": options}, "training": {"max_epochs": 4}}
    reference = Trainer(tiny_config(tmp_path / "ref", **sections), log=lambda _: None)
    reference.fit()

    killed = Trainer(tiny_config(tmp_path / "run", **sections), log=lambda _: None)
    step, calls = killed.optimizer.step, []

    def dying_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 8:  # 3 batches per epoch: the 2nd batch of epoch 3
            raise Killed
        return step(*args, **kwargs)

    killed.optimizer.step = dying_step
    with pytest.raises(Killed):
        killed.fit()
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["epoch"] == 2

    resumed = Trainer(tiny_config(tmp_path / "run", **sections), log=lambda _: None)
    assert resumed.resume()
    resumed.fit()
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    ref_rows, rows = read_csv(tmp_path / "ref" / "metrics.csv"), read_csv(tmp_path / "run" / "metrics.csv")
    assert [r["val_metric"] for r in rows] == [r["val_metric"] for r in ref_rows]
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in ref_rows]


def test_schedulefree_evaluates_with_its_averaged_weights(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, optimizer={"name": "schedulefree_adamw"}), log=lambda _: None)
    final = trainer.fit()
    assert trainer.optimizer.param_groups[0]["train_mode"] is False
    best = torch.load(tmp_path / "best_model.pt", weights_only=False)["model"]
    training_weights = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(best[k], v) for k, v in trainer.model.state_dict().items())
    # the evaluated (averaged x) weights are not the training-mode (y) weights saved for resuming
    assert any(not torch.equal(best[k], training_weights[k]) for k in best)
    # the reported test errors are those of the averaged weights the run saved as best
    assert trainer.evaluate("test") == final["test"]


def test_allegro_trains(tmp_path):
    trainer = Trainer(
        tiny_config(tmp_path, model={"preset": "allegro-tiny"}, training={"max_epochs": 4}),
        log=lambda _: None,
    )
    untrained = trainer.evaluate("test")
    final = trainer.fit()
    assert final["epochs"] == 4 and final["best_epoch"] > 1
    assert final["test"]["f_mae"] < 0.9 * untrained["f_mae"]  # it learned forces


def test_without_validation_or_test_split_the_last_model_is_kept(tmp_path):
    final = train(
        tiny_config(tmp_path, data={"split": [12, 0, 0]}, training={"max_epochs": 2}), log=lambda _: None
    )
    assert final["best_epoch"] == 2 and final["test"] == {}
    assert final["frames"] == {"train": 12, "val": 0, "test": 0}


@pytest.mark.parametrize(
    "name, cls, lr, epochs",
    [
        ("radam", "RAdam", 2e-3, 3),
        ("sgd", "SGD", 2e-3, 3),
        ("lamb", "Lamb", 2e-3, 3),
        ("ranger", "Ranger", 1e-2, 8),  # RAdam's rectified warm-up and Lookahead start slowly
        ("muon", "Muon", 2e-3, 3),
    ],
)
def test_every_named_optimizer_trains(tmp_path, name, cls, lr, epochs):
    trainer = Trainer(
        tiny_config(tmp_path, optimizer={"name": name, "lr": lr}, training={"max_epochs": epochs})
    )
    assert type(trainer.optimizer).__name__ == cls
    trainer.fit()
    losses = [row["train_loss"] for row in trainer.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


@pytest.mark.parametrize("optimizer", ["adamw", "soap"])
def test_frozen_parameters_stay_fixed(tmp_path, optimizer):
    config = tiny_config(tmp_path, model={"freeze": ["type_embed"]}, optimizer={"name": optimizer})
    trainer = Trainer(config, log=lambda _: None)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.fit()
    after = dict(trainer.model.named_parameters())
    frozen = [n for n in before if "type_embed" in n]
    assert frozen and trainer.frozen == sum(before[n].numel() for n in frozen)
    assert all(torch.equal(before[n], after[n]) for n in frozen)
    assert any(not torch.equal(before[n], after[n]) for n in before if n not in frozen)
    with pytest.raises(ConfigError, match="matches no parameter"):
        Trainer(tiny_config(tmp_path / "x", model={"freeze": ["no_such_layer"]}), log=lambda _: None)


def test_validation_keeps_all_force_labels_on_request_and_few_labels_are_warned(tmp_path):
    lines = []
    masked = Trainer(tiny_config(tmp_path / "m", data={"force_fraction": 0.25}), log=lines.append)
    assert masked.sets["val"].n_force_frames == 1  # round(0.25 · 4): seed 001 masks validation too
    [warning] = [line for line in lines if "only 1 validation frame(s) carry force labels" in line]
    assert "data.val_force_labels=all" in warning  # s < 1 masks validation: widening it helps
    full = Trainer(
        tiny_config(tmp_path / "a", data={"force_fraction": 0.25, "val_force_labels": "all"}),
        log=lambda _: None,
    )
    assert full.sets["val"].n_force_frames == 4 and full.sets["train"].n_force_frames == 3
