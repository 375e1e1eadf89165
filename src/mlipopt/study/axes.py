"""Architectures and training-set sizes as study axes (issue 14).

A study with ``models`` and/or ``train_sizes`` runs one ordinary sub-study per cell (model, N), in one
results database. Each sub-study has the usual stages: sweep, seeds, selection and checks. A sub-study
is named ``<study>__<model>__N<N>``, writes to ``<study folder>/<model>/N<N>``, and trains on the first N
frames of the training split (``data.train_subset``), so that:
- the training sets of a learning curve are nested;
- validation and test stay the same for every N.

After the cells, the study measures what a comparison of architectures needs besides errors:
- each model's inference cost (:mod:`mlipopt.models.cost`);
- for the final runs at the largest N (first seed): the equivariance errors, raw and, for models without
  built-in symmetry, symmetrized;
- the loop work of the forces and the energy drift of a short NVE run (:mod:`mlipopt.fidelity.symmetry`).

These are stored under the parent study's name. :mod:`mlipopt.report.architectures` draws the learning
curves, the accuracy-against-cost plot with its Pareto front, and the equivariance table.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

from ..models import family
from .db import ResultsDB
from .spec import ModelAxisEntry, StudySpec

SEPARATOR = "__"


@dataclasses.dataclass
class Cell:
    model: str  # label of the models axis ("base" without one)
    size: int | None  # training frames (None: the base split)
    spec: StudySpec


def has_axes(spec: StudySpec) -> bool:
    return bool(spec.models or spec.train_sizes)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def cells(spec: StudySpec) -> list[Cell]:
    """The sub-studies of ``spec``, in order: model by model, N ascending."""
    models = spec.models or {"base": ModelAxisEntry(model=dict(spec.base.get("model", {})))}
    out = []
    for label, entry in models.items():
        sizes = sorted(entry.train_sizes or spec.train_sizes) or [None]
        for size in sizes:
            base = _merge(spec.base, entry.base)
            base["model"] = _merge({"dtype": spec.base.get("model", {}).get("dtype", "float32")}, entry.model)
            if size is not None:
                base.setdefault("data", {})["train_subset"] = size
            name = SEPARATOR.join([spec.name, label] + ([f"N{size}"] if size is not None else []))
            sub = dataclasses.replace(
                spec,
                name=name,
                base=base,
                optimizers=copy.deepcopy(entry.optimizers or spec.optimizers),
                executor=dataclasses.replace(spec.executor, python=entry.python or spec.executor.python),
                study_dir=str(spec.folder / label / (f"N{size}" if size is not None else "all")),
                database=spec.database_url,
                models={},
                train_sizes=[],
            )
            out.append(Cell(label, size, sub))
    return out


def parent_of(study: str) -> str:
    return study.split(SEPARATOR)[0]


def run_cells(
    spec: StudySpec, progress: Callable[[str], None], run_one: Callable[[StudySpec], Any]
) -> tuple[list[str], list[str]]:
    """Run every cell's sub-study (``run_one`` returns its outcome), then the architecture checks;
    returns the failed and the diverged run ids of all cells."""
    failed: list[str] = []
    diverged: list[str] = []
    todo = cells(spec)
    for k, cell in enumerate(todo, 1):
        size = f", N = {cell.size}" if cell.size is not None else ""
        progress(f"=== cell {k}/{len(todo)}: model {cell.model}{size} ===")
        result = run_one(cell.spec)
        failed += result.failed
        diverged += result.diverged
    measure_checks(spec, todo, progress)
    return failed, diverged


def measure_checks(spec: StudySpec, todo: list[Cell], progress: Callable[[str], None]) -> None:
    """Inference cost per model and equivariance per final run (largest N, first seed); skipped when
    already in the database, so a resumed study measures only what is missing. The study's published
    figures are written beside them, for the report."""
    from ..models.cost import inference_costs, machine

    db, settings = ResultsDB(spec.database_url), spec.architecture_checks
    if spec.published is not None:  # the report is written from the database alone
        db.record_check(spec.name, "published", "figures", dataclasses.asdict(spec.published))
    costs = db.checks(spec.name, "inference_cost")
    sections, pythons = {}, {}
    for label in dict.fromkeys(c.model for c in todo):
        cell = next(c for c in todo if c.model == label)
        section = cell.spec.base["model"]
        if label not in costs and not section.get("file"):  # a model file is not a preset to rebuild
            sections[label] = section
            pythons[label] = cell.spec.executor.python
    if sections:
        progress(f"inference cost: {', '.join(sections)} (interleaved, {settings.cost_blocks} blocks)")
        measured = inference_costs(
            sections,
            tuple(settings.cost_batch_sizes),
            settings.cost_warmup,
            settings.cost_repeats,
            blocks=settings.cost_blocks,
            min_sample_s=settings.cost_min_sample_s,
            progress=progress,
            pythons=pythons,
        )
        for label, rows in measured.items():
            db.record_check(spec.name, "inference_cost", label, rows, machine())
    done = db.checks(spec.name, "equivariance")
    for label in dict.fromkeys(c.model for c in todo):
        largest = [c for c in todo if c.model == label][-1]
        python = largest.spec.executor.python  # the model's own environment, if it has one
        runs = [r for r in db.runs(largest.spec.name, stage="final", status="done")]
        first_seed = min((r.seed for r in runs), default=None)
        for run in [r for r in runs if r.seed == first_seed]:
            if run.id in done:
                continue
            progress(f"equivariance: {label} {run.optimizer} s = {run.force_fraction:g}")
            measured = (
                _equivariance_in_process(python, run.run_dir, settings, label)
                if python
                else equivariance_of_run(run.run_dir, settings, label)
            )
            db.record_check(spec.name, "equivariance", run.id, measured)


def _equivariance_in_process(python: str, run_dir: str, settings: Any, label: str) -> dict[str, Any]:
    """:func:`equivariance_of_run` in another environment's Python (a model family installed there):
    ``python -m mlipopt.study.axes`` reads the job as JSON on stdin and writes the result on stdout."""
    import json
    import subprocess

    job = {"run_dir": run_dir, "settings": dataclasses.asdict(settings), "label": label}
    done = subprocess.run([python, "-m", "mlipopt.study.axes"], input=json.dumps(job), capture_output=True,
                          text=True)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the checks of {label} failed in {python}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def equivariance_of_run(run_dir: str, settings: Any, label: str) -> dict[str, Any]:
    """Equivariance errors of a trained run on its first test frames, raw and (for models without built-in
    symmetry) symmetrized, and the loop work of its forces. A model without built-in symmetry also gets
    its test errors raw and symmetrized on the first ``symmetrized_test_frames`` test frames: whether the
    inference-time fix costs or gains accuracy. For a molecule (``geometry``), the first test frame is
    relaxed turned two ways and vibrated (:func:`orientation_dependence`), raw and symmetrized. NVE MD
    from the first test frame (300 K) gives the drift of the total energy: a stability check that an
    error table cannot give (a direct force head, or a model that lets atoms collapse, drifts)."""
    import numpy as np

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


if __name__ == "__main__":  # the checks of one run in this environment: see _equivariance_in_process
    import json
    import sys

    from .spec import ArchitectureChecksSpec

    job = json.loads(sys.stdin.read())
    result = equivariance_of_run(job["run_dir"], ArchitectureChecksSpec(**job["settings"]), job["label"])
    print(json.dumps(result))
