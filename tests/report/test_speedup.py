"""Time to AdamW's best against a converged baseline, on synthetic databases whose answers are known."""

import math

import numpy as np

from mlipopt.report import make_report
from mlipopt.report.speedup import SeedCurve, quartiles, speedup_curve
from mlipopt.study import ResultsDB, load_study, run_config

from ..study.helpers import tiny_study


def planted_database(tmp_path, curves, stop_reasons):
    """Final runs at s = 1 with the given validation force curves (one list per seed, epochs of 1 s,
    10 steps each) and stop reasons per optimizer."""
    spec = load_study(tiny_study(tmp_path, optimizers={o: {"lr": [1e-3]} for o in curves}))
    db = ResultsDB(spec.database_url)
    for opt, seeds in curves.items():
        for seed, curve in enumerate(seeds):
            run = run_config(spec, opt, 1.0, seed, 1e-3, 0.0, (1.0, 10.0), len(curve), "final")
            db.register("tiny", [run])
            history = [
                {"epoch": k + 1, "train_time_s": float(k + 1), "eval_time_s": 0.1, "lr": 1e-3,
                 "train_loss": 1.0, "val_e_mae": 1.0, "val_e_rmse": 1.0, "val_f_mae": v, "val_f_rmse": v,
                 "val_metric": v}
                for k, v in enumerate(curve)
            ]  # fmt: skip
            reason = stop_reasons[opt]
            final = {"test": {"e_mae": 1.0, "e_rmse": 1.0, "f_mae": curve[-1], "f_rmse": curve[-1]},
                     "best_val_metric": min(curve), "train_time_s": float(len(curve)), "epochs": len(curve),
                     "steps_per_epoch": 10, "best_epoch": int(np.argmin(curve)) + 1, "stop_reason": reason,
                     "stopped_early": reason != "max_epochs",
                     "flags": [] if reason != "max_epochs" else ["not_converged"]}  # fmt: skip
            db.record_result(run.run_id, final, history)
    return spec.database_url.removeprefix("sqlite:///")


# adamw's seeds reach bests 30, 20, 25 (median 25); soap reaches 25 at epochs 1, 2, 2; muon's third seed never
CURVES = {
    "adamw": [[50, 40, 30, 30], [45, 35, 25, 20], [60, 40, 25, 25]],
    "soap": [[25, 20, 20, 20], [30, 25, 20, 20], [40, 24, 22, 20]],
    "muon": [[40, 30, 25, 24], [40, 30, 24, 24], [60, 50, 40, 30]],
}


def test_time_to_target_against_a_converged_baseline_with_median_and_iqr(tmp_path):
    database = planted_database(
        tmp_path, CURVES, {"adamw": "patience", "soap": "patience", "muon": "patience"}
    )
    text = make_report(database, tmp_path / "report").read_text()
    # adamw reaches 25 at epochs 3 (seed 1), 3 (seed 2), 3 (seed 3; seed 0 never: bests 30)
    assert (
        "| 100 % | adamw | 25.00 meV/Å | 2 of 3 | 3 [3–never] | 30 [30–never] | 3.0 [3.0–never] | — |" in text
    )
    assert "| 100 % | soap | 25.00 meV/Å | 3 of 3 | 2 [1.5–2] | 20 [15–20] | 2.0 [1.5–2.0] | 1.50× |" in text
    assert "| 100 % | muon | 25.00 meV/Å | 2 of 3 | 3 [3–never] |" in text
    assert "≥" not in text.split("## Time to adamw")[1].split("##")[0]
    assert "Not converged" not in text


def test_ratios_against_a_capped_baseline_are_lower_bounds_and_the_runs_are_flagged(tmp_path):
    """A planted capped AdamW (ended at max_epochs): its rows say not converged, every speed-up is ≥."""
    database = planted_database(
        tmp_path, CURVES, {"adamw": "max_epochs", "soap": "patience", "muon": "patience"}
    )
    index = make_report(database, tmp_path / "report").read_text()
    assert (
        "| 100 % | soap | 25.00 meV/Å | 3 of 3 | 2 [1.5–2] | 20 [15–20] | 2.0 [1.5–2.0] | ≥ 1.50× |" in index
    )
    assert "At 100 % no adamw final run converged" in index
    assert "3 of 9 final runs ended at their epoch cap" in index
    table = (tmp_path / "report" / "mae_table.md").read_text()
    adamw = next(line for line in table.splitlines() if "| adamw |" in line)
    assert "⚠ not converged 3/3" in adamw
    assert "3 did not converge" in index  # the run accounting counts them apart from training checks


def test_quartiles_treat_a_seed_that_never_reaches_the_target_as_latest():
    assert quartiles([1.0, 2.0, 3.0]) == (1.5, 2.0, 2.5)
    assert quartiles([1.0, 2.0, math.inf]) == (1.5, 2.0, math.inf)
    assert quartiles([1.0, math.inf, math.inf])[1] == math.inf


def test_speedup_along_the_baseline_curve_follows_each_target():
    """AdamW halves its error each epoch; the other optimizer drops to 20 after epoch 2 and stalls there:
    no gain on the first two targets, 1.5× on the third (epoch 2 against 3), none reached below 20."""

    def seed(values):
        values = np.asarray(values, dtype=float)
        steps = np.arange(1, len(values) + 1, dtype=float)
        return SeedCurve(None, values, steps, steps, True)

    targets, base_time, ratio = speedup_curve([seed([80, 40, 20, 10])], [seed([80, 20, 20, 20])])
    assert targets.tolist() == [80, 40, 20, 10] and base_time.tolist() == [1, 2, 3, 4]
    assert ratio[:3].tolist() == [1.0, 1.0, 1.5] and np.isnan(ratio[3])
