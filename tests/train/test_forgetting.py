"""Forgetting and replay: frames sampled and labelled by the pretrained model (skipped without sevenn)."""

import json

import numpy as np
import pytest

pytest.importorskip("sevenn")

from mlipopt.train import ConfigError, Trainer  # noqa: E402

from .helpers import tiny_config  # noqa: E402

FORGETTING = {
    "frames": 4,
    "replay_frames": 3,
    "frames_per_trajectory": 2,
    "steps_between_frames": 5,
    "temperature": 300.0,
}


def _config(run_dir, **forgetting):
    return tiny_config(
        run_dir,
        data={"generate": {"system": "ethanol", "n_frames": 12}, "split": [6, 3, 3], "batch_size": 3},
        model={"preset": "sevennet-0"},
        optimizer={"name": "adamw", "lr": 3e-4},
        training={"max_epochs": 2},
        forgetting={**FORGETTING, **forgetting},
    )


def test_forgetting_is_zero_before_fine_tuning_and_replay_joins_training(tmp_path, monkeypatch):
    monkeypatch.setenv("MLIPOPT_CACHE", str(tmp_path / "cache"))
    messages: list[str] = []
    trainer = Trainer(_config(tmp_path / "run"), log=messages.append)
    held, train = trainer.forgetting_set, trainer.sets["train"]
    assert len(held) == 4 and len(train) == 6 + 3
    assert bool(train.force_mask[-3:].all())  # replay frames keep the pretrained forces
    # held-out and replay frames are new structures, not copies of each other or of training frames
    held_pos = {a.positions.tobytes() for a in held.frames.atoms}
    assert not held_pos & {a.positions.tobytes() for a in train.frames.atoms}
    # labels are the (shift-refitted) pretrained model's own predictions: zero error before training
    before = trainer.evaluate_set(held)
    assert before["e_mae"] < 0.05 and before["f_mae"] < 0.5
    final = trainer.fit()
    assert final["forgetting"]["f_mae"] > 10 * before["f_mae"]  # fine-tuning moved the model
    # the run records where it started: the pretrained model's errors on the same held-out data
    assert final["pretrained"]["forgetting"] == before
    assert final["pretrained"]["test"]["f_mae"] != final["test"]["f_mae"]
    saved = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert saved["forgetting"] == final["forgetting"]
    assert json.loads((tmp_path / "run" / "splits.json").read_text())["replay"]["frames"] == 3
    # a second run (another seed, as in a study) reads the cached frames instead of running MD again
    cached = sorted((tmp_path / "cache" / "pretrained").glob("*.xyz"))
    assert len(cached) == 2
    stamps = [f.stat().st_mtime_ns for f in cached]
    messages.clear()
    again = Trainer(_config(tmp_path / "run2"), log=messages.append)
    assert not any("trajectory" in m for m in messages)
    assert [f.stat().st_mtime_ns for f in cached] == stamps
    assert np.array_equal(again.forgetting_set.forces[0].numpy(), held.forces[0].numpy())


def test_forgetting_needs_a_pretrained_model(tmp_path):
    with pytest.raises(ConfigError, match="needs a pretrained model"):
        tiny_config(tmp_path, forgetting={"frames": 4})
