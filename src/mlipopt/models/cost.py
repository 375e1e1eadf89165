"""Inference cost of a model, measured the same way for every family (issue 14; Leimeroth, Rohrer et al.).

µs per atom per step of energy + forces on three fixed structures:
- a 3BPA molecule (27 atoms);
- a 96-atom water box (32 molecules, 1 g/cm³, periodic);
- a 256-atom diamond crystal.

Each is timed at batch 1 and batched (several copies in one call). Warm-up calls are discarded. The
median is reported with two spreads: the interquartile range of the timed calls, and the range of the
medians of independent blocks (the one to quote, see :func:`inference_cost`). The weights do not
matter, only the architecture: the model is built by its family for H, C, N, O, the elements of the three
structures.
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk, molecule

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
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
        f"torch {torch.__version__}, {platform.system()}"
    )


def timed_calls(call: Any, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def inference_cost(
    model_section: dict[str, Any],
    batch_sizes: tuple[int, ...] = (1, 8),
    warmup: int = 3,
    repeats: int = 10,
    device: str = "cpu",
    blocks: int = 3,
) -> list[dict[str, Any]]:
    """µs/atom/step of the model a run's ``model`` config section describes, per structure and batch size.

    The measurement is made in ``blocks`` independent blocks, each with a freshly built model and batch,
    so the blocks are spread over time. Returned per structure and batch:
    - the median and interquartile range of all timed calls;
    - the range of the block medians (``low_us``–``high_us``), the spread to quote. Calls within one
      block agree to a few percent; separate measurements differ more (up to 18 % in
      benchmarks/inference_cost.py).
    """
    preset = model_section.get("preset", "nequip-small")
    dtype = model_section.get("dtype", "float32")
    options = dict(model_section.get("options", {}))
    config = model_namespace(preset, ELEMENTS, dtype, **options)
    backend = family(preset).backend(config, config.type_names, config.r_max)
    graphs = {name: (atoms, backend.graph(atoms)) for name, atoms in structures().items()}
    samples: dict[tuple[str, int], list[list[float]]] = {}
    for _ in range(blocks):
        torch.manual_seed(0)
        model = build_model(preset, ELEMENTS, dtype, **options).to(device).eval()
        for name, (atoms, graph) in graphs.items():
            for batch in batch_sizes:
                data = backend.to(backend.collate([graph] * batch), torch.device(device))

                def call(data: Any = data, model: torch.nn.Module = model) -> None:
                    energy, forces = backend.predict(model, data, True)
                    (forces if forces is not None else energy).sum().item()  # wait for the device

                times = timed_calls(call, warmup, repeats)
                samples.setdefault((name, batch), []).append([1e6 * t / (batch * len(atoms)) for t in times])
    rows = []
    for (name, batch), per_block in samples.items():
        every = [t for block in per_block for t in block]
        q = statistics.quantiles(every, n=4) if len(every) > 1 else [every[0]] * 3
        medians = [statistics.median(block) for block in per_block]
        rows.append({
            "structure": name, "n_atoms": len(graphs[name][0]), "batch": batch,
            "median_us": statistics.median(every), "q25_us": q[0], "q75_us": q[2],
            "low_us": min(medians), "high_us": max(medians), "repeats": repeats, "blocks": blocks,
        })  # fmt: skip
    return rows
