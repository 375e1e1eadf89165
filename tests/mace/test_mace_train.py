"""``mlipopt-mace-train``: MACE's own training with mlipopt's optimizers (in .venv-mace, like test_mace)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("mace", reason="mlipopt-mace-train needs MACE's environment (mlipopt[mace])")

from mlipopt.integrations import mace_train  # noqa: E402

from ..conftest import SHARED_DATA, same_state  # noqa: E402

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    source = SHARED_DATA / "ethanol" / "train.xyz"
    if not source.is_file():
        pytest.skip(f"{source} not found (../shared is absent)")
    path = tmp_path_factory.mktemp("data") / "ethanol30.xyz"
    path.write_text("".join(source.read_text().splitlines(keepends=True)[: 11 * 30]))  # 30 frames of 9 atoms
    return path


def _args(frames: Path, work: Path, optimizer: str, epochs: int, *extra: str) -> list[str]:
    return [
        "--name", "t", "--train_file", str(frames), "--valid_fraction", "0.2", "--energy_key", "energy",
        "--forces_key", "forces", "--E0s", "average", "--model", "MACE", "--num_channels", "8",
        "--max_L", "0", "--r_max", "4.0", "--num_interactions", "2", "--correlation", "2",
        "--batch_size", "4", "--max_num_epochs", str(epochs), "--device", "cpu", "--default_dtype",
        "float64", "--seed", "1", "--num_workers", "0", "--eval_interval", "1", "--optimizer", optimizer,
        "--work_dir", str(work), *extra,
    ]  # fmt: skip


def _weights(work: Path) -> dict[str, torch.Tensor]:
    return torch.load(work / "t.model", weights_only=False).state_dict()


def _evaluations(work: Path) -> list[dict]:
    """MACE's validation records (results/*.txt holds one JSON per line: training and eval)."""
    files = (work / "results").glob("*.txt")
    lines = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    return [r for r in lines if r.get("mode") == "eval" and "mae_f" in r]


def _valid_force_mae(work: Path) -> list[float]:
    return [r["mae_f"] for r in _evaluations(work)]


def test_with_maces_own_optimizer_the_wrapper_is_mace(frames, tmp_path):
    for command, work in (
        ("mace_run_train", tmp_path / "mace"),
        ("mlipopt-mace-train", tmp_path / "wrapped"),
    ):
        done = subprocess.run(
            [str(BIN / command), *_args(frames, work, "adamw", 2)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-2000:]
    mace, wrapped = _weights(tmp_path / "mace"), _weights(tmp_path / "wrapped")
    assert mace.keys() == wrapped.keys() and all(torch.equal(mace[k], wrapped[k]) for k in mace)


@pytest.mark.parametrize("optimizer, options", [("soap", {}), ("muon", {}), ("soap_muon", {"rho": 0.0})])
def test_mlipopts_optimizers_train_a_small_mace(frames, tmp_path, optimizer, options):
    extra = ["--lr", "0.01", "--optimizer_options", json.dumps(options)]
    mace_train.main(_args(frames, tmp_path, optimizer, 4, *extra))
    errors = _valid_force_mae(tmp_path)
    assert len(errors) >= 4 and errors[-1] < errors[0], errors


def test_stage_two_swa_and_ema_run_with_an_mlipopt_optimizer(frames, tmp_path):
    extra = ["--lr", "0.01", "--swa", "--start_swa", "2", "--ema", "--optimizer_options", '{"rho": 0.0}']
    mace_train.main(_args(frames, tmp_path, "soap_muon", 4, *extra))
    assert (tmp_path / "t_stagetwo.model").is_file()  # MACE's stage two ran (its SWALR over our groups)
    assert any(tmp_path.glob("checkpoints/*_swa.pt"))
    stage_two = torch.load(tmp_path / "t_stagetwo.model", weights_only=False).state_dict()
    assert all(torch.isfinite(v).all() for v in stage_two.values() if v.is_floating_point())


def test_the_optimizer_keeps_maces_groups_and_gets_the_blocks(frames, tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(
        mace_train,
        "mlipopt_optimizer",
        lambda *a, f=mace_train.mlipopt_optimizer: built.append(f(*a)) or built[-1],
    )
    mace_train.main(_args(frames, tmp_path, "soap", 1, "--weight_decay", "1e-3"))
    [optimizer] = built
    groups = optimizer.param_groups
    assert {g["role"] for g in groups} == {"matrix", "adam"} and all("name" in g for g in groups)
    decays = {g["name"]: g["weight_decay"] for g in groups}
    assert decays["embedding"] == 0.0 and decays["interactions_decay"] == 1e-3  # MACE's per-group decay kept
    matrix = [g for g in groups if g["role"] == "matrix"]
    assert (
        all(len(g["blocks"]) == len(g["params"]) for g in matrix)
        and sum(len(g["params"]) for g in matrix) > 0
    )


#: A child that is SIGKILLed by itself right after MACE's second checkpoint write completes: a kill
#: mid-run at a known point (a kill at a random moment could land inside torch.save, which MACE does
#: not write atomically, and the test would be about MACE's checkpoint format, not the optimizer).
KILLED_AFTER_SECOND_CHECKPOINT = """
import os, signal, sys
from mace.tools import checkpoint
from mlipopt.integrations import mace_train
save, saves = checkpoint.CheckpointIO.save, []
def save_then_die(self, *args, **kwargs):
    save(self, *args, **kwargs)
    saves.append(1)
    if len(saves) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint.CheckpointIO.save = save_then_die
mace_train.main(sys.argv[1:])
"""


def test_restart_latest_after_a_kill_restores_the_optimizer_state_exactly(frames, tmp_path, monkeypatch):
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLED_AFTER_SECOND_CHECKPOINT,
            *_args(frames, tmp_path, "soap", 20, "--lr", "0.01"),
        ],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]  # it died mid-run, by SIGKILL
    [checkpoint] = (tmp_path / "checkpoints").glob("t_run-1_epoch-*.pt")  # MACE keeps the latest only
    killed_at = int(checkpoint.stem.rsplit("-", 1)[1])
    saved = torch.load(checkpoint, weights_only=False)["optimizer"]
    assert saved["state"] and not (tmp_path / "t.model").exists()  # no model: the run never finished
    at_resume = []
    original = mace_train.mlipopt_optimizer

    def capture(*args):
        optimizer = original(*args)
        optimizer.register_step_pre_hook(
            lambda opt, *_: at_resume.append(opt.state_dict()) if not at_resume else None
        )  # the state the first resumed step starts from: what MACE loaded from the checkpoint
        return optimizer

    monkeypatch.setattr(mace_train, "mlipopt_optimizer", capture)
    mace_train.main(_args(frames, tmp_path, "soap", killed_at + 2, "--lr", "0.01", "--restart_latest"))
    assert at_resume, "the resumed run took no step"
    loaded = at_resume[0]
    assert loaded["param_groups"] == saved["param_groups"]
    assert loaded["state"].keys() == saved["state"].keys()
    for index, state in saved["state"].items():
        for key, value in state.items():
            assert same_state(value, loaded["state"][index][key]), (index, key)
    epochs = [r["epoch"] for r in _evaluations(tmp_path) if r["epoch"] is not None]
    assert max(epochs) == killed_at + 1 and (tmp_path / "t.model").is_file()  # it trained on, to the end


def test_a_wrong_use_fails_in_one_line(frames, tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit, match="--optimizer_options is for mlipopt's optimizers, not adamw"):
        mace_train.main(_args(frames, tmp_path, "adamw", 1, "--optimizer_options", '{"rho": 0}'))
    with pytest.raises(SystemExit):
        mace_train.main(_args(frames, tmp_path, "soup", 1))
    assert "invalid choice: 'soup'" in capsys.readouterr().err
    import mace

    monkeypatch.setattr(mace, "__version__", "0.2.0")
    with pytest.raises(SystemExit, match=r"mace-torch 0\.2\.0 is not supported \(tested: 0\.3\.16\)"):
        mace_train.main(_args(frames, tmp_path, "soap", 1))
