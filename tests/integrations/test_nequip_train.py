"""`nequip-train` runs with mlipopt's SOAP selected by config only, and restarts from its checkpoint."""

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nequip")
CONFIGS = Path(__file__).parent / "configs"


def _nequip_train(run_dir: Path, *overrides: str) -> None:
    exe = shutil.which("nequip-train") or str(Path(sys.executable).parent / "nequip-train")
    cmd = [exe, "-cp", str(CONFIGS), "-cn", "soap_emt", f"hydra.run.dir={run_dir}", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _epoch_losses(run_dir: Path) -> dict[int, float]:
    rows = csv.DictReader(open(run_dir / "csv" / "version_0" / "metrics.csv"))
    return {
        int(r["epoch"]): float(r["train_loss_epoch/weighted_sum"])
        for r in rows
        if r["train_loss_epoch/weighted_sum"]
    }


def test_nequip_train_with_soap_learns_and_restarts(tmp_path):
    straight = tmp_path / "straight"
    _nequip_train(straight, "trainer.max_epochs=6")
    losses = _epoch_losses(straight)
    assert sorted(losses) == list(range(6))
    assert losses[5] < losses[0]

    interrupted = tmp_path / "interrupted"
    _nequip_train(interrupted, "trainer.max_epochs=3")
    _nequip_train(interrupted, f"++ckpt_path={interrupted / 'last.ckpt'}", "trainer.max_epochs=6")
    resumed = _epoch_losses(interrupted)  # the restart rewrites the CSV from epoch 3 on
    # Reproducible to ~1e-7 on an idle machine; once, on a loaded one, 6e-5 apart (cause not found, outside
    # mlipopt's code). Consecutive epoch losses here differ by 3e-4 to 5e-4 (relative), so 1e-4 still
    # tells a continued run from a shifted or restarted one. mlipopt's own trainer is held to bitwise
    # equality (tests/train/test_trainer.py).
    for epoch in (3, 4, 5):
        assert resumed[epoch] == pytest.approx(losses[epoch], rel=1e-4)


def test_the_complete_nequip_train_example_trains_with_soap_on_shared_data(tmp_path):
    """examples/nequip_train_soap.yaml as the README links it: one epoch on the shared rMD17 ethanol frames,
    SOAP's eigenbases in the checkpoint's optimizer state, one param group per role."""
    import torch

    data = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ethanol" / "train.xyz"
    if not data.is_file():
        pytest.skip(f"shared data not found at {data}")
    examples = Path(__file__).resolve().parents[2] / "examples"
    exe = shutil.which("nequip-train") or str(Path(sys.executable).parent / "nequip-train")
    cmd = [exe, "-cp", str(examples), "-cn", "nequip_train_soap", f"hydra.run.dir={tmp_path}",
           "trainer.max_epochs=1", f"data_file={data}", "run=[train]"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert set(_epoch_losses(tmp_path)) == {0}
    state = torch.load(tmp_path / "last.ckpt", weights_only=False, map_location="cpu")["optimizer_states"][0]
    assert sorted(g["role"] for g in state["param_groups"]) == ["adam", "matrix"]
    assert any("Q" in s and "GG" in s for s in state["state"].values())  # SOAP's eigenbases
