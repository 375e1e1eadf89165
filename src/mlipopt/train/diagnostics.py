"""Did a run train? Flags computed from its validation curve, stored with its results and shown in reports.

A table of test errors is a claim that each model was trained. Three patterns say it was not, or that
its selected epoch is an artifact (issue: "numbers a user can trust"):

* ``early_best``: the best validation metric falls in the first 20 % of the epoch budget — selection
  kept an (almost) untrained model. For a run its stopping rule ended, the budget is the epochs it ran:
  its ``max_epochs`` is only a cap (issue 24's converged runs stop after 70–380 of 1000), and against the
  cap every run that converged within 200 epochs read "did not train";
* ``no_progress``: the validation metric after the last epoch is worse than after the first;
* ``energy_drift``: the validation energy MAE rose above twice its epoch-1 value at some epoch (the
  per-atom offset forces cannot see, :mod:`mlipopt.models.energy_shifts`);
* ``not_converged``: the run ended at ``max_epochs`` without meeting its stopping rule (early-stopping
  patience or the learning-rate floor; a fixed budget has none): the model was still learning, so a
  comparison with it compares budgets, not optimizers (issue 24);
* ``constant_energy``: trained on energies only (no validation force), the best validation energy MAE
  is within 5 % of what per-element constants fitted on the training split achieve — the model learned
  nothing about geometry (e.g. energy-only training on 150 frames of 3BPA at 300 K, whose energies
  vary by 6 meV/atom).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

FLAGS: dict[str, str] = {
    "early_best": "best epoch in the first 20 % of the budget (of the epochs run, if stopped by its rule)",
    "no_progress": "validation metric at the end worse than at epoch 1",
    "energy_drift": "validation energy MAE rose above 2× its epoch-1 value",
    "constant_energy": "energy-only model no better than per-element constants (within 5 %)",
    "not_converged": "ended at max_epochs before its stopping rule (patience or learning-rate floor)",
}

#: What a report says about a flagged run.
VERDICT: dict[str, str] = {
    "early_best": "did not train",
    "no_progress": "did not train",
    "energy_drift": "energy drift",
    "constant_energy": "did not train",
    "not_converged": "not converged",
}

EARLY_FRACTION = 0.2
DRIFT_FACTOR = 2.0


CONSTANT_MARGIN = 0.95


def training_flags(
    history: Sequence[dict[str, Any]],
    max_epochs: int,
    best_epoch: int,
    constant_val_e_mae: float | None = None,
    converged: bool | None = None,
) -> list[str]:
    """Flags (keys of :data:`FLAGS`) of a run from its per-epoch rows (``val_metric``, ``val_e_mae``,
    ``val_f_mae``); ``constant_val_e_mae`` is the per-element-constants baseline on validation;
    ``converged`` whether a stopping rule ended the run (None: unknown, no flag)."""
    flags = []
    budget = len(history) if converged else max_epochs  # a stopped run's cap is not its budget
    if len(history) > 1 and best_epoch <= EARLY_FRACTION * budget:
        flags.append("early_best")
    metrics = [row.get("val_metric") for row in history]
    if len(metrics) > 1 and _finite(metrics[0]) and _finite(metrics[-1]) and metrics[-1] > metrics[0]:
        flags.append("no_progress")
    energies = [row.get("val_e_mae") for row in history]
    if len(energies) > 1 and _finite(energies[0]):
        later = [e for e in energies[1:] if _finite(e)]
        if later and max(later) > DRIFT_FACTOR * energies[0]:
            flags.append("energy_drift")
    energy_only = history and all(row.get("val_f_mae") is None for row in history)
    finite = [e for e in energies if _finite(e)]
    if (
        energy_only
        and finite
        and _finite(constant_val_e_mae)
        and min(finite) > CONSTANT_MARGIN * constant_val_e_mae
    ):
        flags.append("constant_energy")
    if converged is False:
        flags.append("not_converged")
    return flags


def converged_from_final(final: dict[str, Any], max_epochs: int) -> bool | None:
    """Whether a stored run ended by its stopping rule: its ``stop_reason``, or for records written
    before it, ``stopped_early`` (a run that stopped before ``max_epochs`` was stopped by its rule)."""
    if "stop_reason" in final:
        return final["stop_reason"] != "max_epochs"
    if "stopped_early" in final:
        return bool(final["stopped_early"]) or int(final.get("epochs", max_epochs)) < max_epochs
    return None


def verdicts(flags: Sequence[str]) -> list[str]:
    """The distinct report labels ("did not train", "energy drift") of a run's flags, in order."""
    out: list[str] = []
    for flag in flags:
        label = VERDICT.get(flag, flag)
        if label not in out:
            out.append(label)
    return out


def training_checks(flags: Sequence[str]) -> list[str]:
    """The flags that say a run did not train well, without ``not_converged`` (a property of its
    budget: every short sweep run has it, and selection must not weigh it)."""
    return [f for f in flags if f != "not_converged"]


def _finite(value: Any) -> bool:
    return value is not None and value == value and abs(value) != float("inf")
