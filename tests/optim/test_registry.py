"""The optimizer registry is the one place that names optimizers, and every entry is usable."""

import ast
from pathlib import Path

import pytest
import torch

from mlipopt.optim import build_optimizer, has_train_eval_modes
from mlipopt.optim.registry import (
    BASELINE,
    OPTIMIZERS,
    PRECONDITIONER_VIEWS,
    baseline_first,
    canonical_name,
    optimizer_spec,
    same_without_decay_pairs,
)
from mlipopt.structure import param_groups

SRC = Path(__file__).resolve().parents[2] / "src" / "mlipopt"
#: Modules allowed to spell optimizer names: the registry, and the study presets, which are study
#: configs (which optimizers a preset compares, at which rates) written in Python.
ALLOWED = {SRC / "optim" / "registry.py", SRC / "study" / "presets.py"}
#: "adam" is also the structure role of parameters updated elementwise (mlipopt.optim._layout.ROLES) and
#: a tensor-product policy (mlipopt.structure.discover.TP_POLICIES): those literals are not optimizer names.
ROLE_WORDS = {"adam"}


def test_no_module_outside_the_registry_names_an_optimizer():
    names = {n for s in OPTIMIZERS.values() for n in (s.name, *s.aliases)} - ROLE_WORDS
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path in ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: {node.value!r}")
    assert not found, "optimizer names outside mlipopt.optim.registry:\n" + "\n".join(found)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_entry_builds_and_steps(name):
    entry = OPTIMIZERS[name]
    assert entry.preconditioner in PRECONDITIONER_VIEWS
    assert entry.lr_grid == tuple(sorted(entry.lr_grid)) and entry.lr_grid[0] > 0
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.SiLU(), torch.nn.Linear(5, 1))
    optimizer = build_optimizer(name, model, lr=1e-3)
    assert isinstance(optimizer, entry.load()) and isinstance(optimizer, torch.optim.Optimizer)
    if entry.structured:  # the matrix role reached the optimizer as its own group
        assert {g.get("role") for g in optimizer.param_groups} == {g["role"] for g in param_groups(model)}
    if has_train_eval_modes(optimizer):
        optimizer.train()
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):  # SOAP's first step only sets up its bases (as official SOAP's)
        optimizer.zero_grad()
        model(torch.randn(8, 4)).square().mean().backward()
        optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_aliases_and_spellings_resolve_and_a_typo_gets_a_suggestion():
    assert canonical_name("SOAP-Muon") == "soap_muon" == canonical_name("soapmuon")
    assert optimizer_spec("schedulefree").name == "schedulefree_adamw"
    with pytest.raises(ValueError, match="did you mean 'soap'"):
        canonical_name("saop")


def test_the_registry_declares_the_baseline_and_the_decay_twins():
    assert BASELINE in OPTIMIZERS and baseline_first(["soap", BASELINE, "muon"]) == [BASELINE, "muon", "soap"]
    assert same_without_decay_pairs() == [("adamw", "adam")]


def test_a_registry_entry_is_read_only():
    with pytest.raises(TypeError):
        OPTIMIZERS["new"] = OPTIMIZERS["adamw"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        OPTIMIZERS["adamw"].structured = True  # type: ignore[misc]
