"""The cost of a training step, measured rather than inferred from the runs' wall-clock.

A run's wall-clock includes whatever else the machine was doing: on a shared machine the order in which
runs happened to execute can decide a "step cost" ratio (issue 11 saw SOAP-Muon at 0.58× AdamW from
study wall-clock, 0.72× in a quiet rerun). Here every optimizer trains its own copy of the same model on
the same batch, the optimizers take turns step by step (the order alternating between repeats), warm-up
steps are discarded, and slow phases of the machine then hit every optimizer alike.

The cost of a step is the **mean over whole refresh periods**: SOAP refreshes its eigenbases once every
``precondition_frequency`` steps, and that step can cost ten ordinary ones, so a median (or any window
that is not a whole number of periods) would leave out the price a run actually pays. The timed steps
are rounded up to whole periods of the slowest-refreshing optimizer, and the spread of the per-period
means, the median step and the slowest step (a refresh) are kept beside the mean.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..machine import cpu_model
from ..optim import BASELINE, build_optimizer, has_train_eval_modes
from ..train import Trainer, load_config
from ..train.loss import eq11_loss
from .spec import RunSpec, StudySpec


def measure_step_costs(
    configs: dict[str, dict[str, Any]],
    repeats: int = 30,
    warmup: int = 3,
    threads: int | None = None,
    baseline: str = BASELINE,
) -> tuple[dict[str, list[float]], dict[str, float | None], str, int]:
    """Seconds per training step (forward, loss, backward, optimizer step) for each optimizer config.

    ``configs`` maps a label to a ``mlipopt train`` config (dict); all must share data and model. The
    first config builds the data and the model once; each optimizer gets a copy of the same initial
    model. ``repeats`` is rounded up to a whole number of refresh periods. Returns (step times per
    label, median paired ratio to ``baseline`` per label, description, period in steps).
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
        period = max(refresh_period(optimizer) for _, optimizer, _ in contestants.values())
        repeats = period * max(1, math.ceil(repeats / period))
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
            f"{torch.get_num_threads()} thread(s), {warmup} warm-up + {repeats} interleaved steps each "
            f"({repeats // period} period(s) of {period}), {cpu_model()}"
        )
        return times, ratios, description, period
    finally:
        torch.set_num_threads(before)


def refresh_period(optimizer: torch.optim.Optimizer) -> int:
    """Steps between the expensive steps of ``optimizer`` (SOAP's ``precondition_frequency``; 1 when
    every step costs the same)."""
    return max(int(g.get("precondition_frequency", 1)) for g in optimizer.param_groups)


def period_means(values: list[float], period: int) -> list[float]:
    """Mean step time of each whole period of ``period`` consecutive steps."""
    return [statistics.mean(values[i : i + period]) for i in range(0, len(values) - period + 1, period)]


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
        times, ratios, description, period = measure_step_costs(
            configs, settings.repeats, settings.warmup, spec.executor.threads_per_run
        )
        base_mean = statistics.mean(times[BASELINE]) if BASELINE in times else None
        for label, values in times.items():
            q25, q75 = np.percentile(values, [25, 75])
            means = period_means(values, period)
            mean = statistics.mean(values)
            rows.append(
                dict(
                    optimizer=label,
                    with_forces=int(with_forces),
                    median_s=float(statistics.median(values)),
                    q25_s=float(q25),
                    q75_s=float(q75),
                    ratio_median=ratios[label],
                    repeats=len(values),
                    mean_s=float(mean),
                    period_min_s=float(min(means)),
                    period_max_s=float(max(means)),
                    slowest_s=float(max(values)),
                    ratio_mean=None if base_mean is None else float(mean / base_mean),
                    period=period,
                    description=description,
                )
            )
            ratio = f" ({mean / base_mean:.2f}× {BASELINE})" if base_mean else ""
            progress(
                f"  {label:>20}: {1e3 * mean:.1f} ms/step over whole periods{ratio}, "
                f"slowest {1e3 * max(values):.0f} ms; {description}"
            )
    return rows
