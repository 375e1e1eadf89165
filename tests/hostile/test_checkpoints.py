"""Run folders from someone else: a crafted checkpoint must not run code; a damaged one gets a clear error."""

import pytest
import torch

from mlipopt import calculator
from mlipopt.train import CheckpointError, Trainer, train
from mlipopt.train.refine import refine

from ..train.helpers import tiny_config


class _Payload:
    """Unpickling this object calls ``open(path, 'w')``: any loader that runs it leaves a file behind."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def trained(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(run, training={"max_epochs": 1}), log=lambda _: None)
    return run


def _plant(path, marker):
    state = {"model": {}, "epoch": 1, "payload": _Payload(marker)}
    torch.save(state, path)


@pytest.mark.parametrize("victim", ["best_model.pt", "checkpoint.pt", "refined_model.pt"])
def test_crafted_checkpoint_is_refused_and_runs_no_code(trained, tmp_path, victim):
    marker = tmp_path / f"pwned-{victim}"
    _plant(trained / victim, marker)
    loaders = {
        "best_model.pt": lambda: calculator.load(trained),
        "refined_model.pt": lambda: calculator.load(trained, weights="refined"),
        "checkpoint.pt": lambda: Trainer(
            tiny_config(trained, training={"max_epochs": 1}), log=print
        ).resume(),
    }
    with pytest.raises(CheckpointError, match="refused to load.*could run code"):
        loaders[victim]()
    assert not marker.exists(), "loading the crafted file ran its code"


def test_crafted_best_model_is_refused_by_refine(trained, tmp_path):
    marker = tmp_path / "pwned-refine"
    _plant(trained / "best_model.pt", marker)
    with pytest.raises(CheckpointError, match=str(trained / "best_model.pt")):
        refine(trained, iterations=1, log=lambda _: None)
    assert not marker.exists()


def test_truncated_checkpoint_names_the_file_and_suggests_restart(trained):
    data = (trained / "checkpoint.pt").read_bytes()
    (trained / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: unreadable.*--restart"):
        Trainer(tiny_config(trained, training={"max_epochs": 2}), log=lambda _: None).resume()
    # --restart recovers
    final = train(tiny_config(trained, training={"max_epochs": 2}), restart=True, log=lambda _: None)
    assert final["epochs"] == 2


def test_everything_mlipopt_writes_loads_under_weights_only(trained):
    for name in ("checkpoint.pt", "best_model.pt"):
        torch.load(trained / name, weights_only=True)
    refine(trained, iterations=2, patience=2, log=lambda _: None)
    torch.load(trained / "refined_model.pt", weights_only=True)
