"""One model on many processes: data-parallel training on ``torch.distributed`` (gloo on CPUs, nccl on GPUs).

Launched by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``) or ``srun`` (``SLURM_PROCID``/
``SLURM_NTASKS``/``SLURM_LOCALID`` with ``MASTER_ADDR``/``MASTER_PORT`` set by the job script).

**Batches.** ``data.batch_size`` is the *global* batch: every rank draws the same shuffled order (seed,
epoch), and each global batch is dealt out frame by frame (``indices[rank::world]``), so every frame of
an epoch is seen by exactly one rank, none dropped, none padded — and a run on N ranks follows the same
trajectory as one process, whatever N (to round-off).

**Eq. 11 across ranks.** Each rank's loss is normalised by the frame count of the *global* batch (and
the force term by the split's labelled components, already global), and the ranks' gradients are
*summed*: the gradient of N shards equals that of the union batch (tested to 1e-10 in float64).

**Why an explicit all-reduce and not ``DistributedDataParallel``.** The force loss differentiates the
model twice (forces are −∂E/∂r inside the forward), a rank may hold an empty shard of a short last
batch, and per-element parameters may be unused on one rank; DDP needs ``find_unused_parameters`` and
averages by the world size, which is exact only for equal shards. One flattened all-reduce per step,
after the backward pass, is exact in every case, and on CPUs costs little compared with the double
backward. (It does not overlap communication with the backward pass, as DDP's buckets do on GPUs.)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


def _environment() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's or Slurm's variables; None for a single process."""
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    elif "SLURM_NTASKS" in os.environ and "SLURM_PROCID" in os.environ and "MASTER_ADDR" in os.environ:
        world, rank = int(os.environ["SLURM_NTASKS"]), int(os.environ["SLURM_PROCID"])
        local = int(os.environ.get("SLURM_LOCALID", 0))
        os.environ.setdefault("MASTER_PORT", "29500")
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world))
    else:
        return None
    return (rank, world, local) if world > 1 else None


def launched_rank() -> int:
    """This process's rank as the launcher set it (0 outside torchrun/srun), before any group is joined."""
    place = _environment()
    return 0 if place is None else place[0]


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run; ``Ranks()`` is a single process (every method a no-op)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes: checkpoints, metrics, the best model, the results database."""
        return self.rank == 0

    # ------------------------------------------------------------------ frames
    def share(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """This rank's frames of a global batch (every frame on exactly one rank)."""
        return np.asarray(indices)[self.rank :: self.world]

    # ------------------------------------------------------------------ collectives
    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) in place; the same bytes on every rank."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.active:
            dist.broadcast(tensor.view(torch.uint8) if tensor.dtype == torch.bool else tensor, src=src)
        return tensor

    def sum_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """Sum the gradients of ``params`` over ranks (one flattened all-reduce). A parameter without a
        gradient on every rank keeps none (an optimizer then skips it as in a single process)."""
        if not self.active:
            return
        params = [p for p in params if p.requires_grad]
        if not params:
            return
        present = torch.tensor(
            [p.grad is not None for p in params], dtype=torch.uint8, device=params[0].device
        )
        dist.all_reduce(present, op=dist.ReduceOp.MAX)
        for dtype in sorted({p.dtype for p in params}, key=str):
            members = [p for p, has in zip(params, present.tolist()) if has and p.dtype == dtype]
            if not members:
                continue
            flat = torch.cat(
                [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in members]
            )
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for p in members:
                n = p.numel()
                p.grad = flat[offset : offset + n].view_as(p).clone()
                offset += n

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (what DDP does at construction)."""
        if not self.active:
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                data = t.data if t.data.is_contiguous() else t.data.contiguous()
                self.broadcast_(data)
                if data is not t.data:
                    t.data.copy_(data)

    def check_identical(self, module: torch.nn.Module) -> None:
        """Raise if the ranks' parameters differ in any bit (a bitwise checksum, gathered)."""
        if not self.active:
            return
        with torch.no_grad():
            sums = []
            for p in module.parameters():
                bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[p.element_size()]
                sums.append(p.detach().contiguous().view(bits).to(torch.int64).sum())
            local = torch.stack(sums) if sums else torch.zeros(1, dtype=torch.int64)
            gathered = [torch.empty_like(local) for _ in range(self.world)]
            dist.all_gather(gathered, local)
        for r, other in enumerate(gathered):
            if not torch.equal(other, gathered[0]):
                raise RuntimeError(
                    f"data-parallel ranks diverged: rank {r}'s parameters differ from rank 0's; the run is "
                    "stopped before it reports a model that no rank holds (please report this)"
                )

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def joined() -> bool:
    """Whether this process is in an initialised default process group."""
    return dist.is_available() and dist.is_initialized()


def current() -> Ranks:
    """The ranks of the initialised default process group, or a single process."""
    if joined():
        world = dist.get_world_size()
        rank = dist.get_rank()
        return Ranks(rank, world, int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0))))
    return Ranks()


def init_from_environment(device: str = "cpu", timeout_minutes: float = 30.0) -> Ranks:
    """Join the process group a launcher described in the environment (gloo for CPUs, nccl for CUDA);
    a single process when there is none. Safe to call twice."""
    if joined():
        return current()
    place = _environment()
    if place is None:
        return Ranks()
    rank, world, local = place
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(
        backend=backend, rank=rank, world_size=world, timeout=timedelta(minutes=timeout_minutes)
    )
    return Ranks(rank, world, local)


def device_for(device: str, ranks: Ranks) -> torch.device:
    """``cuda`` means this rank's GPU (``cuda:LOCAL_RANK``) in a multi-process run."""
    if ranks.active and device == "cuda":
        return torch.device(f"cuda:{ranks.local_rank}")
    return torch.device(device)


def shutdown() -> None:
    """Leave the process group. A gloo group left to interpreter exit can abort a rank after its work is
    done ("terminate called without an active exception", exit code -6 under torchrun)."""
    if joined():
        dist.destroy_process_group()


__all__ = ["Ranks", "current", "device_for", "init_from_environment", "joined", "launched_rank", "shutdown"]
