"""``mlipopt-sevenn``: SevenNet's own trainer fine-tuning SevenNet-0, with mlipopt's optimizers by name."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("sevenn", reason="mlipopt-sevenn needs SevenNet (mlipopt[sevennet])")

from ..conftest import SHARED_DATA, same_state  # noqa: E402

BIN = Path(sys.executable).parent


def _input(tmp_path: Path, optimizer: str, lr: float, epochs: int) -> Path:
    """SevenNet's own fine-tuning preset on 12 ethanol frames (4 for validation), no stress."""
    source = SHARED_DATA / "ethanol" / "train.xyz"
    if not source.is_file():
        pytest.skip(f"{source} not found (../shared is absent)")
    lines = source.read_text().splitlines(keepends=True)
    (tmp_path / "train.extxyz").write_text("".join(lines[: 11 * 12]))
    (tmp_path / "valid.extxyz").write_text("".join(lines[11 * 12 : 11 * 16]))
    import sevenn

    config = yaml.safe_load((Path(sevenn.__file__).parent / "presets" / "fine_tune.yaml").read_text())
    config["train"].pop("stress_loss_weight")
    config["train"].update({
        "epoch": epochs, "is_train_stress": False, "per_epoch": 1, "optimizer": optimizer,
        "optim_param": {"lr": lr},
        "error_record": [["Energy", "RMSE"], ["Force", "RMSE"], ["TotalLoss", "None"]],
    })  # fmt: skip
    config["data"] = {
        "batch_size": 4, "data_format_args": {"index": ":"},
        "load_trainset_path": [str(tmp_path / "train.extxyz")],
        "load_validset_path": [str(tmp_path / "valid.extxyz")],
    }  # fmt: skip
    path = tmp_path / "input.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _train(command: str, config: Path, work: Path) -> subprocess.CompletedProcess:
    work.mkdir()
    done = subprocess.run([str(BIN / command), str(config), "-s"], cwd=work, capture_output=True, text=True)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done


def test_with_sevenns_own_optimizer_the_wrapper_is_sevenn(tmp_path):
    config = _input(tmp_path, "adamw", 4e-3, 2)
    _train("sevenn", config, tmp_path / "sevenn")
    _train("mlipopt-sevenn", config, tmp_path / "wrapped")
    load = lambda run: torch.load(run / "checkpoint_2.pth", weights_only=False)["model_state_dict"]  # noqa: E731
    own, wrapped = load(tmp_path / "sevenn"), load(tmp_path / "wrapped")
    assert own.keys() == wrapped.keys() and all(torch.equal(own[k], wrapped[k]) for k in own)


@pytest.mark.parametrize("optimizer, lr", [("soap", 1e-3), ("muon", 1e-3), ("soap_muon", 3e-4)])
def test_matrix_optimizers_fine_tune_sevennet_0_in_sevenns_trainer(tmp_path, optimizer, lr):
    _train("mlipopt-sevenn", _input(tmp_path, optimizer, lr, 3), tmp_path / "soap")
    with open(tmp_path / "soap" / "lc.csv") as f:
        errors = [float(row["validset_Force_RMSE"]) for row in csv.DictReader(f)]
    assert len(errors) == 3 and errors[-1] < errors[0], errors
    state = torch.load(tmp_path / "soap" / "checkpoint_3.pth", weights_only=False)["optimizer_state_dict"]
    roles = {g["role"]: len(g["params"]) for g in state["param_groups"]}
    assert roles["matrix"] > 0 and "adam" in roles  # SevenNet's flat list, given its block structure


def test_continuing_a_soap_run_restores_its_optimizer_state_exactly(tmp_path):
    from mlipopt.models.family import default_dtype

    # as in sevenn's own process: float32. An earlier test can leave float64 the default (nequip sets it
    # globally when it builds a model), and torch casts a loaded float32 state to a float64 model's dtype.
    with default_dtype(torch.float32):
        _continue_soap(tmp_path)


#: ``mlipopt-sevenn`` SIGKILLed by itself right after SevenNet writes epoch 2's checkpoint: a kill
#: mid-run at a known point (at a random moment it could land inside torch.save, which is not atomic).
KILLED_AFTER_SECOND_CHECKPOINT = """
import os, signal, sys
from sevenn.train.trainer import Trainer
from mlipopt.integrations import sevenn_train
write = Trainer.write_checkpoint
def write_then_die(self, path, **extra):
    write(self, path, **extra)
    if os.path.basename(path) == "checkpoint_2.pth":
        os.kill(os.getpid(), signal.SIGKILL)
Trainer.write_checkpoint = write_then_die
sevenn_train.main(sys.argv[1:])
"""


def _continue_soap(tmp_path):
    config = _input(tmp_path, "soap", 1e-3, 10)
    (tmp_path / "first").mkdir()
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_SECOND_CHECKPOINT, str(config), "-s"],
        cwd=tmp_path / "first", capture_output=True, text=True,
    )  # fmt: skip
    assert killed.returncode == -9, (killed.stdout + killed.stderr)[-3000:]  # died mid-run, by SIGKILL
    checkpoint = tmp_path / "first" / "checkpoint_2.pth"
    assert checkpoint.is_file() and not (tmp_path / "first" / "checkpoint_3.pth").exists()
    # SevenNet's continue path, in this process: Trainer.from_config, then load_state_dicts
    from sevenn.train.trainer import Trainer
    from sevenn.util import load_checkpoint

    from mlipopt.integrations import sevenn_train

    sevenn_train.install()
    saved = load_checkpoint(str(checkpoint))
    trainer = Trainer.from_config(saved.build_model(), saved.config)
    trainer.load_state_dicts(None, saved.optimizer_state_dict, saved.scheduler_state_dict, strict=False)
    assert type(trainer.optimizer).__name__ == "SOAP"
    assert same_state(saved.optimizer_state_dict, trainer.optimizer.state_dict())
    # and `continue:` with the optimizer kept trains on from it
    config = yaml.safe_load((tmp_path / "input.yaml").read_text())
    config["train"]["epoch"] = 3
    config["train"]["continue"] = {"checkpoint": str(checkpoint), "reset_optimizer": False,
                                   "reset_scheduler": False, "reset_epoch": False}  # fmt: skip
    (tmp_path / "continue.yaml").write_text(yaml.safe_dump(config))
    _train("mlipopt-sevenn", tmp_path / "continue.yaml", tmp_path / "continued")
    assert (tmp_path / "continued" / "checkpoint_3.pth").is_file()


def test_an_unknown_optimizer_or_version_fails_in_one_line(tmp_path, monkeypatch):
    from mlipopt.integrations import sevenn_train

    config = _input(tmp_path, "saop", 1e-3, 1)
    with pytest.raises(SystemExit, match=r"unknown optimizer 'saop'.*did you mean 'soap'"):
        sevenn_train.main([str(config), "-s"])
    monkeypatch.setattr("sevenn.__version__", "0.9.0")
    with pytest.raises(SystemExit, match=r"sevenn 0\.9\.0 is not supported \(tested: 0\.13\.0\)"):
        sevenn_train.main([str(tmp_path / "input.yaml")])
