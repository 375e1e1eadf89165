"""Extra-test and forgetting sections of the report, on a synthetic database with known answers."""

from pathlib import Path

import pytest

from mlipopt.report import make_report
from mlipopt.study import ResultsDB, load_study, run_config

from ..study.helpers import tiny_study

# optimizer → per seed: (test F MAE, path E MAE, path offset-free E MAE, forgetting E MAE, forgetting F MAE)
RESULTS = {
    "adamw": [(50.0, 4.0, 1.0, 2.0, 30.0), (70.0, 6.0, 3.0, 4.0, 50.0)],
    "lamb": [(40.0, 8.0, 2.0, 1.0, 90.0), (40.0, 8.0, 2.0, 1.0, 110.0)],
}


def _errors(e, f=None, **more):
    return {"e_mae": e, "e_rmse": e, "f_mae": f, "f_rmse": f, **more}


@pytest.fixture
def database(tmp_path):
    spec = load_study(tiny_study(tmp_path, optimizers={o: {"lr": [1e-3]} for o in RESULTS}))
    db = ResultsDB(spec.database_url)
    for opt, seeds in RESULTS.items():
        for seed, (f_test, e_path, e_free, e_forget, f_forget) in enumerate(seeds):
            run = run_config(spec, opt, 1.0, seed, 1e-3, 0.0, (1.0, 10.0), 2, "final")
            db.register("tiny", [run])
            final = {
                "test": _errors(1.0, f_test),
                "extra_tests": {"path": _errors(e_path, e_mae_offset_free=e_free, frames=3)},
                "forgetting": _errors(e_forget, f_forget),
                "pretrained": {"test": _errors(3.0, 190.0 + seed), "forgetting": _errors(0.0, 0.0)},
                "best_val_metric": 1.0, "train_time_s": 1.0, "epochs": 2, "steps_per_epoch": 1,
            }  # fmt: skip
            history = [{"epoch": 1, "train_time_s": 1.0, "eval_time_s": 0.1, "lr": 1e-3, "train_loss": 1.0,
                        "val_e_mae": 1.0, "val_f_mae": 1.0, "val_metric": 11.0}]  # fmt: skip
            db.record_result(run.run_id, final, history)
            folder = Path(run.config["run_dir"])
            folder.mkdir(parents=True)
            (folder / "extra_test_path_pretrained.csv").write_text(
                "frame,coordinate,n_atoms,energy_ref,energy_pred\n0,0.2,9,-1.0,-0.7\n1,0.0,9,0.0,0.3\n"
                "2,0.1,9,-2.0,-1.2\n"
            )
            (folder / "extra_test_path.csv").write_text(
                "frame,coordinate,n_atoms,energy_ref,energy_pred\n"
                "0,0.2,9,-1.0,-0.5\n1,0.0,9,0.0,0.1\n2,0.1,9,-2.0,-1.9\n"
            )
            if opt == "adamw":  # refined: forgetting and the path both change
                summary = {
                    "function_evals": 7, "test_before": final["test"],
                    "test_after": _errors(1.0, f_test - 10),
                    "extra_tests_after": {"path": _errors(2 * e_path, e_mae_offset_free=e_free, frames=3)},
                    "forgetting_after": _errors(e_forget, f_forget + 20),
                }  # fmt: skip
                db.record_refinement(run.run_id, summary)
    return spec.database_url.removeprefix("sqlite:///")


def test_extra_test_and_forgetting_tables(database, tmp_path):
    text = make_report(database, tmp_path / "report").read_text()
    assert "### `path` (3 frames)" in text
    assert "| 100 % | adamw | 2 | 5.00 ± 1.41 | 5.00 ± 1.41 | 2.00 ± 1.41 | — | — |" in text
    assert "| 100 % | adamw +L-BFGS | 2 | 10.00 ± 2.83 | 10.00 ± 2.83 | 2.00 ± 1.41 | — | — |" in text
    assert "| 100 % | lamb | 2 | 8.00 ± 0.00 | 8.00 ± 0.00 | 2.00 ± 0.00 | — | — |" in text
    assert "| 100 % | lamb | 2 | 40.0 ± 0.0 | 1.00 ± 0.00 | 100.0 ± 14.1 |" in text
    assert "| 100 % | adamw +L-BFGS | 2 | 50.0 ± 14.1 | 3.00 ± 1.41 | 60.0 ± 14.1 |" in text
    # rows ordered by test error: lamb (40) before adamw (60)
    assert text.index("| 100 % | lamb | 2 | 40.0") < text.index("| 100 % | adamw | 2 | 60.0")
    # the pretrained model before fine-tuning: its mean over the 4 runs, forgetting zero by definition
    assert "(pretrained model, per-element energy shifts refitted to the training split; 4 runs): " in text
    assert "test E MAE 3.00 ± 0.00 meV/atom, F MAE 190.5 ± 0.6 meV/Å." in text
    assert "| 100 % | pretrained (no fine-tuning) | 4 | 190.5 ± 0.6 | 0.00 ± 0.00 | 0.0 ± 0.0 |" in text
    for figure in ("extra_test_paths.png", "forgetting.png"):
        assert (tmp_path / "report" / figure).stat().st_size > 0
        assert f"]({figure})" in text


def test_studies_without_them_have_no_such_sections(tmp_path):
    spec = load_study(tiny_study(tmp_path, optimizers={"adamw": {"lr": [1e-3]}}))
    db = ResultsDB(spec.database_url)
    run = run_config(spec, "adamw", 1.0, 0, 1e-3, 0.0, (1.0, 1.0), 2, "final")
    db.register("tiny", [run])
    db.record_result(run.run_id, {"test": _errors(1.0, 2.0), "best_val_metric": 1.0}, [])
    text = make_report(spec.database_url.removeprefix("sqlite:///"), tmp_path / "r").read_text()
    assert "Extra test sets" not in text and "Forgetting" not in text
