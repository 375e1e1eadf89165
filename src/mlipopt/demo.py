"""The placeholder main job: every optimizer trains the same small NequIP model on the same data.

Until the study runner lands this is mlipopt's one-command demonstration: a rattled-ethanol dataset
labelled on the fly by ASE's EMT calculator (ships with ASE, no download, a toy potential — the
physically meaningful xTB dataset comes with the study issue), a ``nequip-tiny`` model, full-batch
energy+force training with AdamW, Muon, SOAP and SOAP-Muon, and a table of the results.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

OPTIMIZERS = ("adamw", "muon", "soap", "soap_muon")
TYPE_NAMES = ["H", "C", "O"]


@dataclass
class DemoResult:
    optimizer: str
    first_loss: float
    final_loss: float
    force_rmse: float  # eV/Å on the training frames after training
    ms_per_step: float


def make_dataset(n_frames: int = 16, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Rattled ethanol frames with EMT energies and forces, as nequip AtomicDataDicts (float64)."""
    import numpy as np
    from ase.build import molecule
    from ase.calculators.emt import EMT
    from nequip.data import from_ase
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform

    rng = np.random.default_rng(seed)
    to_types = ChemicalSpeciesToAtomTypeMapper(model_type_names=TYPE_NAMES)
    neighbours = NeighborListTransform(r_max=4.0)
    frames = []
    for _ in range(n_frames):
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        data = neighbours(to_types(from_ase(atoms)))
        data["total_energy"] = torch.tensor([[energy]], dtype=torch.float64)
        data["forces"] = torch.as_tensor(forces, dtype=torch.float64)
        frames.append({k: (v.double() if torch.is_floating_point(v) else v) for k, v in data.items()})
    return frames


def make_optimizer(name: str, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    from .optim import SOAP, Muon, SOAPMuon
    from .structure import param_groups

    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr)
    groups = param_groups(model, tp_blocks="flatten")
    if name == "muon":
        return Muon(groups, lr=lr)
    if name == "soap":
        return SOAP(groups, lr=lr)
    if name == "soap_muon":
        return SOAPMuon(groups, lr=lr / 10)  # seed 001 table 4: ~10× smaller
    raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")


def run_demo(
    steps: int = 60,
    n_frames: int = 16,
    lr: float = 1e-2,
    optimizers: tuple[str, ...] = OPTIMIZERS,
    progress: Callable[[str], None] = print,
) -> list[DemoResult]:
    """Train the same initial model with each optimizer; returns one result per optimizer."""
    from nequip.data import AtomicDataDict

    from .models import build_model

    frames = make_dataset(n_frames)
    batch = AtomicDataDict.batched_from_list(frames)
    n_atoms = batch["num_atoms"].to(torch.float64)
    e_ref = batch["total_energy"].reshape(-1)
    results = []
    for name in optimizers:
        model = build_model("nequip-tiny", type_names=TYPE_NAMES, model_dtype="float64", seed=0)
        opt = make_optimizer(name, model, lr)

        def loss_fn(model: torch.nn.Module = model) -> tuple[torch.Tensor, torch.Tensor]:
            out = model(dict(batch))
            e_term = ((out["total_energy"].reshape(-1) - e_ref) / n_atoms).square().mean()
            f_err = out["forces"] - batch["forces"]
            return e_term + f_err.square().mean(), f_err

        first = None
        start = time.perf_counter()
        for step in range(steps):
            opt.zero_grad()
            loss, _ = loss_fn()
            loss.backward()
            opt.step()
            first = float(loss) if first is None else first
            if (step + 1) % max(1, steps // 4) == 0:
                progress(f"  {name:<10} step {step + 1:>4}/{steps}  loss {float(loss):.4g}")
        elapsed = time.perf_counter() - start
        final, f_err = loss_fn()
        results.append(
            DemoResult(name, first, float(final), float(f_err.square().mean().sqrt()), 1e3 * elapsed / steps)
        )
    return results


def format_results(results: list[DemoResult]) -> str:
    lines = [
        "| optimizer | first loss | final loss | force RMSE [meV/Å] | ms/step |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.optimizer} | {r.first_loss:.4g} | {r.final_loss:.4g} | {1e3 * r.force_rmse:.1f} | "
            f"{r.ms_per_step:.1f} |"
        )
    return "\n".join(lines)
