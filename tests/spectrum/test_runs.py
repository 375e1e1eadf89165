"""The spectrum of a real (tiny) NequIP run: HVPs against finite differences, the CLI, L-BFGS pairs."""

import json

import pytest
import torch

from mlipopt.cli import main
from mlipopt.spectrum import HessianOperator, trainer_loss_terms
from mlipopt.spectrum.analysis import analyse_run
from mlipopt.train import Trainer, train
from mlipopt.train.refine import refine

from ..train.helpers import tiny_config


def test_hvp_of_the_energy_and_force_loss_equals_finite_differences_of_the_gradient(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, model={"dtype": "float64"}, data={"force_fraction": 0.5}))
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    op = HessianOperator(params, trainer_loss_terms(trainer, frames=6), method="autograd")
    v = torch.randn(op.size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = op.matvec(v)
    fd = HessianOperator(params, trainer_loss_terms(trainer, frames=6), method="fd").matvec(v)
    assert float((exact - fd).norm() / fd.norm()) < 1e-4
    assert float(exact.norm()) > 0 and op.products == 1


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("spectrum")
    out = {}
    for name in ("adamw", "soap", "muon"):  # a diagonal, a Kronecker-factored and a polar preconditioner
        run = root / name
        train(
            tiny_config(run, optimizer={"name": name, "lr": 5e-3}, training={"max_epochs": 2}),
            log=lambda _: None,
        )
        out[name] = run
    return root, out


def test_analyse_run_reports_h_and_the_preconditioned_h_per_role(runs):
    _, dirs = runs
    for name, run in dirs.items():
        full = name == "soap"  # density and per-role views once; the other two for their preconditioners
        result = analyse_run(
            run, "last", k=3, frames=2, blocks=int(full), density=full, probes=1, steps=8, tol=1e-2,
            progress=lambda _: None,
        )  # fmt: skip
        h, ph = result["spectra"]["H"], result["spectra"]["PH"]
        assert len(h["top"]) == 3 and h["top"][0] >= h["top"][-1] > 0 and h["kappa_top"] >= 1
        assert len(ph["top"]) == 3 and ph["kappa_top"] >= 1
        assert ph["top"] != h["top"]  # the preconditioner changed the spectrum
        assert result["hessian_vector_products"] > 0 and result["optimizer"] == name
        if full:
            assert h["effective_rank"] > 0 and len(h["density"]["grid"]) == len(h["density"]["density"])
            assert {row["view"] for row in result["blocks"]} >= {"role:matrix", "role:adam"}


def test_cli_writes_the_report_and_refined_runs_use_the_lbfgs_pairs(runs, tmp_path, capsys):
    root, dirs = runs
    refine(dirs["adamw"], iterations=3, memory=3, patience=3, log=lambda _: None)
    weights = torch.load(dirs["adamw"] / "refined_model.pt", weights_only=True)
    assert len(weights["lbfgs"]["s"]) >= 1
    out = tmp_path / "spectra"
    args = ["spectrum", str(dirs["adamw"]), "--checkpoints", "last,refined", "--k", "2", "--frames", "2",
            "--blocks", "0", "--probes", "1", "--steps", "6", "--out", str(out),
            "--database", f"sqlite:///{tmp_path / 'r.db'}"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| adamw | last | adamw |" in printed and "| adamw | refined | adamw |" in printed
    saved = json.loads((out / "spectrum.json").read_text())
    assert [r["checkpoint"] for r in saved] == ["last", "refined"]
    assert saved[1]["note"].startswith("L-BFGS")
    assert (out / "spectrum_density.png").stat().st_size > 0 and (out / "spectrum.md").is_file()
    from mlipopt.study import ResultsDB

    assert len(ResultsDB(f"sqlite:///{tmp_path / 'r.db'}").spectra(["adamw"])) == 2


def test_optimizers_without_a_linear_preconditioner_say_so(tmp_path):
    run = tmp_path / "lamb"
    train(
        tiny_config(run, optimizer={"name": "lamb", "lr": 1e-3}, training={"max_epochs": 1}),
        log=lambda _: None,
    )
    result = analyse_run(
        run, "last", k=2, frames=2, blocks=0, density=False, tol=1e-2, progress=lambda _: None
    )
    assert "PH" not in result["spectra"] and "trust ratio" in result["note"]


def test_study_stage_stores_spectra_and_the_report_shows_them(tmp_path):
    from mlipopt.report import make_report
    from mlipopt.study import ResultsDB, load_study, run_study

    from ..study.helpers import tiny_study

    raw = tiny_study(
        tmp_path, optimizers={"adamw": {"lr": [5e-3]}, "soap": {"lr": [5e-3]}}, force_fractions=[1.0],
        seeds=[1], loss_ratios=[[1.0, 1.0]],
        spectrum={"checkpoints": ["last"], "k": 2, "frames": 2, "probes": 1, "steps": 6},
    )  # fmt: skip
    lines = []
    run_study(load_study(raw), progress=lines.append)
    spec = load_study(raw)
    db = ResultsDB(spec.database_url)
    assert len(db.spectra([r.id for r in db.runs("tiny")])) == 2
    assert any("κ_top(P·H)" in line for line in lines)
    index = make_report(spec.database_url.removeprefix("sqlite:///"), tmp_path / "report").read_text()
    assert "## Conditioning: loss Hessian H and preconditioned P·H" in index
    assert "| 100 % | soap | last | 1 |" in index and (tmp_path / "report" / "spectrum_density.png").is_file()
