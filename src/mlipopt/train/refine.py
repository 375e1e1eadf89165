"""L-BFGS refinement of a trained run (Liu et al. appendix B): a short full-batch quasi-Newton stage.

Starts from the run's best weights, minimises the same eq. 11 loss over the whole training split with
:class:`mlipopt.optim.lbfgs.LBFGS`, evaluates the validation force RMSE after every iteration (energy
RMSE when no validation frame has forces), stops after ``patience`` iterations without improvement,
and keeps the best parameters. Where training refits the per-type energy shifts after every epoch
(``model.energy_shifts: refit``), refinement refits them after every iteration too, and a kept
iteration whose validation energy MAE exceeds the training drift bound is flagged. Writes
``refined_model.pt``, ``refine_metrics.csv`` and
``refine_final.json`` (test errors before and after, evaluations, wall-clock) into the run directory.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..optim.lbfgs import LBFGS
from .checkpoint import load_torch, save_json, save_text, save_torch
from .config import load_config
from .diagnostics import DRIFT_FACTOR, VERDICT
from .loss import validation_metric
from .session import Session

CRITERIA = ("force_rmse", "metric")

COLUMNS = ("iteration", "loss", "grad_norm", "step_size", "wolfe", "damped", "function_evals",
           "val_metric", "seconds")  # fmt: skip


def refinement_flags(e_mae_before: float | None, e_mae_after: float | None) -> list[str]:
    """``energy_drift`` when the kept iteration's validation energy MAE exceeds the bound training
    flags (:data:`mlipopt.train.diagnostics.DRIFT_FACTOR` × the starting value)."""
    if e_mae_before is None or e_mae_after is None or not e_mae_before > 0:
        return []
    return ["energy_drift"] if e_mae_after > DRIFT_FACTOR * e_mae_before else []


def refine(
    run_dir: str | Path,
    iterations: int = 50,
    memory: int = 20,
    patience: int = 10,
    criterion: str = "force_rmse",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Refine the best model of ``run_dir`` with L-BFGS; returns the summary also saved as JSON.

    ``criterion`` picks the kept iteration: ``force_rmse`` (validation force RMSE, Liu et al. appendix B)
    or ``metric`` (10 × E-MAE + F-MAE, the training selection metric — guards the energy, which a
    force-only criterion lets drift when λ_F ≫ λ_E).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    run_dir = Path(run_dir)
    config = dataclasses.replace(load_config(run_dir / "config.yaml"), run_dir=str(run_dir))
    trainer = Session(config, log=lambda _: None)  # data, model and loss; no optimizer of the run's
    trainer.model.load_state_dict(load_torch(run_dir / "best_model.pt")["model"])
    model, train, c = trainer.model, trainer.sets["train"], config

    refit = c.model.energy_shifts == "refit"

    def val_errors() -> dict[str, Any]:
        """Validation errors of the current weights, the energy shifts refitted first where training
        refits them (forces do not see the shifts; the energy does, and L-BFGS moves it)."""
        if refit:
            trainer.refit_energy_shifts()
        return trainer.evaluate("val") if len(trainer.sets["val"]) else trainer.evaluate("train")

    def val_metric(errors: dict[str, Any]) -> float:
        if criterion == "metric":
            return validation_metric(errors)
        return errors["f_rmse"] if errors["f_rmse"] is not None else errors["e_rmse"]

    def closure() -> torch.Tensor:
        """Eq. 11 over the whole training split (batches weighted by their share), gradients summed."""
        model.train()
        model.zero_grad(set_to_none=True)
        total = torch.zeros((), dtype=torch.float64)
        for batch in train.batches(c.data.eval_batch_size):
            batch = batch.to(trainer.device)
            parts = trainer.batch_loss(batch)
            weighted = parts.total * (len(batch.energy) / len(train))
            weighted.backward()
            total += weighted.detach().cpu()
        return total

    before = trainer.test_metrics()
    start_errors = val_errors()
    best, best_errors = val_metric(start_errors), start_errors
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    what = "validation force RMSE [meV/Å]" if criterion == "force_rmse" else "validation metric 10·E + F"
    log(f"refine {run_dir}: start, {what} {best:.3f}")
    optimizer = LBFGS([p for p in model.parameters() if p.requires_grad], memory=memory)
    rows, start, bad, best_iteration = [], time.perf_counter(), 0, 0
    best_pairs: dict[str, list[torch.Tensor]] = {"s": [], "y": []}
    for iteration in range(1, iterations + 1):
        info = optimizer.step(closure)
        errors = val_errors()
        metric = val_metric(errors)
        rows.append({
            "iteration": iteration, "loss": info.loss, "grad_norm": info.grad_norm,
            "step_size": info.step_size, "wolfe": info.wolfe, "damped": info.damped,
            "function_evals": info.function_evals, "val_metric": metric,
            "seconds": time.perf_counter() - start,
        })  # fmt: skip
        log(f"  iteration {iteration:>3}: loss {info.loss:.5g}  |g| {info.grad_norm:.3g}  "
            f"step {info.step_size:.3g}  val {metric:.3f}  ({info.function_evals} evaluations)")  # fmt: skip
        if metric < best:
            best, best_iteration, bad, best_errors = metric, iteration, 0, errors
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            history = optimizer.state["lbfgs"]  # the curvature pairs at the kept weights (mlipopt spectrum)
            best_pairs = {"s": [t.clone() for t in history["s"]], "y": [t.clone() for t in history["y"]]}
        else:
            bad += 1
            if bad >= patience:
                log(f"  no improvement for {patience} iterations: stop")
                break
    model.load_state_dict(best_state)
    save_torch(
        {"model": best_state, "iteration": best_iteration, "lbfgs": best_pairs}, run_dir / "refined_model.pt"
    )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    save_text(buffer.getvalue(), run_dir / "refine_metrics.csv")
    summary = {
        "best_iteration": best_iteration,
        "best_val_metric": best,
        "iterations": len(rows),
        "function_evals": rows[-1]["function_evals"] if rows else 0,
        "gradient_evals": rows[-1]["function_evals"] if rows else 0,
        "damped_steps": optimizer.damped_steps,
        "seconds": time.perf_counter() - start,
        "criterion": criterion,
        "energy_shifts": c.model.energy_shifts,
        "val_e_mae_before": start_errors["e_mae"],
        "val_e_mae_after": best_errors["e_mae"],
        "flags": refinement_flags(start_errors["e_mae"], best_errors["e_mae"]),
    }
    for flag in summary["flags"]:
        log(
            f"WARNING: refinement raised the validation energy MAE {start_errors['e_mae']:.3f} -> "
            f"{best_errors['e_mae']:.3f} meV/atom (> {DRIFT_FACTOR:g}×): {VERDICT[flag]}"
        )
    after = trainer.test_metrics(tag="_refined")
    for key in before:  # test_before/test_after, extra_tests_before/..., forgetting_before/...
        summary[f"{key}_before"], summary[f"{key}_after"] = before[key], after[key]
    test_before = before["test"]
    save_json(summary, run_dir / "refine_final.json")
    if summary["test_after"]:
        log(
            "test F MAE {:.2f} -> {:.2f} meV/Å, E MAE {:.3f} -> {:.3f} meV/atom".format(
                test_before["f_mae"] or float("nan"), summary["test_after"]["f_mae"] or float("nan"),
                test_before["e_mae"], summary["test_after"]["e_mae"],
            )
        )  # fmt: skip
    return summary
