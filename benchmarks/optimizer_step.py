"""Optimizer step time and state memory on seed-001-sized NequIP and Allegro models (CPU).

Everything is measured side by side in one run (machines are noisy; compare the ratios):

* torch AdamW (foreach, fused) on all parameters;
* torch.optim.Muon and pytorch-optimizer SOAP given the model's matrix blocks as separate 2-D
  tensors (the same matrix work as mlipopt's matrix group, without the Adam part);
* nequip's MuonWithAuxAdam with MuonParamGroups (all parameters);
* mlipopt Muon, SOAP, SOAP-Muon (ρ=0, ρ=0.5) on all parameters through mlipopt.structure, and
  mlipopt SOAP on the matrix group alone (the like-for-like comparison with pytorch-optimizer);
* optionally (--train-step) a whole training step (forward + force backward + optimizer) on a
  96-atom periodic water frame, each optimizer relative to AdamW.

Usage: python benchmarks/optimizer_step.py [--steps 20] [--train-step] [--models nequip,allegro]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from mlipopt.models import build_model
from mlipopt.optim import SOAP, Muon, SOAPMuon
from mlipopt.structure import param_groups

torch.set_num_threads(2)


def state_bytes(opt: torch.optim.Optimizer) -> int:
    def size(x) -> int:
        if isinstance(x, torch.Tensor):
            return x.numel() * x.element_size()
        if isinstance(x, dict):
            return sum(size(v) for v in x.values())
        if isinstance(x, (list, tuple)):
            return sum(size(v) for v in x)
        return 0

    return sum(size(s) for s in opt.state_dict()["state"].values())


def block_tensors(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The matrix group's blocks as separate 2-D parameters (the same matrix work)."""
    out = []
    for group in param_groups(model):
        if group["role"] != "matrix":
            continue
        for p, blocks in zip(group["params"], group["blocks"]):
            flat = p.detach().reshape(-1)
            for start, stop, shape in blocks:
                out.append(torch.nn.Parameter(flat[start:stop].reshape(shape[0], -1).clone()))
    return out


def time_steps(params: list[torch.Tensor], opt: torch.optim.Optimizer, steps: int) -> float:
    """Mean ms per step over `steps` steps after 3 warm-up steps (includes SOAP's refreshes)."""
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) * 1e-2 for p in params]
    for p, g in zip(params, grads):
        p.grad = g
    for _ in range(3):
        opt.step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.mean(times)


def optimizer_table(model: torch.nn.Module, steps: int) -> list[tuple[str, float, int, str]]:
    from nequip.model import MuonParamGroups
    from nequip.train import MuonWithAuxAdam
    from pytorch_optimizer import SOAP as PytorchOptimizerSOAP

    params = list(model.parameters())
    n_block = sum(p.numel() for p in block_tensors(model))
    cases: list[tuple[str, Callable[[], tuple[list, torch.optim.Optimizer]]]] = [
        ("torch AdamW (foreach)", lambda: (params, torch.optim.AdamW(params, lr=1e-3, foreach=True))),
        ("torch AdamW (fused)", lambda: (params, torch.optim.AdamW(params, lr=1e-3, fused=True))),
        ("torch Muon [blocks only]", lambda: _blocks(model, lambda b: torch.optim.Muon(b, lr=1e-3))),
        (
            "nequip MuonWithAuxAdam",
            lambda: (
                params,
                MuonWithAuxAdam(MuonParamGroups(model, muon={"lr": 1e-3}, adam={"lr": 1e-3})),
            ),
        ),
        (
            "pytorch-optimizer SOAP [blocks only]",
            lambda: _blocks(model, lambda b: PytorchOptimizerSOAP(b, lr=1e-3, weight_decay=0.0)),
        ),
        ("mlipopt SOAP [blocks only]", lambda: _matrix_group(model, lambda g: SOAP(g, lr=1e-3))),
        ("mlipopt Muon", lambda: (params, Muon(param_groups(model), lr=1e-3))),
        ("mlipopt SOAP", lambda: (params, SOAP(param_groups(model), lr=1e-3))),
        ("mlipopt SOAP-Muon rho=0", lambda: (params, SOAPMuon(param_groups(model), lr=1e-3, rho=0.0))),
        ("mlipopt SOAP-Muon rho=0.5", lambda: (params, SOAPMuon(param_groups(model), lr=1e-3, rho=0.5))),
    ]
    rows = []
    for name, make in cases:
        ps, opt = make()
        ms = time_steps(ps, opt, steps)
        rows.append((name, ms, state_bytes(opt), f"{sum(p.numel() for p in ps)}"))
    print(f"  ({n_block} parameters in matrix blocks)")
    return rows


def _blocks(model, factory):
    blocks = block_tensors(model)
    return blocks, factory(blocks)


def _matrix_group(model, factory):
    group = [g for g in param_groups(model) if g["role"] == "matrix"]
    ps = [p for g in group for p in g["params"]]
    return ps, factory(group)


def print_rows(rows, reference: str = "torch AdamW (fused)") -> None:
    ref = dict((r[0], r[1]) for r in rows)[reference]
    print(f"| optimizer | params stepped | ms/step | × {reference} | state MiB |")
    print("|---|---|---|---|---|")
    for name, ms, nbytes, n in rows:
        print(f"| {name} | {n} | {ms:.2f} | {ms / ref:.1f} | {nbytes / 2**20:.2f} |")
    t = dict((r[0], r[1]) for r in rows)
    print()
    ratio = t["nequip MuonWithAuxAdam"] / t["mlipopt Muon"]
    print(f"nequip Muon / mlipopt Muon                     = {ratio:.2f}×")
    print(
        "pytorch-optimizer SOAP / mlipopt SOAP (blocks) = "
        f"{t['pytorch-optimizer SOAP [blocks only]'] / t['mlipopt SOAP [blocks only]']:.2f}×"
    )
    ratio = t["mlipopt SOAP-Muon rho=0"] / t["mlipopt SOAP"]
    print(f"mlipopt SOAP-Muon rho=0 / mlipopt SOAP         = {ratio:.2f}×")


def water_frame(n_side: int = 2):
    """32 H2O (96 atoms) on a cubic lattice at ~1 g/cm³, rattled, as a nequip AtomicDataDict."""
    import numpy as np
    from ase import Atoms
    from ase.build import molecule
    from nequip.data import AtomicDataDict, from_ase
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform

    spacing = 3.1
    atoms = Atoms(cell=[spacing * 3.2] * 3, pbc=True)
    water = molecule("H2O")
    grid = np.array([(i, j, k) for i in range(4) for j in range(4) for k in range(2)]) * [1, 1, 2]
    for shift in grid:
        w = water.copy()
        w.translate(shift * spacing * 0.8 + 0.5)
        atoms += w
    atoms.rattle(0.05, seed=0)
    data = from_ase(atoms)
    data = ChemicalSpeciesToAtomTypeMapper(model_type_names=["H", "O"])(data)
    data = NeighborListTransform(r_max=4.5)(data)
    return AtomicDataDict.with_batch_(data)


def train_step_table(steps: int) -> None:
    model_factory = lambda: build_model("nequip-seed001", type_names=["H", "O"])  # noqa: E731
    data = water_frame()
    print(f"\nWhole training step on a {int(data['pos'].shape[0])}-atom water frame (nequip-seed001):")
    cases = {
        "torch AdamW (fused)": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True),
        "mlipopt Muon": lambda m: Muon(param_groups(m), lr=1e-3),
        "mlipopt SOAP": lambda m: SOAP(param_groups(m), lr=1e-3),
        "mlipopt SOAP-Muon rho=0": lambda m: SOAPMuon(param_groups(m), lr=1e-3, rho=0.0),
        "mlipopt SOAP-Muon rho=0.5": lambda m: SOAPMuon(param_groups(m), lr=1e-3, rho=0.5),
    }
    results = {}
    for name, make in cases.items():
        model = model_factory()
        opt = make(model)
        times = []
        for i in range(steps + 2):
            t0 = time.perf_counter()
            opt.zero_grad()
            out = model(dict(data))
            loss = out["total_energy"].square().sum() + out["forces"].square().mean()
            loss.backward()
            opt.step()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        results[name] = statistics.median(times)
    ref = results["torch AdamW (fused)"]
    print("| optimizer | s/step | × AdamW |")
    print("|---|---|---|")
    for name, s in results.items():
        print(f"| {name} | {s:.3f} | {s / ref:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--models", default="nequip,allegro")
    parser.add_argument("--train-step", action="store_true")
    parser.add_argument("--train-steps", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for family in args.models.split(","):
        model = build_model(f"{family}-seed001", type_names=["H", "O"])
        n = sum(p.numel() for p in model.parameters())
        print(f"\n{family}-seed001: {n} parameters")
        print_rows(optimizer_table(model, args.steps))
    if args.train_step:
        train_step_table(args.train_steps)


if __name__ == "__main__":
    main()
