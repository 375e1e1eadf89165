"""Find the matrix blocks of any torch model (Harari et al., table 2).

Every parameter is assigned a *role* — ``"matrix"`` (orthogonalised by Muon/SOAP-Muon,
preconditioned per block by SOAP) or ``"adam"`` — and, for matrix parameters, the blocks its flat
storage splits into. Modules are recognised by their attributes (duck typing), not by class, because
packaged models load e3nn classes under other module names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

TP_POLICIES = ("adam", "flatten", "tensor")
#: Parameter names of Linear layers applied to one-hot species encodings (type embeddings in disguise):
#: SevenNet's ``onehot_to_feature_x``, MACE's ``node_embedding``
ONEHOT_NAME = re.compile(r"onehot|node_embedding")
#: MACE's symmetric-contraction weights, (elements, basis functions, channels): one matrix per element
CONTRACTION_NAME = re.compile(r"(weights_max|weights\.\d+)$")


@dataclass(frozen=True)
class ParamInfo:
    """What structure discovery decided for one parameter."""

    name: str
    shape: tuple[int, ...]
    module: str  # class name of the owning module
    kind: str  # e3nn-linear, e3nn-tp, linear, embedding, readout, other
    role: str
    blocks: tuple[tuple[int, int, tuple[int, ...]], ...]
    fan: str = "out_in"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _is_e3nn_linear(m: torch.nn.Module) -> bool:
    return all(
        hasattr(m, a) for a in ("instructions", "weight_numel", "irreps_in", "irreps_out")
    ) and not hasattr(m, "irreps_in1")


def _is_e3nn_tp(m: torch.nn.Module) -> bool:
    return all(
        hasattr(m, a) for a in ("instructions", "weight_numel", "irreps_in1", "irreps_in2", "irreps_out")
    )


def _is_dense(m: torch.nn.Module, attr: str, p: torch.Tensor) -> bool:
    return attr == "weight" and p.ndim == 2 and hasattr(m, "in_features") and hasattr(m, "out_features")


def _e3nn_linear_blocks(m: torch.nn.Module) -> list[tuple[int, int, tuple[int, ...]]]:
    blocks, offset = [], 0
    for ins in m.instructions:
        if getattr(ins, "i_in", 0) == -1:  # bias instruction (older e3nn), not part of `weight`
            continue
        shape = tuple(int(s) for s in ins.path_shape)
        size = math.prod(shape)
        if size and len(shape) == 2:
            blocks.append((offset, offset + size, shape))
        offset += size
    return blocks


def _e3nn_tp_blocks(m: torch.nn.Module, policy: str) -> list[tuple[int, int, tuple[int, ...]]]:
    blocks, offset = [], 0
    for ins in m.instructions:
        if not getattr(ins, "has_weight", True):
            continue
        shape = tuple(int(s) for s in ins.path_shape)
        size = math.prod(shape)
        if size and len(shape) == 3:  # 'uvw' paths: (m1, m2, n) multiplicity mixing
            shape = shape if policy == "tensor" else (shape[0] * shape[1], shape[2])
            blocks.append((offset, offset + size, shape))
        offset += size
    return blocks


def classify(
    module: torch.nn.Module, attr: str, p: torch.Tensor, name: str, tp_blocks: str = "flatten"
) -> ParamInfo:
    """Role and blocks of parameter ``attr`` of ``module`` (see module doc for the rules)."""
    shape = tuple(int(s) for s in p.shape)
    cls = type(module).__name__

    def info(kind: str, role: str, blocks=(), fan: str = "out_in") -> ParamInfo:
        return ParamInfo(name, shape, cls, kind, role, tuple(blocks), fan)

    weight_numel = getattr(module, "weight_numel", None)
    if attr == "weight" and p.ndim == 1 and p.numel() == weight_numel:
        if _is_e3nn_linear(module):
            blocks = _e3nn_linear_blocks(module)
            if blocks and all(b[2][-1] == 1 for b in blocks):  # mixes channels down to one scalar
                return info("readout", "adam", fan="in_out")
            if ONEHOT_NAME.search(name):  # a Linear on one-hot species: a type embedding (SevenNet)
                return info("embedding", "adam", fan="in_out")
            return info("e3nn-linear", "matrix" if blocks else "adam", blocks, "in_out")
        if _is_e3nn_tp(module):
            if tp_blocks == "adam":
                return info("e3nn-tp", "adam")
            blocks = _e3nn_tp_blocks(module, tp_blocks)
            return info("e3nn-tp", "matrix" if blocks else "adam", blocks, "in_out")
    if _is_dense(module, attr, p):
        fan = "out_in" if shape == (module.out_features, module.in_features) else "in_out"
        fan_out = shape[0] if fan == "out_in" else shape[1]
        if fan_out == 1:  # readout to a scalar: Adam (Jordan et al. 2024; Harari et al. table 2)
            return info("readout", "adam", fan=fan)
        return info("linear", "matrix", [(0, p.numel(), shape)], fan)
    if (
        attr == "weight"
        and p.ndim == 2
        and shape == (getattr(module, "h_in", -1), getattr(module, "h_out", -1))
    ):
        # e3nn.nn.FullyConnectedNet layer (radial MLPs of e3nn-based models such as SevenNet): (in, out)
        if shape[1] == 1:
            return info("readout", "adam", fan="in_out")
        return info("linear", "matrix", [(0, p.numel(), shape)], "in_out")
    if hasattr(module, "num_embeddings") and hasattr(module, "embedding_dim"):
        return info("embedding", "adam")
    if p.ndim == 3 and CONTRACTION_NAME.search(name):
        # MACE symmetric contraction: per element a (basis, channels) matrix that mixes the channels'
        # correlation basis — a matrix when it has more than one basis function, else a vector (Adam)
        elements, basis, channels = shape
        if basis < 2:
            return info("symmetric-contraction", "adam")
        size = basis * channels
        blocks = [(e * size, (e + 1) * size, (basis, channels)) for e in range(elements)]
        return info("symmetric-contraction", "matrix", blocks, "in_out")
    return info("other", "adam")


def discover(
    model: torch.nn.Module,
    tp_blocks: str = "flatten",
    adam_names: Iterable[str] = (),
) -> list[ParamInfo]:
    """Classify every trainable parameter of ``model`` once (shared parameters counted once).

    ``adam_names``: regular expressions; a parameter whose name matches any is forced to Adam
    (e.g. a type embedding implemented as a Linear on one-hot inputs).
    """
    if tp_blocks not in TP_POLICIES:
        raise ValueError(f"tp_blocks must be one of {TP_POLICIES}, got {tp_blocks!r}")
    patterns = [re.compile(s) for s in adam_names]
    modules = dict(model.named_modules())
    infos, seen = [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        owner, _, attr = name.rpartition(".")
        item = classify(modules[owner], attr, p, name, tp_blocks)
        if item.role == "matrix" and any(pat.search(name) for pat in patterns):
            item = ParamInfo(item.name, item.shape, item.module, item.kind, "adam", (), item.fan)
        infos.append(item)
    return infos


def param_groups(
    model: torch.nn.Module,
    tp_blocks: str = "flatten",
    adam_names: Iterable[str] = (),
    matrix: dict[str, Any] | None = None,
    adam: dict[str, Any] | None = None,
    **group_options: Any,
) -> list[dict[str, Any]]:
    """torch param-group dicts for the block-aware optimizers.

    Returns up to two groups: ``role="matrix"`` (with ``blocks`` and ``layouts`` aligned with
    ``params``) and ``role="adam"``; each also has ``param_names``. ``group_options`` go into both
    groups; ``matrix``/``adam`` dicts override per role (e.g. ``adam={"lr": 1e-3}``). Only plain
    ints, tuples and strings are stored, so the groups survive a checkpoint round trip.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    out = split_groups(model, [{"params": trainable}], tp_blocks, adam_names) if trainable else []
    for group in out:
        group.update(group_options)
        group.update((matrix if group["role"] == "matrix" else adam) or {})
    return out


def describe(model: torch.nn.Module, tp_blocks: str = "flatten", adam_names: Iterable[str] = ()) -> str:
    """A table of every parameter's role and blocks, and the parameter count per role."""
    infos = discover(model, tp_blocks, adam_names)
    rows = [("name", "shape", "module", "kind", "role", "blocks", "numel")]
    for i in infos:
        shapes: dict[tuple[int, ...], int] = {}
        for _, _, s in i.blocks:
            shapes[s] = shapes.get(s, 0) + 1
        block_text = ", ".join(f"{n}×{'x'.join(map(str, s))}" for s, n in shapes.items()) or "-"
        covered = sum(b - a for a, b, _ in i.blocks)
        if i.blocks and covered < i.numel:
            block_text += f" (+{i.numel - covered} elementwise)"
        rows.append((i.name, "x".join(map(str, i.shape)), i.module, i.kind, i.role, block_text, str(i.numel)))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    total = sum(i.numel for i in infos)
    lines.append("")
    for role in ("matrix", "adam"):
        n = sum(i.numel for i in infos if i.role == role)
        in_blocks = sum(b - a for i in infos if i.role == role for a, b, _ in i.blocks)
        extra = f", {in_blocks} in matrix blocks" if role == "matrix" else ""
        lines.append(f"{role:>6}: {n} parameters ({100 * n / max(total, 1):.1f} %){extra}")
    lines.append(f" total: {total} parameters (tp_blocks={tp_blocks!r})")
    return "\n".join(lines)


def split_groups(
    model: torch.nn.Module,
    groups: Iterable[dict[str, Any]],
    tp_blocks: str = "flatten",
    adam_names: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Another trainer's param groups with mlipopt's block structure added inside each of them.

    Each of ``groups`` (torch param-group dicts: ``params`` plus settings such as a per-group
    ``weight_decay``) becomes up to two groups with the same settings: its matrix parameters
    (``role="matrix"``, ``blocks``, ``layouts``) and the rest (``role="adam"``). A trainer's own grouping
    (MACE's per-group decay, a frozen backbone left out) is therefore kept, and the matrix optimizers see
    the blocks they would in :func:`param_groups`. A parameter of a group that is not a trainable
    parameter of ``model`` is an error: its structure cannot be known.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    infos = {i.name: i for i in discover(model, tp_blocks, adam_names)}
    out = []
    for index, group in enumerate(groups):
        params = list(group["params"])
        settings = {k: v for k, v in group.items() if k != "params"}
        unknown = [p for p in params if names.get(id(p)) not in infos]
        if unknown:
            raise ValueError(
                f"param group {index} ({group.get('name', 'unnamed')}) holds {len(unknown)} tensor(s) that "
                "are not trainable parameters of the model: their block structure is unknown"
            )
        for role in ("matrix", "adam"):
            members = [infos[names[id(p)]] for p in params if infos[names[id(p)]].role == role]
            if not members:
                continue
            split: dict[str, Any] = {
                **settings,
                "params": [p for p in params if infos[names[id(p)]].role == role],
                "param_names": [i.name for i in members],
                "role": role,
            }
            if role == "matrix":
                split["blocks"] = [list(i.blocks) for i in members]
                split["layouts"] = [i.fan for i in members]
            out.append(split)
    return out
