"""Sharing the block work of Muon, SOAP and SOAP-Muon among data-parallel ranks.

Every rank holds the same summed gradient, so every rank could compute every block's update. Instead
each rank owns contiguous rows of each bucket (blocks of one shape), balanced by an estimate of their
cost; it runs Newton–Schulz, the projections and the eigh/QR refreshes of its rows only, keeps only
their state current, and the ranks' updates are summed (each position non-zero on one rank, so the
sum is exact and the same bytes everywhere). The elementwise (Adam) part is cheap and computed by
every rank. Jordan et al.'s distributed Muon shares the Newton–Schulz work of 2-D weights the same
way; here SOAP's per-block preconditioners are shared too.

A rank's state for rows it does not own goes stale; :func:`gather_rows` broadcasts each owner's rows
before the state is exported (``state_dict``, a change of plan), so a checkpoint holds the full,
unsharded state and resumes with or without sharding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from ._layout import Bucket, GroupPlan, IndexPlan
from ._linalg import null_modes


def block_cost(shape: tuple[int, ...]) -> float:
    """Flops of one block's update, up to a constant: projections/Newton–Schulz (size × Σ dims) plus the
    eigh/QR of each mode's preconditioner (d³)."""
    return math.prod(shape) * sum(shape) + sum(d**3 for d in shape)


def assign_rows(buckets: list[Bucket], world: int) -> list[list[tuple[int, int, int]]]:
    """Per bucket, ``(rank, lo, hi)`` row ranges: a bucket with at least ``world`` blocks is cut into
    ``world`` near-equal contiguous ranges, a smaller one goes whole to the least loaded rank; buckets
    are placed in decreasing cost (longest-processing-time first). Deterministic: every rank computes
    the same assignment."""
    loads = [0.0] * world
    owners: list[list[tuple[int, int, int]]] = [[] for _ in buckets]
    order = sorted(range(len(buckets)), key=lambda b: (-buckets[b].count * block_cost(buckets[b].shape), b))
    for b in order:
        count, cost = buckets[b].count, block_cost(buckets[b].shape)
        if count >= world:
            sizes = [count // world + (1 if r < count % world else 0) for r in range(world)]
            by_load = sorted(range(world), key=lambda r: (loads[r], r))
            lo = 0
            for size, rank in zip(sizes, by_load):
                owners[b].append((rank, lo, lo + size))
                loads[rank] += size * cost
                lo += size
        else:
            rank = min(range(world), key=lambda r: (loads[r], r))
            owners[b].append((rank, 0, count))
            loads[rank] += count * cost
    return owners


def _slice(value: Any, lo: int, hi: int) -> Any:
    if isinstance(value, Tensor):
        return value[lo:hi]
    if isinstance(value, list):
        return [None if t is None else t[lo:hi] for t in value]
    return value


def rows_view(bucket: Bucket, lo: int, hi: int, device: torch.device) -> Bucket:
    """Rows ``lo:hi`` of ``bucket`` as a bucket whose state tensors are views (in-place updates land in
    the full bucket)."""
    view = Bucket(
        bucket.shape,
        bucket.ortho,
        bucket.fan,
        bucket.members[lo:hi],
        IndexPlan(bucket.ranges[lo:hi], device),
        {key: _slice(value, lo, hi) for key, value in bucket.state.items()},
        ranges=bucket.ranges[lo:hi],
    )
    if "null_modes" in view.state:
        view.state["null_modes"] = null_modes(view.state["null"])
    if bucket.new_rows is not None:
        rows = bucket.new_rows[(bucket.new_rows >= lo) & (bucket.new_rows < hi)] - lo
        view.new_rows = rows if rows.numel() else None
    return view


def owned_buckets(plan: GroupPlan, ranks: Any) -> Iterator[Bucket]:
    """The views of ``plan``'s buckets this rank computes (assigned on first use)."""
    if plan.owners is None:
        plan.owners = assign_rows(plan.buckets, ranks.world)
    device = plan.params[0].device
    for bucket, owners in zip(plan.buckets, plan.owners):
        for rank, lo, hi in owners:
            if rank == ranks.rank and hi > lo:
                yield rows_view(bucket, lo, hi, device)
        bucket.new_rows = None  # initialised by their owners


def _tensors(state: dict[str, Any]) -> Iterator[Tensor]:
    for key in sorted(state):
        value = state[key]
        if isinstance(value, Tensor):
            yield value
        elif isinstance(value, list):
            yield from (t for t in value if t is not None)


def gather_rows(plan: GroupPlan, ranks: Any) -> None:
    """Every rank's state rows from their owners (a broadcast per owned range): the full state again."""
    if plan.owners is None:
        return
    for bucket, owners in zip(plan.buckets, plan.owners):
        for rank, lo, hi in owners:
            for tensor in _tensors(bucket.state):
                ranks.broadcast_(tensor[lo:hi], src=rank)
        if "null_modes" in bucket.state:
            bucket.state["null_modes"] = null_modes(bucket.state["null"])
