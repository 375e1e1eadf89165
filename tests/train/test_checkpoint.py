import pytest
import torch

from mlipopt.train.checkpoint import load_torch, save_torch


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("killed while writing")


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_debris(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_torch({"epoch": 1, "w": torch.arange(3.0)}, path)
    with pytest.raises(RuntimeError, match="killed while writing"):
        save_torch({"epoch": 2, "w": torch.zeros(1000), "bad": Unpicklable()}, path)
    state = load_torch(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.arange(3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
