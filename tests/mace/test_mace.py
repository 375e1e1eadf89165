"""MACE through the model-family interface, in its own environment (mace-torch pins e3nn 0.4.4).

Run with ``pip install torch==2.13.0 -e ".[mace,study,test]"`` in a separate environment and
``python -m pytest tests/mace`` (``.ci/run`` does both); skipped where MACE is not installed.
"""

import subprocess
import sys

import pytest
import torch

pytest.importorskip("mace", reason="the MACE family needs its own environment (mlipopt[mace])")

from mlipopt.cli import main  # noqa: E402
from mlipopt.models import build_model, family  # noqa: E402
from mlipopt.structure import discover  # noqa: E402
from mlipopt.train import Trainer, load_config, train  # noqa: E402
from mlipopt.train.refine import refine  # noqa: E402

from ..conftest import SHARED_DATA  # noqa: E402


def _config(run_dir, optimizer="adamw", lr=1e-2, epochs=5, frames=(24, 8, 8), **model):
    ethanol = SHARED_DATA / "ethanol" / "train.xyz"
    if not ethanol.is_file():
        pytest.skip(f"{ethanol} not found (../shared is absent)")
    return load_config({
        "seed": 7,
        "run_dir": str(run_dir),
        "data": {"train": str(ethanol), "max_frames": 40, "split": list(frames), "batch_size": 2},
        "model": {"preset": "mace-tiny", "dtype": "float64", **model},
        "optimizer": {"name": optimizer, "lr": lr},
        "training": {"max_epochs": epochs, "progress": False},
    })  # fmt: skip


def test_importing_mlipopt_imports_no_nequip():
    code = (
        "import sys, mlipopt, mlipopt.train, mlipopt.cli, mlipopt.study, mlipopt.spectrum\n"
        "assert not [m for m in sys.modules if m.startswith(('nequip', 'allegro', 'sevenn'))]\n"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_structure_classifies_mace_parameters_against_their_own_layout():
    model = build_model("mace-small", type_names=["H", "C", "O"], model_dtype="float64")
    modules = dict(model.named_modules())
    infos = {i.name: i for i in discover(model)}
    assert infos["node_embedding.linear.weight"].role == "adam"  # a Linear on one-hot species
    readouts = [n for n in infos if n.startswith("readouts.") and n.endswith("_2.weight")]
    assert readouts and all(infos[n].role == "adam" for n in readouts)
    checked = 0
    for name, info in infos.items():
        owner = modules[name.rpartition(".")[0]]
        if info.kind == "e3nn-linear":  # blocks are e3nn 0.4.4's own instruction views
            weights = [i for i in owner.instructions if i.i_in != -1]
            for k, (start, stop, shape) in enumerate(info.blocks):
                expected = owner.weight_view_for_instruction(k, owner.weight)
                assert tuple(expected.shape) == shape
                assert torch.equal(owner.weight[start:stop].view(shape), expected)
                checked += 1
            assert len(info.blocks) == len(weights)
        if info.kind == "symmetric-contraction" and info.role == "matrix":  # (basis, channels) per element
            p = dict(model.named_parameters())[name]
            for e, (start, stop, shape) in enumerate(info.blocks):
                assert torch.equal(p.reshape(-1)[start:stop].view(shape), p[e])
                checked += 1
        if info.kind == "linear":  # radial MLP layers, (in, out)
            assert info.blocks[0][2] == tuple(dict(model.named_parameters())[name].shape)
    assert checked > 10
    kinds = {i.kind for i in infos.values()}
    assert {"e3nn-linear", "e3nn-tp", "linear", "symmetric-contraction", "readout", "embedding"} <= kinds


@pytest.mark.parametrize("optimizer, lr", [("adamw", 1e-2), ("soap", 1e-2), ("muon", 1e-2)])
def test_five_epochs_of_mace_on_ethanol(tmp_path, optimizer, lr):
    trainer = Trainer(_config(tmp_path, optimizer, lr), log=lambda _: None)
    untrained = trainer.evaluate("test")
    final = trainer.fit()
    rows = trainer.history
    print(optimizer, untrained["f_mae"], final["test"]["f_mae"], [round(r["train_loss"], 3) for r in rows])
    assert final["epochs"] == 5 and final["test"]["f_mae"] < 0.9 * untrained["f_mae"]  # it learned forces
    assert rows[-1]["train_loss"] < 0.8 * rows[0]["train_loss"]
    # the E0 refit leaves no per-atom offset on the training split (meV/atom)
    assert abs(trainer.evaluate("train")["e_bias"]) < 1e-3


@pytest.mark.parametrize(
    "optimizer, lr",
    [("adam", 1e-2), ("radam", 1e-2), ("sgd", 1e-2), ("lamb", 1e-2), ("ranger", 1e-2),
     ("schedulefree", 1e-2), ("soap_muon", 1e-3)],
)  # fmt: skip
def test_the_other_optimizers_train_a_small_mace(tmp_path, optimizer, lr):
    """The three above on the full split; the other seven on a short one: the training loss falls."""
    trainer = Trainer(_config(tmp_path, optimizer, lr, epochs=3, frames=(8, 4, 4)), log=lambda _: None)
    trainer.fit()
    losses = [row["train_loss"] for row in trainer.history]
    assert all(loss == loss for loss in losses) and losses[-1] < losses[0], losses


def test_refine_the_cli_and_fine_tuning_a_saved_mace_file(tmp_path, capsys):
    run = tmp_path / "run"
    train(_config(run, epochs=2), log=lambda _: None)
    summary = refine(run, iterations=2, memory=3, patience=2, log=lambda _: None)
    assert summary["test_after"]["f_mae"] is not None
    from mlipopt.calculator import load, load_model

    model, config = load_model(run)
    path = tmp_path / "ethanol.model"
    torch.save(model, path)  # a MACE .model file, as MACE's own training writes them
    tuned = Trainer(_config(tmp_path / "tuned", epochs=1, family="mace", file=str(path)), log=print)
    assert tuned.is_pretrained and set(tuned.shift_delta) == {"H", "C", "O"}
    final = tuned.fit()
    assert final["epochs"] == 1 and "pretrained" in final
    from ase.build import molecule

    atoms = molecule("CH3CH2OH")
    atoms.calc = load(tmp_path / "tuned")
    assert atoms.get_forces().shape == (9, 3)
    assert family("mace").energy_shifts(model).keys() == {"H", "C", "O"}
    assert main(["structure", "mace-tiny", "--type-names", "H,C,O"]) == 0
    assert "symmetric-contraction" in capsys.readouterr().out
