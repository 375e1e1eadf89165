import csv
import json

import pytest
import torch

from mlipopt.cli import main
from mlipopt.train import train

from .helpers import tiny_config


@pytest.mark.parametrize("criterion", ["force_rmse", "metric"])
def test_refine_keeps_the_best_iteration_and_records_evaluations(tmp_path, capsys, criterion):
    train(tiny_config(tmp_path, training={"max_epochs": 2}), log=lambda _: None)
    args = ["--iterations", "4", "--memory", "5", "--patience", "3", "--criterion", criterion]
    assert main(["refine", str(tmp_path), *args]) == 0
    summary = json.loads((tmp_path / "refine_final.json").read_text())
    assert summary["criterion"] == criterion
    rows = list(csv.DictReader(open(tmp_path / "refine_metrics.csv")))
    assert 1 <= len(rows) <= 4
    assert summary["function_evals"] >= len(rows) and summary["gradient_evals"] == summary["function_evals"]
    start_line = [line for line in capsys.readouterr().out.splitlines() if "start, validation" in line][0]
    # the log names the quantity it selects on
    assert ("force RMSE" in start_line) == (criterion == "force_rmse")
    start_metric = float(start_line.rsplit(" ", 1)[1])
    assert summary["best_val_metric"] == min([start_metric] + [float(r["val_metric"]) for r in rows])
    refined = torch.load(tmp_path / "refined_model.pt", weights_only=False)
    assert refined["iteration"] == summary["best_iteration"]
    if summary["best_iteration"]:
        assert float(rows[summary["best_iteration"] - 1]["val_metric"]) == summary["best_val_metric"]
    assert set(summary["test_after"]) == {"e_mae", "e_rmse", "e_bias", "f_mae", "f_rmse"}
    if criterion == "metric":  # the starting point is the trained model's own selection metric
        final = json.loads((tmp_path / "final_metrics.json").read_text())
        assert abs(start_metric - final["best_val_metric"]) < 1e-3 * final["best_val_metric"]
    from mlipopt.calculator import load_model

    model, _ = load_model(tmp_path, weights="refined")
    assert all(torch.equal(v, refined["model"][k]) for k, v in model.state_dict().items())


def test_refine_refuses_a_folder_without_a_run(tmp_path, capsys):
    assert main(["refine", str(tmp_path)]) == 2
    assert "holds no trained run" in capsys.readouterr().err
