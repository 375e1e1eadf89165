"""The report says when a run did not train: planted divergence and planted energy drift, end to end."""

import torch

from mlipopt.models.energy_shifts import add_energy_shifts
from mlipopt.report import make_report
from mlipopt.study import ResultsDB, load_study, run_study
from mlipopt.train import Trainer

from ..study.helpers import tiny_study


def test_report_flags_a_planted_divergence_and_a_planted_drift(tmp_path, monkeypatch):
    original = Trainer.train_epoch

    def planted(self):
        row = original(self)
        if self.config.seed == 2:  # energy drift: an offset added to the energies every epoch
            add_energy_shifts(self.model, "nequip", dict.fromkeys(self.resolved.model.type_names, 0.5))
        if self.config.seed == 3:  # divergence: the weights scrambled more every epoch
            generator = torch.Generator().manual_seed(self.epoch)
            with torch.no_grad():
                for p in self.model.parameters():
                    p.add_(0.3 * (self.epoch + 1) * torch.randn(p.shape, generator=generator, dtype=p.dtype))
        return row

    monkeypatch.setattr(Trainer, "train_epoch", planted)
    raw = tiny_study(
        tmp_path,
        optimizers={"adamw": {"lr": [5e-3]}},
        force_fractions=[1.0],
        seeds=[1, 2, 3],
        loss_ratios=[[1.0, 1.0]],
        base={
            "data": {"generate": {"system": "ethanol", "n_frames": 14}, "split": [8, 3, 3], "batch_size": 4},
            "model": {"preset": "nequip-tiny", "energy_shifts": "fixed"},
            "training": {"max_epochs": 5},
        },
    )
    lines = []
    run_study(load_study(raw), progress=lines.append)
    spec = load_study(raw)
    flags = {r.seed: r.flags for r in ResultsDB(spec.database_url).runs("tiny", stage="final")}
    assert "energy_drift" in flags[2] and "no_progress" in flags[3] and "early_best" in flags[3]
    assert any("2 of the 3 trained final runs are flagged" in line for line in lines)

    index = make_report(spec.database_url.removeprefix("sqlite:///"), tmp_path / "report").read_text()
    assert "Warning: 2 of 3 final runs did not train cleanly" in index
    assert "- adamw s = 100 % seed 3 (best epoch 1 of 5): did not train" in index
    assert "seed 2" in index and "energy drift" in index
    table = (tmp_path / "report" / "mae_table.md").read_text()
    # the drifting run is also selected at epoch 1, the scrambled one also drifts in energy
    assert "⚠ did not train 2/3, energy drift 2/3" in table


def test_step_cost_rows_give_the_mean_over_periods_and_say_when_only_a_median_was_kept(tmp_path):
    """The report's step cost is the mean over whole refresh periods (a refresh is a real cost); a
    database written before means were kept shows its median marked as such, never as the cost."""
    from mlipopt.report.trust import measured_cost_rows, measured_step_seconds

    db = ResultsDB(f"sqlite:///{tmp_path / 'r.db'}")
    common = dict(with_forces=1, q25_s=0.09, q75_s=0.11, repeats=20, description="test")
    db.record_step_costs(
        "s",
        [
            dict(optimizer="adamw", median_s=0.1, ratio_median=1.0, mean_s=0.1, period_min_s=0.1,
                 period_max_s=0.1, slowest_s=0.12, ratio_mean=1.0, period=10, **common),
            dict(optimizer="soap", median_s=0.1, ratio_median=1.0, mean_s=0.2, period_min_s=0.19,
                 period_max_s=0.21, slowest_s=1.1, ratio_mean=2.0, period=10, **common),
            dict(optimizer="muon", median_s=0.15, ratio_median=1.5, **common),
        ],
    )  # fmt: skip
    rows = "\n".join(measured_cost_rows(db, "s", "adamw"))
    assert "| soap | yes | 200.0 [190.0–210.0] | 2.00 | 100.0 | 1100.0 |" in rows
    assert "| muon | yes | — (median 150.0) | 1.50 |" in rows
    assert measured_step_seconds(db, "s", with_forces=True) == {"adamw": 0.1, "soap": 0.2, "muon": 0.15}


def test_adam_against_adamw_without_weight_decay_is_called_the_same_optimizer():
    """Adam and AdamW differ only in how weight decay is applied: at zero decay the report says their rows
    compare an optimizer with itself; with a decay, or without one of them, it says nothing."""
    from mlipopt.report.trust import same_optimizer_line
    from mlipopt.study.db import Run

    def runs(adamw_decay):
        return [Run(optimizer="adam", weight_decay=0.0), Run(optimizer="adamw", weight_decay=adamw_decay),
                Run(optimizer="soap", weight_decay=0.0)]  # fmt: skip

    (line, _) = same_optimizer_line(runs(0.0))
    assert "same optimizer" in line and "weight_decay=[0,1e-5,1e-4,1e-3]" in line
    assert same_optimizer_line(runs(1e-4)) == []
    assert same_optimizer_line([Run(optimizer="adamw", weight_decay=0.0)]) == []
