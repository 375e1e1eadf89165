from pathlib import Path

import pytest

from mlipopt.study import OptimizerGrid, load_study, run_config
from mlipopt.study.presets import STUDY_PRESETS, preset
from mlipopt.study.spec import neighbour_rate
from mlipopt.train import ConfigError

from .helpers import tiny_study


def test_learning_rate_grid_around_an_order():
    assert OptimizerGrid(lr_order=3).learning_rates("x") == [3e-4, 1e-3, 3e-3]
    assert OptimizerGrid(lr_order=2, lr_extra=True).learning_rates("x") == [3e-3, 5e-3, 1e-2, 3e-2]
    with pytest.raises(ConfigError, match="unknown optimizer"):
        OptimizerGrid().learning_rates("adamx")
    with pytest.raises(ConfigError, match="positive"):
        OptimizerGrid(lr=[1e-3, -1e-3]).learning_rates("adamw")


def test_an_optimizer_without_a_grid_gets_its_default_grid(tmp_path):
    """`optimizers: {adamw: {}, soap_muon: {}}` is a complete study: the default grids are swept."""
    from mlipopt.optim.registry import optimizer_spec

    spec = load_study(tiny_study(tmp_path, optimizers={"adamw": {}, "soap_muon": {}}))
    for name in ("adamw", "soap_muon"):
        rates = spec.optimizers[name].learning_rates(name)
        assert rates == list(optimizer_spec(name).lr_grid) and len(rates) >= 4
    # seed 001 table 4's optima and seed 002's fine-tuning rates lie inside, with a point beyond each end
    adam = list(optimizer_spec("adamw").lr_grid)
    assert adam[0] < 5e-4 and adam[-1] > 3e-2
    soap_muon = optimizer_spec("soap_muon").lr_grid
    assert soap_muon[0] < 3e-4 and soap_muon[-1] > 1e-3


def test_neighbour_rate_walks_the_grid_ladder():
    assert [neighbour_rate(x, 1) for x in (1e-3, 3e-3, 5e-3)] == [3e-3, 1e-2, 1.58e-2]
    assert [neighbour_rate(x, -1) for x in (1e-3, 3e-3, 5e-3)] == [3e-4, 1e-3, 1.58e-3]


def test_run_identity_is_the_config(tmp_path):
    spec = load_study(tiny_study(tmp_path))
    a = run_config(spec, "adamw", 1.0, 1, 1e-3, 0.0, (1.0, 1.0), 2, "final")
    b = run_config(spec, "adamw", 1.0, 1, 1e-3, 0.0, (1.0, 1.0), 2, "sweep")
    c = run_config(spec, "adamw", 1.0, 1, 1e-3, 1e-4, (1.0, 1.0), 2, "final")
    assert a.run_id == b.run_id != c.run_id
    assert a.config["run_dir"].endswith(a.run_id)
    assert a.config["optimizer"]["name"] == "adamw" and a.config["data"]["force_fraction"] == 1.0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"optimizers": {}}, "at least one optimizer"),
        ({"optimizers": {"adamz": {}}}, "unknown optimizer"),
        ({"sweep_extensions": -1}, "sweep_extensions"),
        ({"force_fractions": [1.5]}, r"not in \[0, 1\]"),
        ({"executor": {"kind": "slurm"}}, "local or ray"),
        ({"base": {"model": {"preset": "nequip-tiny"}}}, "give a dataset"),
        ({"base": {"data": {"generate": {}}, "optimizer": {"name": "soap"}}}, "leave out `optimizer`"),
        ({"sweeep_epochs": 3}, "did you mean 'sweep_epochs'"),
    ],
)
def test_bad_studies_fail_with_the_key(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_study(tiny_study(tmp_path, **change))


def test_bad_run_config_fails_at_expansion(tmp_path):
    spec = load_study(tiny_study(tmp_path, optimizers={"adagrad": {"lr": [1e-3]}}))
    with pytest.raises(ConfigError, match="unknown optimizer 'adagrad'"):
        run_config(spec, "adagrad", 1.0, 1, 1e-3, 0.0, (1.0, 1.0), 2, "final")


@pytest.mark.parametrize("name", sorted(STUDY_PRESETS))
def test_presets_expand(tmp_path, name):
    raw = preset(name)
    raw["study_dir"] = str(tmp_path)
    raw["base"]["data"]["train"] = str(tmp_path / "data.xyz")  # the demo's comes from its built-in dataset
    spec = load_study(raw)
    for optimizer in spec.optimizers:
        lr = spec.optimizers[optimizer].learning_rates(optimizer)[0]
        run_config(spec, optimizer, spec.force_fractions[-1], spec.seeds[0], lr, 0.0, (1, 10), 3, "final")
    if name == "water-md":  # trains on, and compares MD with, the recorded xTB water reference
        assert Path(spec.fidelity.reference.partition("@")[0]).is_file()
        assert spec.fidelity.reference.endswith("trajectory.extxyz@50:") and spec.fidelity.ensemble == "bussi"
        assert spec.fidelity.settings().steps == spec.fidelity.steps == 4000
    if name == "paper-nequip":
        assert spec.seeds == [7, 42, 123, 2026, 1618]
        # seed 001 table 4 (water): AdamW/Muon/SOAP at 1e-2 or 5e-3, SOAP-Muon at 1e-3 or 3e-4
        assert spec.optimizers["adamw"].learning_rates("adamw") == [3e-3, 5e-3, 1e-2, 3e-2]
        assert spec.optimizers["soap_muon"].learning_rates("soap_muon") == [3e-4, 5e-4, 1e-3, 3e-3]


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ({"protocol": "gas"}, "protocol must be one of molecule, liquid, crystal"),
        ({"observed": "ammonia"}, "no experimental reference 'ammonia'; known: water"),
        (
            {"reference": "missing.extxyz@50:"},
            "neither a reference calculator .* python -m mlipopt.data.reference_md",
        ),
    ],
)
def test_a_bad_fidelity_stage_is_refused_before_any_run(tmp_path, stage, message):
    raw = {"name": "s", "base": {"data": {"train": str(tmp_path / "d.xyz")}}, "optimizers": {"adamw": {}}}
    raw["fidelity"] = stage
    with pytest.raises(ConfigError, match=message):
        load_study(raw, base_dir=tmp_path)


def test_a_relative_fidelity_reference_is_taken_from_the_study_folder(tmp_path):
    (tmp_path / "ref.extxyz").write_text("")
    raw = {"name": "s", "base": {"data": {"train": "d.xyz"}}, "optimizers": {"adamw": {}},
           "fidelity": {"reference": "ref.extxyz@10:"}}  # fmt: skip
    assert load_study(raw, base_dir=tmp_path).fidelity.reference == f"{tmp_path / 'ref.extxyz'}@10:"
