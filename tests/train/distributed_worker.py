"""Functions run on each rank of a 2-process gloo group (spawned by the tests in test_distributed.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .helpers import tiny_config

LR = {"adamw": 5e-3, "soap": 5e-3, "muon": 2e-2, "soap_muon": 2e-3}


def config(run_dir: Path, optimizer: str, shard: bool = False, options: dict | None = None, **sections: Any):
    """float64 nequip-tiny on 17 training frames, batch 4: 5 steps an epoch, the last of one frame (so one
    rank holds an empty shard), force labels on 10 % of the frames."""
    return tiny_config(
        run_dir,
        data={"generate": {"system": "ethanol", "n_frames": 25}, "split": [17, 4, 4], "force_fraction": 0.1},
        model={"preset": "nequip-tiny", "dtype": "float64"},
        optimizer={"name": optimizer, "lr": LR[optimizer], "options": options or {}},
        scheduler={"name": "none"},
        distributed={"shard_optimizer": shard},
        **sections,
    )


def join(rank: int, world: int, port: int) -> Any:
    from mlipopt.train.distributed import init_from_environment

    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    return init_from_environment("cpu")


def union_batch_gradients(ranks: Any, out: Path) -> None:
    """The summed gradient of this rank's share of a global batch of 7 frames (shares of 4 and 3)."""
    from mlipopt.train import Trainer

    trainer = Trainer(config(out / "grad", "adamw"), log=lambda _: None, ranks=ranks)
    train = trainer.sets["train"]
    indices = list(range(7))
    mine = ranks.share(indices)
    trainer.batch_loss(train.batch(mine), len(indices)).total.backward()
    ranks.sum_gradients(p for p in trainer.model.parameters())
    grads = {n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None}
    torch.save(grads, out / f"grads_rank{ranks.rank}.pt")


def parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def train_runs(
    rank: int, world: int, port: int, out: str, runs: list[tuple[str, bool]], fits: list[str]
) -> None:
    """On each rank: the gradients of a union batch; one training epoch (5 steps) per (optimizer, shard) in
    ``runs`` (parameters and gathered optimizer state saved per rank); a full one-epoch ``fit`` (with the
    energy-shift refit and validation) per optimizer in ``fits``."""
    from mlipopt.train import Trainer
    from mlipopt.train.distributed import shutdown

    ranks = join(rank, world, port)
    out = Path(out)
    quiet = (lambda _: None) if rank else print
    try:
        union_batch_gradients(ranks, out)
        for optimizer, shard in runs:
            name = f"{optimizer}-{'sharded' if shard else 'plain'}"
            trainer = Trainer(config(out / name, optimizer, shard), log=quiet, ranks=ranks)
            trainer.train_epoch()
            torch.save(parameters(trainer.model), out / f"{name}_rank{rank}.pt")
            if hasattr(trainer.optimizer, "gather_shards"):
                torch.save(trainer.optimizer.state_dict(), out / f"{name}_optstate_rank{rank}.pt")
        for optimizer in fits:
            options = {"null_tolerance": 1e-8} if optimizer == "soap" else None
            cfg = config(out / f"fit-{optimizer}", optimizer, options=options, training={"max_epochs": 1})
            trainer = Trainer(cfg, log=quiet, ranks=ranks)
            final = trainer.fit()
            torch.save(parameters(trainer.model), out / f"fit-{optimizer}_rank{rank}.pt")
            torch.save(
                {"val": trainer.history[-1]["val_metric"], "test": final["test"]},
                out / f"fit-{optimizer}_metrics_rank{rank}.pt",
            )
    finally:
        shutdown()


def train_leaves_its_group(rank: int, world: int, port: int, second_port: int, out: str) -> None:
    """``train`` under launcher variables joins a group and leaves it; under a group joined by the caller
    it leaves that group joined. Writes both observations."""
    import torch.distributed as dist

    from mlipopt.train import train

    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    train(config(Path(out) / "own", "adamw", training={"max_epochs": 1}), log=lambda _: None)
    after_own = dist.is_initialized()
    join(rank, world, second_port)
    train(config(Path(out) / "caller", "adamw", training={"max_epochs": 1}), log=lambda _: None)
    (Path(out) / f"rank{rank}.txt").write_text(f"{after_own} {dist.is_initialized()}")
    dist.destroy_process_group()
