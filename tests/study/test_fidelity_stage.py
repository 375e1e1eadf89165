"""The study's fidelity stage: MD with every final model, stored per run, shown per cell in the report,
and not run again on a resume."""

from __future__ import annotations

from mlipopt.report import make_report
from mlipopt.study import ResultsDB, load_study, run_study

from .helpers import tiny_study


def test_every_final_model_gets_md_once_and_the_report_a_stability_row_per_cell(tmp_path):
    raw = tiny_study(tmp_path, optimizers={"adamw": {"lr": [5e-3]}}, loss_ratios=[[1, 1]], seeds=[1, 2])
    raw.update(force_fractions=[1.0], step_cost=None)
    raw["fidelity"] = {"protocol": "molecule", "reference": "emt", "temperature_K": 300.0, "steps": 20,
                       "seeds": 1, "interval": 5, "observed": "water"}  # fmt: skip
    spec = load_study(raw)
    lines: list[str] = []
    run_study(spec, progress=lines.append)
    db = ResultsDB(spec.database_url)
    finals = [r for r in db.runs("tiny", stage="final") if r.status == "done"]
    results = db.fidelity_results([r.id for r in finals])
    assert len(finals) == 2 and sorted(r[0] for r in results) == sorted(r.id for r in finals)
    assert all(p == "molecule" and t == 300.0 and 0.0 <= res["survived"] <= 1.0 for _, p, t, res in results)
    assert all(res["observed"] == "water" and res["pair_curves"] for *_, res in results)
    assert any(
        "fidelity (molecule, 300 K, 1 × 20 MD steps" in line and "(2 to run)" in line for line in lines
    )
    index = make_report(spec.database_url.removeprefix("sqlite:///")).read_text()
    [row] = [line for line in index.splitlines() if line.startswith("| molecule | 300 K | 100 % | adamw |")]
    assert row.split("|")[5].strip().endswith("/2")  # models stable k/2
    assert "Against experiment" not in index  # experiment is known for liquids, not for this molecule
    again: list[str] = []
    run_study(load_study(raw), progress=again.append)
    assert any("(0 to run)" in line for line in again if line.startswith("fidelity"))
