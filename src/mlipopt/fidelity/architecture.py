"""The checks an architectures study makes of each trained model beside its errors: equivariance,
loop work of the forces, orientation dependence of a relaxed molecule, NVE energy drift
(:mod:`mlipopt.fidelity.symmetry`); run by :mod:`mlipopt.study.axes`, in the model's own environment
when it has one (:func:`mlipopt.elsewhere.call_elsewhere`)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ..models import family


def equivariance_of_run(run_dir: str, settings: dict[str, Any], label: str) -> dict[str, Any]:
    """Equivariance errors of a trained run on its first test frames, raw and (for models without built-in
    symmetry) symmetrized, and the loop work of its forces. A model without built-in symmetry also gets
    its test errors raw and symmetrized on the first ``symmetrized_test_frames`` test frames: whether the
    inference-time fix costs or gains accuracy. For a molecule (``geometry``), the first test frame is
    relaxed turned two ways and vibrated (:func:`orientation_dependence`), raw and symmetrized. NVE MD
    from the first test frame (300 K) gives the drift of the total energy: a stability check that an
    error table cannot give (a direct force head, or a model that lets atoms collapse, drifts)."""
    import numpy as np

    settings = SimpleNamespace(**settings)  # mlipopt.study.spec.ArchitectureChecksSpec's fields

    from ..calculator import load_model
    from ..fidelity.symmetry import (
        SymmetrizedCalculator,
        calculator_errors,
        equivariance_errors,
        loop_work,
        nve_energy_drift,
        orientation_dependence,
    )
    from ..train.data import split_frames

    model, config = load_model(run_dir)  # once: its family makes the calculator
    calc = family(config.model).calculator(model, config.model.type_names, config.model.r_max, "cpu")
    _, splits = split_frames(config)  # the run's own test split, read or generated as in training
    frames = [a.copy() for a in splits["test"].atoms[: settings.equivariance_frames]]
    unconstrained = family(config.model).name == "cartesian"
    out: dict[str, Any] = {"model": label, "unconstrained": unconstrained, "frames": len(frames)}

    def mean_errors(calculator: Any) -> dict[str, float]:
        rows = [
            equivariance_errors(calculator, a, settings.equivariance_rotations, seed=k)
            for k, a in enumerate(frames)
        ]
        return {key: float(np.mean([r[key] for r in rows])) for key in ("energy_std", "force_error")}

    out["raw"] = mean_errors(calc)
    if unconstrained:
        symmetrized = SymmetrizedCalculator(calc, settings.symmetrize_order)
        out["symmetrized"] = mean_errors(symmetrized)
        out["symmetrize_order"] = settings.symmetrize_order
        scored = splits["test"].subset(range(min(settings.symmetrized_test_frames, len(splits["test"]))))
        out["test_raw"] = calculator_errors(calc, scored)  # the same frames, so the two compare directly
        out["test_symmetrized"] = calculator_errors(symmetrized, scored)
    if settings.geometry and not frames[0].pbc.any():  # a molecule: relax it turned two ways, vibrate
        steps = settings.geometry_steps
        out["geometry_raw"] = orientation_dependence(calc, frames[0], steps=steps)
        if unconstrained:
            out["geometry_symmetrized"] = orientation_dependence(symmetrized, frames[0], steps=steps)
    out["loop_work_eV"] = float(loop_work(calc, frames[0], index=0))
    if settings.nve_steps > 0:
        out["nve"] = nve_energy_drift(
            calc, frames[0], timestep_fs=settings.nve_timestep_fs, steps=settings.nve_steps
        ) | {"steps": settings.nve_steps, "timestep_fs": settings.nve_timestep_fs}
    return out
