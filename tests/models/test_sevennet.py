"""Fine-tuning the pretrained SevenNet-0 through mlipopt's trainer (skipped without `sevenn`)."""

import numpy as np
import pytest

pytest.importorskip("sevenn")

from mlipopt.calculator import load  # noqa: E402
from mlipopt.data import generate_frames  # noqa: E402
from mlipopt.models import build_model  # noqa: E402
from mlipopt.structure import param_groups  # noqa: E402
from mlipopt.train import Trainer  # noqa: E402

from ..train.helpers import tiny_config  # noqa: E402


def test_sevennet_structure_groups():
    model = build_model("sevennet-0")
    groups = {g["role"]: g for g in param_groups(model, tp_blocks="flatten")}
    matrix, adam = set(groups["matrix"]["param_names"]), set(groups["adam"]["param_names"])
    assert "onehot_to_feature_x.linear.weight" in adam  # species embedding
    assert "reduce_hidden_to_energy.linear.weight" in adam  # readout
    assert "0_convolution.weight_nn.layer1.weight" in matrix  # radial MLP
    assert "2_self_interaction_1.linear.weight" in matrix  # e3nn Linear blocks
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )


@pytest.mark.parametrize("optimizer", ["adamw", "soap"])
def test_fine_tuning_sevennet_refits_shifts_trains_and_exports_a_calculator(tmp_path, optimizer):
    config = tiny_config(
        tmp_path,
        data={"generate": {"system": "ethanol", "n_frames": 12}, "split": [6, 3, 3], "batch_size": 3},
        model={"preset": "sevennet-0"},
        optimizer={"name": optimizer, "lr": 1e-4},
        training={"max_epochs": 2},
    )
    trainer = Trainer(config, log=lambda _: None)
    train = trainer.sets["train"]
    predicted = np.concatenate(
        [trainer.backend.predict(trainer.model, b.data, False)[0].detach().numpy() for b in train.batches(6)]
    )
    # shifts refitted by least squares on composition: the residual energies have zero mean
    assert abs(np.mean(train.energy.numpy() - predicted)) < 1e-3 * len(train.frames.atoms[0])
    before = trainer.evaluate("val")
    final = trainer.fit()
    assert final["best_val_metric"] < 10 * before["e_mae"] + before["f_mae"]
    atoms = generate_frames("ethanol", 1, seed=5).atoms[0]
    atoms.calc = load(tmp_path)
    assert np.isfinite(atoms.get_potential_energy()) and atoms.get_forces().shape == (9, 3)
