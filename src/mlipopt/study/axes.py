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

from ..elsewhere import call_elsewhere
from ..fidelity.architecture import equivariance_of_run
from .db import ResultsDB
from .spec import CellKey, ModelAxisEntry, StudySpec

SEPARATOR = "__"
CHECKS = "mlipopt.fidelity.architecture:equivariance_of_run"


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
                cell=CellKey(spec.name, label, size),
            )
            out.append(Cell(label, size, sub))
    return out


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
            job = {"run_dir": run.run_dir, "settings": dataclasses.asdict(settings), "label": label}
            if python:  # the model's own environment
                measured = call_elsewhere(CHECKS, job, python, what=f"the checks of {label}")
            else:
                measured = equivariance_of_run(**job)
            db.record_check(spec.name, "equivariance", run.id, measured)
