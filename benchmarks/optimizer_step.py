"""Optimizer step cost and state memory on the seed-001-sized NequIP and Allegro models (CPU), and the
whole training step on a 96-atom periodic water frame.

Every cost is a **mean over whole refresh periods** (SOAP refreshes its eigenbases once every
``precondition_frequency`` = 10 steps; that step is part of what a run pays), with the range of the
per-period means, the median step (which skips the refresh: for comparison only) and the slowest step.
All contestants run in one process, interleaved period by period (the order alternating), after a
warm-up of one period plus the first step (SOAP's first step only builds its bases). Gradients are the
model's own, from a pool of rattled water frames cycled step by step, so the Gram matrices build rank
as in training.

Step alone, on the same matrix blocks (55 on nequip-seed001): torch.optim.Muon, heavyball 3.x Muon and
SOAP (eager; ``torch.compile`` is left out: minutes of compilation per shape on CPU), pytorch-optimizer
SOAP and mlipopt's SOAP (isotropic and official null space) and Muon on the matrix group; nequip's
MuonWithAuxAdam and mlipopt's optimizers on all parameters; torch AdamW (fused) as the reference.

Usage: python benchmarks/optimizer_step.py [--periods 3] [--models nequip,allegro] [--train-step]
           [--threads 2] [--skip-step] [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mlipopt.machine import cpu_model
from mlipopt.models import build_model
from mlipopt.optim import SOAP, Muon, SOAPMuon
from mlipopt.structure import param_groups

PERIOD = 10  # precondition_frequency of every SOAP here (official SOAP's and mlipopt's default)


@dataclass
class Contestant:
    """One optimizer with its own parameters and the gradients it is fed (one list per pool entry)."""

    name: str
    params: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    grads: list[list[torch.Tensor]] = field(default_factory=list)
    step: Callable[[], None] | None = None  # a whole training step instead of fixed gradients
    times: list[float] = field(default_factory=list)
    calls: int = 0

    def run(self, n: int, timed: bool) -> None:
        for _ in range(n):
            if self.step is None:
                for p, g in zip(self.params, self.grads[self.calls % len(self.grads)]):
                    p.grad = g.clone()
                synchronize()
                start = time.perf_counter()
                self.optimizer.step()
            else:
                synchronize()
                start = time.perf_counter()
                self.step()
            synchronize()  # on CUDA the step's kernels are timed, not their launch
            if timed:
                self.times.append(time.perf_counter() - start)
            self.calls += 1


DEVICE = torch.device("cpu")


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def interleaved_periods(contestants: list[Contestant], periods: int) -> None:
    """Warm up (first step + one period), then time ``periods`` whole periods each, period by period."""
    for c in contestants:
        c.run(PERIOD + 1, timed=False)
    for r in range(periods):
        for c in contestants if r % 2 == 0 else contestants[::-1]:
            c.run(PERIOD, timed=True)


def summary(times: list[float]) -> dict[str, float]:
    means = [statistics.mean(times[i : i + PERIOD]) for i in range(0, len(times), PERIOD)]
    return dict(
        mean=statistics.mean(times),
        lo=min(means),
        hi=max(means),
        median=statistics.median(times),
        slowest=max(times),
    )


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


# ---------------------------------------------------------------------------------------- data
def water_frame(seed: int = 0):
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
    atoms.rattle(0.05, seed=seed)
    data = from_ase(atoms)
    data = ChemicalSpeciesToAtomTypeMapper(model_type_names=["H", "O"])(data)
    data = NeighborListTransform(r_max=4.5)(data)
    data = AtomicDataDict.with_batch_(data)
    return {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in data.items()}


def training_loss(model: torch.nn.Module, data) -> torch.Tensor:
    out = model(dict(data))
    return out["total_energy"].square().sum() + out["forces"].square().mean()


def gradient_pool(model: torch.nn.Module, frames: list) -> list[list[torch.Tensor]]:
    """The model's gradients (in ``model.parameters()`` order) on each frame, at its initial weights."""
    pool = []
    for data in frames:
        model.zero_grad(set_to_none=True)
        training_loss(model, data).backward()
        pool.append([p.grad.detach().clone() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    return pool


# ---------------------------------------------------------------------------------------- cases
def matrix_blocks(model: torch.nn.Module) -> list[tuple[int, int, int, tuple[int, ...]]]:
    """(parameter index, start, stop, 2-D shape) of every matrix-group block, in model.parameters() order."""
    index = {id(p): i for i, p in enumerate(model.parameters())}
    out = []
    for group in param_groups(model):
        if group["role"] != "matrix":
            continue
        for p, blocks in zip(group["params"], group["blocks"]):
            for start, stop, shape in blocks:
                out.append((index[id(p)], start, stop, (shape[0], -1)))
    return out


def on_blocks(name: str, model, pool, factory) -> Contestant:
    """``factory`` given the matrix blocks as separate 2-D parameters (the same matrix work)."""
    params = list(model.parameters())
    spec = matrix_blocks(model)
    blocks = [
        torch.nn.Parameter(params[i].detach().reshape(-1)[a:b].reshape(shape).clone())
        for i, a, b, shape in spec
    ]
    grads = [[g[i].reshape(-1)[a:b].reshape(shape) for i, a, b, shape in spec] for g in pool]
    return Contestant(name, blocks, factory(blocks), grads)


def on_matrix_group(name: str, model, pool, factory) -> Contestant:
    index = {id(p): i for i, p in enumerate(model.parameters())}
    groups = [g for g in param_groups(model) if g["role"] == "matrix"]
    params = [p for g in groups for p in g["params"]]
    grads = [[g[index[id(p)]] for p in params] for g in pool]
    return Contestant(name, params, factory(groups), grads)


def on_all(name: str, model, pool, factory) -> Contestant:
    return Contestant(name, list(model.parameters()), factory(model), pool)


def step_cases() -> list[tuple[str, Callable, Callable]]:
    import heavyball
    import heavyball.utils
    from nequip.model import MuonParamGroups

    # eager: heavyball otherwise torch.compiles its helpers (max-autotune) whatever compile_step says
    heavyball.utils.compile_mode = None
    from nequip.train import MuonWithAuxAdam
    from pytorch_optimizer import SOAP as PytorchOptimizerSOAP

    hb_soap = dict(
        precondition_frequency=PERIOD,
        use_precond_schedule=False,
        max_precond_dim=10000,
        merge_dims=False,
        weight_decay=0.0,
        compile_step=False,
    )
    return [
        ("torch AdamW (fused)", on_all, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True)),
        ("torch Muon [blocks]", on_blocks, lambda b: torch.optim.Muon(b, lr=1e-3)),
        (
            "heavyball Muon eager [blocks]",
            on_blocks,
            lambda b: heavyball.Muon(b, lr=1e-3, compile_step=False),
        ),
        ("mlipopt Muon [blocks]", on_matrix_group, lambda g: Muon(g, lr=1e-3)),
        (
            "nequip MuonWithAuxAdam",
            on_all,
            lambda m: MuonWithAuxAdam(MuonParamGroups(m, muon={"lr": 1e-3}, adam={"lr": 1e-3})),
        ),
        ("mlipopt Muon", on_all, lambda m: Muon(param_groups(m), lr=1e-3)),
        (
            "pytorch-optimizer SOAP [blocks]",
            on_blocks,
            lambda b: PytorchOptimizerSOAP(b, lr=1e-3, weight_decay=0.0, precondition_frequency=PERIOD),
        ),
        ("heavyball SOAP eager [blocks]", on_blocks, lambda b: heavyball.SOAP(b, lr=1e-3, **hb_soap)),
        ("mlipopt SOAP [blocks]", on_matrix_group, lambda g: SOAP(g, lr=1e-3)),
        (
            "mlipopt SOAP official [blocks]",
            on_matrix_group,
            lambda g: SOAP(g, lr=1e-3, null_space="official"),
        ),
        ("mlipopt SOAP", on_all, lambda m: SOAP(param_groups(m), lr=1e-3)),
        ("mlipopt SOAP-Muon rho=0", on_all, lambda m: SOAPMuon(param_groups(m), lr=1e-3, rho=0.0)),
        ("mlipopt SOAP-Muon rho=0.5", on_all, lambda m: SOAPMuon(param_groups(m), lr=1e-3, rho=0.5)),
    ]


def print_table(contestants: list[Contestant], reference: str, unit: float = 1e3, label: str = "ms") -> dict:
    stats = {c.name: summary(c.times) for c in contestants}
    ref = stats[reference]["mean"]
    print(
        f"| optimizer | {label}/step, mean over periods [range] | × {reference} | median step "
        f"| slowest step | slowest / median | state MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for c in contestants:
        s = stats[c.name]
        print(
            f"| {c.name} | {unit * s['mean']:.1f} [{unit * s['lo']:.1f}–{unit * s['hi']:.1f}] "
            f"| {s['mean'] / ref:.2f} | {unit * s['median']:.1f} | {unit * s['slowest']:.1f} "
            f"| {s['slowest'] / s['median']:.1f} | {state_bytes(c.optimizer) / 2**20:.1f} |"
        )
    return stats


def print_ratios(stats: dict, pairs: list[tuple[str, str]]) -> None:
    print()
    for a, b in pairs:
        if a in stats and b in stats:
            print(f"{a} / {b} = {stats[a]['mean'] / stats[b]['mean']:.2f}× (means over whole periods)")


def step_table(family: str, frames: list, periods: int) -> None:
    model = build_model(f"{family}-seed001", type_names=["H", "O"]).to(DEVICE)
    n = sum(p.numel() for p in model.parameters())
    pool = gradient_pool(model, frames)
    blocks = matrix_blocks(model)
    n_block = sum(b - a for _, a, b, _ in blocks)
    print(f"\n{family}-seed001: {n} parameters, {len(blocks)} matrix blocks ({n_block} parameters)")
    print("Optimizer step alone, the model's gradients on", len(frames), "water frames cycled:")
    contestants = [wrap(name, copy.deepcopy(model), pool, make) for name, wrap, make in step_cases()]
    torch.set_float32_matmul_precision("highest")  # whatever a library set: every contestant in fp32
    interleaved_periods(contestants, periods)
    stats = print_table(contestants, "torch AdamW (fused)")
    print_ratios(
        stats,
        [
            ("mlipopt SOAP [blocks]", "pytorch-optimizer SOAP [blocks]"),
            ("mlipopt SOAP [blocks]", "heavyball SOAP eager [blocks]"),
            ("mlipopt SOAP [blocks]", "mlipopt SOAP official [blocks]"),
            ("torch Muon [blocks]", "mlipopt Muon [blocks]"),
            ("heavyball Muon eager [blocks]", "mlipopt Muon [blocks]"),
            ("nequip MuonWithAuxAdam", "mlipopt Muon"),
        ],
    )


def train_step_table(family: str, frames: list, periods: int) -> None:
    """Forward, force double-backward and optimizer step, each optimizer on its own copy of one model."""
    model = build_model(f"{family}-seed001", type_names=["H", "O"]).to(DEVICE)
    cases = {
        "torch AdamW (fused)": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True),
        "mlipopt Muon": lambda m: Muon(param_groups(m), lr=1e-3),
        "mlipopt SOAP": lambda m: SOAP(param_groups(m), lr=1e-3),
        "mlipopt SOAP-Muon rho=0": lambda m: SOAPMuon(param_groups(m), lr=1e-3, rho=0.0),
        "mlipopt SOAP-Muon rho=0.5": lambda m: SOAPMuon(param_groups(m), lr=1e-3, rho=0.5),
    }
    if DEVICE.type == "cuda":  # the accelerator settings: no per-step flag read back, bf16 Newton–Schulz
        cases["mlipopt Muon bf16, unchecked"] = lambda m: Muon(
            param_groups(m), lr=1e-3, ns_dtype=torch.bfloat16, nonfinite="unchecked"
        )
        cases["mlipopt SOAP unchecked"] = lambda m: SOAP(param_groups(m), lr=1e-3, nonfinite="unchecked")
    contestants = []
    for name, make in cases.items():
        m = copy.deepcopy(model)
        opt = make(m)
        c = Contestant(name, list(m.parameters()), opt)

        def step(m=m, opt=opt, c=c) -> None:
            opt.zero_grad(set_to_none=True)
            training_loss(m, frames[c.calls % len(frames)]).backward()
            opt.step()

        c.step = step
        contestants.append(c)
    print(f"\nWhole training step on a {int(frames[0]['pos'].shape[0])}-atom water frame ({family}-seed001):")
    interleaved_periods(contestants, periods)
    print_table(contestants, "torch AdamW (fused)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--periods", type=int, default=3, help="timed refresh periods of 10 steps")
    parser.add_argument("--models", default="nequip,allegro")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=10, help="rattled water frames cycled")
    parser.add_argument("--train-step", action="store_true", help="also time whole training steps")
    parser.add_argument("--skip-step", action="store_true", help="only the whole training step")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (benchmarks/gpu_check.sh)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_model()}")
    print(f"{args.periods} periods of {PERIOD} steps timed per optimizer, interleaved; command: "
          f"python benchmarks/optimizer_step.py --periods {args.periods} --models {args.models} "
          f"--threads {args.threads}{' --train-step' if args.train_step else ''}"
          f"{' --skip-step' if args.skip_step else ''}"
          f"{' --device ' + args.device if args.device != 'cpu' else ''}")  # fmt: skip
    if DEVICE.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(DEVICE)}")
    frames = [water_frame(seed) for seed in range(args.frames)]
    for family in args.models.split(","):
        if not args.skip_step:
            step_table(family, frames, args.periods)
        if args.train_step or args.skip_step:
            train_step_table(family, frames, args.periods)


if __name__ == "__main__":
    main()
