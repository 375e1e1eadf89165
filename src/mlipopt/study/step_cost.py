"""The cost of a training step, measured rather than inferred from the runs' wall-clock.

A run's wall-clock includes whatever else the machine was doing: on a shared machine the order in which
runs happened to execute can decide a "step cost" ratio (issue 11 saw SOAP-Muon at 0.58× AdamW from
study wall-clock, 0.72× in a quiet rerun). Here every optimizer trains its own copy of the same model on
the same batch, the optimizers take turns step by step (the order alternating between repeats), warm-up
steps are discarded, and the median, the interquartile range and the median of the per-repeat ratios to
the baseline are kept. Slow phases of the machine then hit every optimizer alike.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..machine import cpu_model
from ..optim import build_optimizer, has_train_eval_modes
from ..train import Trainer, load_config
from ..train.loss import eq11_loss
from .spec import RunSpec, StudySpec

BASELINE = "adamw"


def measure_step_costs(
    configs: dict[str, dict[str, Any]],
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    baseline: str = BASELINE,
) -> tuple[dict[str, list[float]], dict[str, float | None], str]:
    """Seconds per training step (forward, loss, backward, optimizer step) for each optimizer config.

    ``configs`` maps a label to a ``mlipopt train`` config (dict); all must share data and model. The
    first config builds the data and the model once; each optimizer gets a copy of the same initial
    model. Returns (step times per label, median paired ratio to ``baseline`` per label, description).
    """
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        labels = list(configs)
        trainer = Trainer(load_config(configs[labels[0]]), log=lambda _: None)
        train = trainer.sets["train"]
        batch = train.batch(list(range(min(trainer.config.data.batch_size, len(train))))).to(trainer.device)
        use_forces = (
            trainer.config.loss.force_weight > 0 and trainer.force_normaliser > 0 and batch.has_forces
        )
        initial = copy.deepcopy(trainer.model)
        contestants = {}
        for label in labels:
            o = load_config(configs[label]).optimizer
            model = copy.deepcopy(initial)
            optimizer = build_optimizer(
                o.name,
                model,
                lr=o.lr,
                weight_decay=o.weight_decay,
                structure=o.structure or None,
                **o.options,
            )
            if has_train_eval_modes(optimizer):
                optimizer.train()
            contestants[label] = (model, optimizer, load_config(configs[label]).loss)
        times: dict[str, list[float]] = {label: [] for label in labels}
        for rep in range(warmup + repeats):
            for label in labels if rep % 2 == 0 else labels[::-1]:
                model, optimizer, loss = contestants[label]
                model.train()
                start = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                energy, forces = trainer.backend.predict(model, batch.data, use_forces)
                parts = eq11_loss(
                    energy, forces, batch, loss.energy_weight, loss.force_weight, trainer.force_normaliser
                )
                parts.total.backward()
                optimizer.step()
                if trainer.device.type == "cuda":
                    torch.cuda.synchronize(trainer.device)
                if rep >= warmup:
                    times[label].append(time.perf_counter() - start)
        ratios: dict[str, float | None] = {}
        for label in labels:
            if baseline in times:
                ratios[label] = float(np.median(np.array(times[label]) / np.array(times[baseline])))
            else:
                ratios[label] = None
        n_atoms = int(batch.n_atoms.sum())
        description = (
            f"{len(batch.energy)} frames ({n_atoms} atoms) {'with' if use_forces else 'without'} forces, "
            f"{torch.get_num_threads()} thread(s), {warmup} warm-up + {repeats} interleaved steps each, "
            f"{cpu_model()}"
        )
        return times, ratios, description
    finally:
        torch.set_num_threads(before)


def measure_study_step_costs(
    spec: StudySpec, finals: list[RunSpec], progress: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Step costs of a study's optimizers with their selected hyperparameters: with forces (the highest
    force fraction) and, when the study trains at s = 0, energy-only. Rows for the ``step_costs`` table."""
    settings = spec.step_cost
    rows = []
    fractions = sorted({r.force_fraction for r in finals}, reverse=True)
    cases = [(fractions[0], fractions[0] > 0)] + (
        [(0.0, False)] if fractions[0] > 0 and 0.0 in fractions else []
    )
    for fraction, with_forces in cases:
        configs: dict[str, dict[str, Any]] = {}
        for run in finals:
            if run.force_fraction == fraction and run.optimizer not in configs:
                config = copy.deepcopy(run.config)
                config["run_dir"] = None
                configs[run.optimizer] = config
        if BASELINE in configs:  # the baseline first: it builds the data and the model
            configs = {BASELINE: configs.pop(BASELINE), **configs}
        times, ratios, description = measure_step_costs(
            configs, settings.repeats, settings.warmup, spec.executor.threads_per_run
        )
        for label, values in times.items():
            q25, q75 = np.percentile(values, [25, 75])
            rows.append(
                dict(
                    optimizer=label,
                    with_forces=int(with_forces),
                    median_s=float(statistics.median(values)),
                    q25_s=float(q25),
                    q75_s=float(q75),
                    ratio_median=ratios[label],
                    repeats=len(values),
                    description=description,
                )
            )
            ratio = f" ({ratios[label]:.2f}× {BASELINE})" if ratios[label] is not None else ""
            progress(f"  {label:>20}: {1e3 * statistics.median(values):.1f} ms/step{ratio}; {description}")
    return rows
