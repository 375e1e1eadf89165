"""Data-parallel training on CPU ranks (gloo): throughput against one process, and the optimizer step with
and without shared block work (issue 13). Everything is measured side by side in one run.

    python benchmarks/data_parallel.py                 # ~10 min on 2 cores
    python benchmarks/data_parallel.py --skip-throughput --steps 10   # the optimizer part alone

Part 1 — frames per second of ``mlipopt train`` (nequip-small, 200 rMD17 ethanol frames from
../shared/data or EMT-generated ones, global batch 8, AdamW, no validation) as 1 process × 1 thread,
1 process × 2 threads and ``torchrun`` 2 ranks × 1 thread. Each is run for 1 and 1+E epochs and the
difference of wall times is divided into E·200 frames, so start-up cancels.

Part 2 — ``optimizer.step()`` of Muon, SOAP and SOAP-Muon on the nequip-seed001 model (781k parameters,
block structure discovered) with fixed random gradients: one process (1 thread), and 2 ranks × 1 thread
without and with ``shard_blocks`` (each rank computes half of the block work, the updates are summed).
Mean ms over ``--steps`` steps after 3 warm-up steps, SOAP's eigenbasis refresh (every 10 steps) included.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "ethanol" / "train.xyz"
N_TRAIN = 200
OPTIMIZERS = ("muon", "soap", "soap_muon")


def write_data(folder: Path) -> Path:
    import ase.io

    from mlipopt.data import generate_frames

    xyz = folder / "ethanol.xyz"
    if SHARED.is_file():
        frames = ase.io.read(SHARED, index=f":{N_TRAIN}")
        print(f"data: {len(frames)} rMD17 ethanol frames from {SHARED}")
    else:
        frames = generate_frames("ethanol", N_TRAIN).atoms
        print(f"data: {len(frames)} EMT-generated ethanol frames (../shared/data absent)")
    ase.io.write(xyz, frames, format="extxyz")
    return xyz


def train_seconds(folder: Path, xyz: Path, epochs: int, threads: int, ranks: int, tag: str) -> float:
    config = {
        "seed": 1,
        "run_dir": str(folder / f"{tag}-{epochs}"),
        "data": {"train": str(xyz), "split": [N_TRAIN, 0, 0], "batch_size": 8, "energy_key": "energy"},
        "model": {"preset": "nequip-small"},
        "optimizer": {"name": "adamw", "lr": 1e-2},
        "training": {"max_epochs": epochs, "progress": False},
    }
    path = folder / f"{tag}-{epochs}.yaml"
    path.write_text(yaml.safe_dump(config))
    launch = [sys.executable]
    if ranks > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    subprocess.run([*launch, "-m", "mlipopt.cli", "train", str(path)], check=True, env=env,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - start


def throughput(extra_epochs: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="data_parallel_"))
    xyz = write_data(folder)
    setups = [("1 process × 1 thread", 1, 1), ("1 process × 2 threads", 2, 1), ("2 ranks × 1 thread", 1, 2)]
    print("\n| setup | frames/s | × 1 process, 1 thread |")
    print("|---|---|---|")
    base = None
    for name, threads, ranks in setups:
        tag = f"t{threads}r{ranks}"
        short = train_seconds(folder, xyz, 1, threads, ranks, tag)
        long = train_seconds(folder, xyz, 1 + extra_epochs, threads, ranks, tag)
        rate = extra_epochs * N_TRAIN / max(long - short, 1e-9)
        base = base or rate
        print(f"| {name} | {rate:.1f} | {rate / base:.2f} |", flush=True)


def _optimizer(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    from mlipopt.optim import build_optimizer

    options = {"rho": 0.0} if name == "soap_muon" else {}
    return build_optimizer(name, model, lr=1e-3, **options)


def step_ms(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int, ranks=None) -> float:
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=generator, dtype=p.dtype) * 1e-2 for p in model.parameters()]
    for p, g in zip(model.parameters(), grads):
        p.grad = g
    for _ in range(3):
        optimizer.step()
    if ranks is not None:
        ranks.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    if ranks is not None:
        ranks.barrier()
    return 1e3 * (time.perf_counter() - start) / steps


def _rank_steps(rank: int, world: int, port: int, steps: int, out: str) -> None:
    from mlipopt.models import build_model
    from mlipopt.train.distributed import init_from_environment, shutdown

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ranks = init_from_environment("cpu")
    results = {}
    try:
        for name in OPTIMIZERS:
            for shard in (False, True):
                torch.manual_seed(0)
                model = build_model("nequip-seed001", type_names=["H", "O"])
                optimizer = _optimizer(name, model)
                if shard:
                    optimizer.shard_blocks(ranks)
                results[(name, shard)] = step_ms(model, optimizer, steps, ranks)
                params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
                results[(name, shard, "params")] = params
    finally:
        shutdown()
    if rank == 0:
        torch.save(results, out)


def optimizer_steps(steps: int) -> None:
    from mlipopt.models import build_model

    torch.set_num_threads(1)
    single = {}
    for name in OPTIMIZERS:
        torch.manual_seed(0)
        model = build_model("nequip-seed001", type_names=["H", "O"])
        single[name] = step_ms(model, _optimizer(name, model), steps)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = Path(tempfile.mkdtemp(prefix="data_parallel_")) / "steps.pt"
    mp.spawn(_rank_steps, args=(2, port, steps, str(out)), nprocs=2, join=True)
    ranks = torch.load(out, weights_only=False)
    print(f"\nnequip-seed001, {steps} steps after 3 warm-up steps, ms per optimizer.step():")
    print("| optimizer | 1 process | 2 ranks, every rank all blocks | 2 ranks, sharded | sharded / unsharded "
          "| sharded = unsharded parameters |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name in OPTIMIZERS:
        plain, shard = ranks[(name, False)], ranks[(name, True)]
        equal = torch.equal(ranks[(name, False, "params")], ranks[(name, True, "params")])
        print(f"| {name} | {single[name]:.1f} | {plain:.1f} | {shard:.1f} | {shard / plain:.2f} | {equal} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=2, help="extra epochs timed per setup")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    optimizer_steps(args.steps)
    if not args.skip_throughput:
        throughput(args.epochs)


if __name__ == "__main__":
    main()
