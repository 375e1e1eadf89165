"""Inference cost of a model, measured the same way for every family (issue 14; Leimeroth, Rohrer et al.).

µs per atom per step of energy + forces on three fixed structures:
- a 3BPA molecule (27 atoms);
- a 96-atom water box (32 molecules, 1 g/cm³, periodic);
- a 256-atom diamond crystal.

Each is timed at batch 1 and batched (several copies in one call). Warm-up calls are discarded. Models are
timed interleaved, in independent blocks, each in a fresh process. The median is reported with three
spreads: the 5th–95th percentiles of all timed samples (the one to quote, see :func:`inference_costs`),
their interquartile range, and the range of the medians of the blocks. The weights do not matter, only
the architecture: the model is built by its family for H, C, N, O, the elements of the three structures.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk, molecule

from ..machine import cpu_model
from .family import build_model, family, model_namespace

ELEMENTS = ["H", "C", "N", "O"]


def water_box(molecules: int = 32, seed: int = 0) -> Atoms:
    """``molecules`` randomly oriented waters on a grid in a periodic cube of density 1 g/cm³."""
    rng = np.random.default_rng(seed)
    side = (molecules * 18.015 / 0.6022) ** (1 / 3)  # Å: 1 g/cm³
    per_edge = int(np.ceil(molecules ** (1 / 3)))
    box = Atoms(cell=[side] * 3, pbc=True)
    sites = [(i, j, k) for i in range(per_edge) for j in range(per_edge) for k in range(per_edge)][:molecules]
    for site in sites:
        water = molecule("H2O")
        water.rotate(rng.uniform(0, 360), rng.normal(size=3))
        water.translate(side / per_edge * (np.array(site) + 0.5) - water.get_center_of_mass())
        box += water
    return box


def structures() -> dict[str, Atoms]:
    """The fixed structures every model is timed on."""
    from ..data.xtb import initial_structure

    return {
        "3bpa": initial_structure("3bpa"),
        "water-96": water_box(32),
        "diamond-256": bulk("C", "diamond", a=3.567, cubic=True).repeat((4, 4, 2)),
    }


def machine() -> str:
    """What the numbers were measured on."""
    return (
        f"{cpu_model()}, {torch.get_num_threads()} torch thread(s), "
        f"torch {torch.__version__}, {platform.system()}"
    )


#: Warm-up calls at least: TorchScript's profiling executor (e3nn 0.4.4's code-generated tensor products in
#: MACE) specializes a graph over its first calls and optimizes it after them. With one warm-up call, the
#: first samples of mace-small on 3BPA took 9089 and 1465 µs/atom/step, the settled ones 550–660; with
#: three, 446–539.
MIN_WARMUP = 3


def timed_samples(call: Any, warmup: int, repeats: int, min_sample_s: float) -> list[float]:
    """Seconds per call in ``repeats`` samples, each averaging enough calls to last ``min_sample_s``
    (as :mod:`timeit`'s autorange does), so a 1 ms call is not timed at the timer's and scheduler's grain;
    after at least :data:`MIN_WARMUP` untimed calls."""
    for _ in range(max(warmup, MIN_WARMUP)):
        start = time.perf_counter()
        call()
        per_call = time.perf_counter() - start  # the last warm-up call: compilation is behind it
    number = max(1, int(np.ceil(min_sample_s / max(per_call, 1e-9))))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            call()
        times.append((time.perf_counter() - start) / number)
    return times


def inference_costs(
    model_sections: dict[str, dict[str, Any]],
    batch_sizes: tuple[int, ...] = (1, 8),
    warmup: int = 2,
    repeats: int = 5,
    device: str = "cpu",
    blocks: int = 6,
    min_sample_s: float = 0.01,
    isolate: bool = True,
    progress: Callable[[str], None] | None = None,
    pythons: dict[str, str | None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """µs/atom/step of every model in ``model_sections`` (label → a run's ``model`` config section), per
    structure and batch size, measured interleaved in independent blocks.

    Each block builds every model afresh and times it on every structure, the models' order rotating
    from block to block. With ``isolate`` (default) each block runs in a fresh Python process with the
    caller's torch thread count. Why: in one long-lived process the same call grows slower as models are
    built and freed (2–3 % over 30 s; two 3-minute measurements up to 14.5 % apart), so the blocks of one
    measurement do not represent the next: a second measurement fell outside the first's spread in 6 of
    18 cases, against 2 of 18 with fresh processes (benchmarks/README.md). A model with an interpreter in
    ``pythons`` (label → another environment's Python, where its family is installed) is timed in a
    process of that Python.

    Returned per label, per structure and batch:
    - ``median_us``, the median of all samples, with ``q25_us``–``q75_us``, their interquartile range;
    - ``p05_us``–``p95_us``, the 5th–95th percentiles of all samples: the spread to quote, the one a
      second measurement is compared with (benchmarks/inference_cost.py). Why not the range of the block
      medians (``low_us``–``high_us``, kept): a large batched call can run at one of two speeds for a whole
      block (cartesian-small on the crystal, batch 8: block medians 222–337 µs), so a handful of blocks
      need not show both, while the pooled percentiles of all samples do.
    """
    labels = list(model_sections)
    samples: dict[str, dict[tuple[str, int], list[list[float]]]] = {label: {} for label in labels}
    for block in range(blocks):
        order = labels[block % len(labels) :] + labels[: block % len(labels)]
        if progress is not None:
            progress(f"inference cost: block {block + 1}/{blocks} ({', '.join(order)})")
        groups: dict[str | None, list[str]] = {}  # by interpreter, in the block's order
        for label in order:
            groups.setdefault((pythons or {}).get(label), []).append(label)
        for python, members in groups.items():
            job = {
                "sections": {label: model_sections[label] for label in members},
                "batch_sizes": list(batch_sizes), "warmup": warmup, "repeats": repeats, "device": device,
                "min_sample_s": min_sample_s, "seed": block, "threads": torch.get_num_threads(),
            }  # fmt: skip
            rows = _block_in_process(job, python) if isolate or python else time_block(**job)
            for label, name, batch, times in rows:
                samples[label].setdefault((name, int(batch)), []).append(times)
    sizes = {name: len(atoms) for name, atoms in structures().items()}
    return {label: _summary(samples[label], sizes, repeats, blocks) for label in labels}


def time_block(
    sections: dict[str, dict[str, Any]], batch_sizes: list[int], warmup: int, repeats: int, device: str,
    min_sample_s: float, seed: int, threads: int,
) -> list[tuple[str, str, int, list[float]]]:  # fmt: skip
    """One block: each model of ``sections``, in their order, built afresh (weights from ``seed``) and
    timed on every structure and batch size. Rows (label, structure, batch, µs/atom/step per sample)."""
    torch.set_num_threads(threads)
    fixed = structures()
    rows = []
    for label, section in sections.items():
        preset = section.get("preset", "nequip-small")
        dtype = section.get("dtype", "float32")
        options = dict(section.get("options", {}))
        config = model_namespace(preset, ELEMENTS, dtype, **options)
        backend = family(preset).backend(config, config.type_names, config.r_max)
        torch.manual_seed(seed)
        model = build_model(preset, ELEMENTS, dtype, **options).to(device).eval()
        for name, atoms in fixed.items():
            graph = backend.graph(atoms)
            for batch in batch_sizes:
                data = backend.to(backend.collate([graph] * batch), torch.device(device))

                def call(data: Any = data, model: torch.nn.Module = model, backend: Any = backend) -> None:
                    energy, forces = backend.predict(model, data, True)
                    (forces if forces is not None else energy).sum().item()  # wait for the device

                times = timed_samples(call, warmup, repeats, min_sample_s)
                rows.append((label, name, batch, [1e6 * t / (batch * len(atoms)) for t in times]))
        del model
    return rows


def _block_in_process(
    job: dict[str, Any], python: str | None = None
) -> list[tuple[str, str, int, list[float]]]:
    """:func:`time_block` in a fresh process of ``python`` (default: this one's interpreter)."""
    from ..elsewhere import call_elsewhere

    rows = call_elsewhere(
        "mlipopt.models.cost:time_block", job, python, what="an inference-cost block in its own process"
    )
    return [tuple(row) for row in rows]


def _summary(
    samples: dict[tuple[str, int], list[list[float]]], sizes: dict[str, int], repeats: int, blocks: int
) -> list[dict[str, Any]]:
    rows = []
    for (name, batch), per_block in samples.items():
        every = [t for block in per_block for t in block]
        q = statistics.quantiles(every, n=4) if len(every) > 1 else [every[0]] * 3
        tails = np.percentile(every, [5, 95])
        medians = [statistics.median(block) for block in per_block]
        rows.append({
            "structure": name, "n_atoms": sizes[name], "batch": batch,
            "median_us": statistics.median(every), "q25_us": q[0], "q75_us": q[2],
            "p05_us": float(tails[0]), "p95_us": float(tails[1]),
            "low_us": min(medians), "high_us": max(medians), "repeats": repeats, "blocks": blocks,
        })  # fmt: skip
    return rows
