"""The examples of docs/integrations.md run as written: a plain PyTorch loop and a Lightning module."""

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_doc_holds_the_plain_loop_and_the_lightning_module():
    loop, lightning_module = python_blocks()
    assert "param_groups(model)" in loop and "optimizer.step()" in loop
    assert "def configure_optimizers" in lightning_module and "param_groups(self.model)" in lightning_module


def test_the_plain_pytorch_loop_trains_with_soap(capsys):
    from mlipopt.optim import SOAP

    namespace: dict = {}
    exec(compile(python_blocks()[0], str(DOC), "exec"), namespace)
    losses = namespace["losses"]
    assert len(losses) == 5 and losses[-1] < 0.9 * losses[0]  # the loss falls
    optimizer = namespace["optimizer"]
    assert isinstance(optimizer, SOAP) and {g["role"] for g in optimizer.param_groups} == {"matrix", "adam"}
    assert optimizer.state_dict()["state"]  # it stepped and holds its moments and bases


def test_the_lightning_module_trains_with_soap_and_its_scheduler():
    pytest.importorskip("lightning")
    import torch

    from mlipopt.optim import SOAP

    loop, module = python_blocks()
    namespace: dict = {}
    setup = loop.split("model = build_model")[0]  # the imports and the frames of the loop
    exec(compile(setup, str(DOC), "exec"), namespace)

    def loss(potential) -> float:
        with torch.enable_grad():
            return sum(float(potential.training_step(f, 0).detach()) for f in namespace["frames"])

    exec(compile(module, str(DOC), "exec"), namespace)
    potential = namespace["potential"]
    [optimizer] = potential.trainer.optimizers
    assert isinstance(optimizer, SOAP)
    assert potential.trainer.current_epoch == 5
    assert optimizer.param_groups[0]["lr"] < 3e-3  # the cosine schedule stepped
    fresh = namespace["Potential"]()
    assert loss(potential) < loss(fresh)  # trained: below the same architecture at its initial weights
