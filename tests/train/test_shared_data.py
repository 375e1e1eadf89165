"""Training on slices of the real DFT datasets in ../shared/data (skipped when absent)."""

import pytest

from mlipopt.train import Trainer

from .helpers import tiny_config


@pytest.mark.parametrize(
    "dataset, references", [("ethanol", "isolated_atoms.xyz"), ("3BPA", "iso_atoms.xyz")]
)
def test_trains_on_a_slice_with_isolated_atom_references(tmp_path, shared_data, dataset, references):
    train_file = "train.xyz" if dataset == "ethanol" else "train_300K.xyz"
    config = tiny_config(
        tmp_path,
        data={
            "generate": None,
            "train": str(shared_data / dataset / train_file),
            "max_frames": 16,
            "split": [10, 3, 3],
            "energy_references": str(shared_data / dataset / references),
            "force_fraction": 0.5,
        },
        training={"max_epochs": 2},
    )
    trainer = Trainer(config, log=lambda _: None)
    untrained = trainer.evaluate("test")
    final = trainer.fit()
    assert final["frames"] == {"train": 10, "val": 3, "test": 3}
    assert final["force_frames"] == {"train": 5, "val": 2, "test": 3}
    assert final["test"]["f_mae"] < untrained["f_mae"]
