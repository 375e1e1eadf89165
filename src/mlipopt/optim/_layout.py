"""How a parameter's flat storage splits into matrix blocks, and the batched plan built from it.

A *block* is ``(start, stop, shape)``: elements ``start:stop`` of the flattened parameter, viewed
as ``shape`` (2-D ``(m, n)`` or 3-D ``(m1, m2, n)``). Elements not covered by any block are updated
elementwise (Adam). A :class:`GroupPlan` stacks every block of one shape (and role) across the
parameters of a param group into one *bucket*, so each optimizer step runs one batched
matmul/eigh/QR per bucket instead of one small call per block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

Block = tuple[int, int, tuple[int, ...]]
ROLES = ("matrix", "adam")
CONVENTIONS = ("as_matrix", "by_modes")  # how a tensor without a structure role is split (resolve_layout)
FANS = ("out_in", "in_out")


@dataclass(frozen=True)
class ParamLayout:
    """Blocks of one parameter, whether it is orthogonalised (matrix role) and its fan order."""

    blocks: tuple[Block, ...]
    ortho: bool
    fan: str = "out_in"


def own_shape_block(p: Tensor) -> tuple[Block, ...]:
    """One block spanning ``p``: its own shape if 2-D or 3-D, ``(d0, rest)`` beyond that."""
    if p.ndim < 2:
        return ()
    shape = tuple(p.shape) if p.ndim <= 3 else (p.shape[0], math.prod(p.shape[1:]))
    return ((0, p.numel(), tuple(int(s) for s in shape)),)


def matrix_block(p: Tensor) -> tuple[Block, ...]:
    """One 2-D block ``(d0, prod(rest))`` — Muon's convention for plain tensors."""
    if p.ndim < 2:
        return ()
    return ((0, p.numel(), (int(p.shape[0]), math.prod(p.shape[1:]))),)


def validate_blocks(blocks: Any, numel: int, where: str) -> tuple[Block, ...]:
    """Check a user/structure-provided block list and return it as tuples; raise ValueError."""
    out: list[Block] = []
    try:
        items = list(blocks)
    except TypeError as exc:
        raise ValueError(f"{where}: blocks must be a list of (start, stop, shape), got {blocks!r}") from exc
    for item in items:
        try:
            start, stop, shape = item
            start, stop = int(start), int(stop)
            shape = tuple(int(s) for s in shape)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: block {item!r} is not (start, stop, shape)") from exc
        if len(shape) not in (2, 3):
            raise ValueError(f"{where}: block shape {shape} must be 2-D or 3-D")
        if not 0 <= start < stop <= numel or math.prod(shape) != stop - start:
            raise ValueError(
                f"{where}: block {(start, stop, shape)} does not fit a parameter of {numel} elements"
            )
        out.append((start, stop, shape))
    out.sort()
    for (_, stop_a, _), (start_b, _, _) in zip(out, out[1:]):
        if start_b < stop_a:
            raise ValueError(f"{where}: blocks overlap: {out}")
    return tuple(out)


def resolve_layout(group: dict, index: int, p: Tensor, convention: str) -> ParamLayout:
    """Decide the blocks of parameter ``index`` of ``group``.

    ``convention`` is ``"as_matrix"`` (Muon's: plain tensors become one ``(d0, rest)`` matrix) or
    ``"by_modes"`` (SOAP's: plain tensors are preconditioned along their own modes, as in official SOAP).
    With a structure ``role`` the group decides: ``"matrix"`` uses ``group["blocks"][index]`` (default:
    the parameter's own shape); ``"adam"`` is elementwise for Muon, and for SOAP preconditions a
    parameter only by its own multi-dimensional shape (Harari et al. A.3–A.4).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"layout convention must be one of {CONVENTIONS}, got {convention!r}")
    role = group.get("role")
    fans = group.get("layouts")
    fan = fans[index] if fans is not None else "out_in"
    if fan not in FANS:
        raise ValueError(f"param group layout must be one of {FANS}, got {fan!r}")
    default = matrix_block(p) if convention == "as_matrix" else own_shape_block(p)
    if role is None:
        return ParamLayout(default, ortho=p.ndim >= 2, fan=fan)
    if role not in ROLES:
        raise ValueError(f"param group role must be one of {ROLES}, got {role!r}")
    if role == "matrix":
        given = group.get("blocks")
        if given is None or given[index] is None:
            blocks = own_shape_block(p)
        else:
            name = _param_name(group, index)
            blocks = validate_blocks(given[index], p.numel(), f"parameter {name}")
        return ParamLayout(blocks, ortho=True, fan=fan)
    blocks = () if convention == "as_matrix" else own_shape_block(p)
    return ParamLayout(blocks, ortho=False, fan=fan)


def _param_name(group: dict, index: int) -> str:
    names = group.get("param_names")
    return names[index] if names is not None else f"#{index}"


#: Mean length of the contiguous pieces of an :class:`IndexPlan` from which it copies piece by piece
#: (``cat`` of slices, ``_foreach_copy_``) instead of through an index tensor: measured on CPU, 2 threads,
#: index_select / index_copy_ cost 2.5× the piecewise copy for seven 32 768-element blocks and half of
#: it for seventeen of 1024; they break even near 2048–4096.
PIECEWISE_MIN = 4096


class IndexPlan:
    """Positions in a flat buffer: a contiguous range when possible, else its contiguous pieces (when
    they are long) or an index tensor."""

    def __init__(self, positions: list[range], device: torch.device):
        self.size = sum(len(r) for r in positions)
        merged: list[range] = []
        for r in positions:
            if merged and merged[-1].stop == r.start:
                merged[-1] = range(merged[-1].start, r.stop)
            elif len(r):
                merged.append(r)
        self.range: range | None = None
        self.index: Tensor | None = None
        self.pieces: list[range] | None = None
        if len(merged) <= 1:
            self.range = merged[0] if merged else range(0, 0)
        elif self.size >= PIECEWISE_MIN * len(merged):
            self.pieces = merged
            self.lengths = [len(r) for r in merged]
        else:
            self.index = torch.cat([torch.arange(r.start, r.stop, device=device) for r in merged])

    def gather(self, flat: Tensor) -> Tensor:
        if self.range is not None:
            return flat[self.range.start : self.range.stop]
        if self.pieces is not None:
            return torch.cat([flat[r.start : r.stop] for r in self.pieces])
        return flat.index_select(0, self.index)

    def scatter_(self, flat: Tensor, values: Tensor) -> None:
        if self.range is not None:
            flat[self.range.start : self.range.stop].copy_(values.reshape(-1))
        elif self.pieces is not None:
            targets = [flat[r.start : r.stop] for r in self.pieces]
            torch._foreach_copy_(targets, list(values.reshape(-1).split(self.lengths)))
        else:
            flat.index_copy_(0, self.index, values.reshape(-1))


@dataclass
class Bucket:
    """All blocks of one shape and role in a group: their positions and stacked state."""

    shape: tuple[int, ...]
    ortho: bool
    fan: str
    members: list[tuple[int, int]]  # (position of the parameter in the plan, block number)
    positions: IndexPlan | None = None
    state: dict[str, Any] = field(default_factory=dict)
    new_rows: Tensor | None = None  # rows whose preconditioner must be initialised this step
    ranges: list[range] = field(default_factory=list)  # flat positions of each member block

    @property
    def count(self) -> int:
        return len(self.members)


@dataclass
class GroupPlan:
    """The parameters (with gradients) of one param group that share a dtype and device."""

    params: list[Tensor]
    layouts: list[ParamLayout]
    buckets: list[Bucket]
    elem: IndexPlan
    offsets: list[int]
    elem_members: list[tuple[int, list[range]]]  # per param: its uncovered ranges (local)
    state: dict[str, Any] = field(default_factory=dict)  # elementwise state, flat over `elem`
    new_elem: bool = False
    owners: list[list[tuple[int, int, int]]] | None = None  # per bucket: (rank, lo, hi) when sharded

    @property
    def total(self) -> int:
        return self.offsets[-1]

    def flat(self, tensors: list[Tensor]) -> Tensor:
        """Concatenate per-parameter tensors into the plan's flat order."""
        return torch.cat([t.reshape(-1) for t in tensors])

    def split(self, flat: Tensor) -> list[Tensor]:
        """Per-parameter views of a flat buffer, shaped like the parameters."""
        numels = [b - a for a, b in zip(self.offsets, self.offsets[1:])]
        return [v.view_as(p) for v, p in zip(flat.split(numels), self.params)]


def build_plan(params: list[Tensor], layouts: list[ParamLayout]) -> GroupPlan:
    """Group every block by (shape, role, fan) and record flat positions."""
    device = params[0].device
    offsets = [0]
    for p in params:
        offsets.append(offsets[-1] + p.numel())
    by_key: dict[tuple, Bucket] = {}
    positions: dict[tuple, list[range]] = {}
    elem_positions: list[range] = []
    elem_members: list[tuple[int, list[range]]] = []
    for i, (p, layout) in enumerate(zip(params, layouts)):
        base = offsets[i]
        covered = 0
        uncovered: list[range] = []
        for b, (start, stop, shape) in enumerate(layout.blocks):
            key = (shape, layout.ortho, layout.fan)
            bucket = by_key.setdefault(key, Bucket(shape, layout.ortho, layout.fan, []))
            bucket.members.append((i, b))
            positions.setdefault(key, []).append(range(base + start, base + stop))
            if start > covered:
                uncovered.append(range(covered, start))
            covered = stop
        if covered < p.numel():
            uncovered.append(range(covered, p.numel()))
        if uncovered:
            elem_members.append((i, uncovered))
            elem_positions.extend(range(base + r.start, base + r.stop) for r in uncovered)
    buckets = list(by_key.values())
    for key, bucket in by_key.items():
        bucket.positions = IndexPlan(positions[key], device)
        bucket.ranges = positions[key]
    return GroupPlan(params, layouts, buckets, IndexPlan(elem_positions, device), offsets, elem_members)
