"""Shared machinery of the block-structured optimizers (Muon, SOAP, SOAP-Muon).

State lives in batched *buckets* (one stacked tensor per block shape) while training, so a step
costs one batched call per shape. ``state_dict()`` converts it to ordinary per-parameter tensors
(shaped like the parameter, plus per-block preconditioner lists), and ``load_state_dict()``
rebuilds the buckets from them — checkpoints stay a faithful, portable torch optimizer state.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import _sharding
from ._layout import GroupPlan, build_plan, resolve_layout

NONFINITE_MODES = ("raise", "skip", "unchecked")


def accepted_arguments(cls: type) -> list[str]:
    """Public keyword arguments of ``cls``'s constructor, subclasses' and base classes' together."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is torch.optim.Optimizer or klass is object:
            continue
        for name, param in inspect.signature(init).parameters.items():
            if (
                name in ("self", "params", "defaults")
                or name.startswith("_")
                or param.kind is param.VAR_KEYWORD
            ):
                continue
            if name not in names:
                names.append(name)
    return names


def reject_unknown(cls: type, unknown: dict[str, Any]) -> None:
    """Refuse misspelled constructor arguments (a silently ignored ``precondition_frequncy`` would
    train with the default) with a TypeError naming the closest valid argument."""
    if not unknown:
        return
    valid = accepted_arguments(cls)
    problems = []
    for key in unknown:
        close = difflib.get_close_matches(key, valid, n=1)
        problems.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise TypeError(
        f"{cls.__name__} got unknown argument(s) {', '.join(problems)}; valid: {', '.join(valid)}"
    )


def _with_saved_dtypes(loaded: Any, saved: Any) -> Any:
    """``loaded`` with each non-floating tensor back in the dtype it had in ``saved`` (same nesting)."""
    if torch.is_tensor(loaded) and torch.is_tensor(saved):
        same = loaded.dtype == saved.dtype or saved.is_floating_point() or saved.is_complex()
        return loaded if same else loaded.to(saved.dtype)
    if isinstance(loaded, (list, tuple)) and isinstance(saved, (list, tuple)) and len(loaded) == len(saved):
        return type(loaded)(_with_saved_dtypes(a, b) for a, b in zip(loaded, saved))
    if isinstance(loaded, dict) and isinstance(saved, dict):
        return {k: _with_saved_dtypes(v, saved[k]) if k in saved else v for k, v in loaded.items()}
    return loaded


class NonFiniteGradientError(FloatingPointError):
    """A gradient contained NaN or inf and the optimizer was asked to refuse it."""


class BlockOptimizer(torch.optim.Optimizer):
    """Base class: param-group plans, non-finite gradient policy, state (de)serialisation.

    Subclasses define ``_convention`` (``"as_matrix"`` or ``"by_modes"``, see ``resolve_layout``),
    ``_flat_keys`` (state tensors shaped like the parameter: key -> ``"both"`` or ``"elem"`` for
    elementwise-only entries),
    ``_init_bucket``/``_export_bucket`` for per-block state, and ``_step_plan``.
    """

    _convention = "by_modes"
    _flat_keys: dict[str, str] = {}

    def __init__(self, params: Any, defaults: dict[str, Any]):
        if defaults.get("nonfinite", "raise") not in NONFINITE_MODES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_MODES}, got {defaults['nonfinite']!r}")
        super().__init__(params, defaults)
        self._plans: dict[int, tuple[tuple[int, ...], list[GroupPlan]]] = {}
        self._ranks: Any = None  # data-parallel ranks sharing the block work (shard_blocks)
        self._synced_failures: list[int] = []
        for group in self.param_groups:
            self._validate_group(group)

    # ----------------------------------------------------------------- groups and plans
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("step", 0)
        group.setdefault("skipped_steps", 0)
        group.setdefault("basis_failures", 0)
        if hasattr(self, "_plans"):
            self._validate_group(group)

    def _validate_group(self, group: dict[str, Any]) -> None:
        for key in ("blocks", "layouts", "param_names"):
            if key in group and len(group[key]) != len(group["params"]):
                raise ValueError(
                    f"param group '{key}' has {len(group[key])} entries for {len(group['params'])} params"
                )
        for i, p in enumerate(group["params"]):
            resolve_layout(group, i, p, self._convention)  # raises on malformed blocks

    def _group_plans(self, group: dict[str, Any]) -> list[GroupPlan]:
        indexed = [(i, p) for i, p in enumerate(group["params"]) if p.grad is not None]
        key = tuple(id(p) for _, p in indexed)
        cached = self._plans.get(id(group))
        if cached is not None and cached[0] == key:
            return cached[1]
        if cached is not None:
            for plan in cached[1]:
                self._gather_plan(plan)
                self._export_plan(plan, group)
        by_kind: dict[tuple, list[tuple[int, Tensor]]] = {}
        for i, p in indexed:
            by_kind.setdefault((p.dtype, p.device), []).append((i, p))
        plans = []
        for members in by_kind.values():
            params = [p for _, p in members]
            layouts = [resolve_layout(group, i, p, self._convention) for i, p in members]
            plan = build_plan(params, layouts)
            self._import_plan(plan, group)
            plans.append(plan)
        self._plans[id(group)] = (key, plans)
        return plans

    # ----------------------------------------------------------------- state import/export
    def _import_plan(self, plan: GroupPlan, group: dict[str, Any]) -> None:
        """Build the plan's bucket/elementwise storage from ``self.state`` (zeros where new)."""
        known = [bool(self.state.get(p)) for p in plan.params]
        for key in self._flat_keys:
            parts = []
            for p, has in zip(plan.params, known):
                saved = self.state[p].get(key) if has else None
                parts.append(saved if saved is not None else torch.zeros_like(p))
            flat = plan.flat(parts)
            for bucket in plan.buckets:
                if self._flat_keys[key] == "both":
                    bucket.state[key] = (
                        bucket.positions.gather(flat).reshape(bucket.count, *bucket.shape).clone()
                    )
            plan.state[key] = plan.elem.gather(flat).clone()
        for bucket in plan.buckets:
            self._init_bucket(plan, bucket, group, known)
        plan.new_elem = not all(known)
        for p in plan.params:
            self.state.pop(p, None)

    def _export_plan(self, plan: GroupPlan, group: dict[str, Any]) -> None:
        """Write the plan's storage into ``self.state`` as fresh per-parameter tensors."""
        has_elem = {i for i, _ in plan.elem_members}
        flats = {}
        for key, scope in self._flat_keys.items():
            flat = torch.zeros(plan.total, dtype=plan.params[0].dtype, device=plan.params[0].device)
            if scope == "both":
                for bucket in plan.buckets:
                    bucket.positions.scatter_(flat, bucket.state[key])
            plan.elem.scatter_(flat, plan.state[key])
            flats[key] = plan.split(flat)
        for i, p in enumerate(plan.params):
            entry: dict[str, Any] = {}
            for key, scope in self._flat_keys.items():
                if scope == "both" or i in has_elem:
                    entry[key] = flats[key][i].clone()
            self.state[p] = entry
        for bucket in plan.buckets:
            self._export_bucket(plan, bucket)

    def _sync_state(self) -> None:
        self.gather_shards()
        for group in self.param_groups:
            cached = self._plans.get(id(group))
            if cached is not None:
                for plan in cached[1]:
                    self._export_plan(plan, group)

    # ----------------------------------------------------------------- data-parallel block work
    def shard_blocks(self, ranks: Any) -> None:
        """Share the block work among data-parallel ``ranks`` (a :class:`mlipopt.train.distributed.Ranks`):
        each computes its rows of every bucket, the updates are summed (:mod:`._sharding`). Every rank
        must hold the same gradients, as after the trainer's all-reduce. ``state_dict`` is then a
        collective call (it gathers the state), to be made on every rank."""
        self._ranks = ranks if ranks is not None and ranks.active else None
        self._synced_failures = [g["basis_failures"] for g in self.param_groups]

    def _owned_buckets(self, plan: GroupPlan) -> Any:
        return plan.buckets if self._ranks is None else _sharding.owned_buckets(plan, self._ranks)

    def _combine_block_updates(self, update: Tensor) -> None:
        """Sum the ranks' block updates (each position computed by one rank; zeros elsewhere)."""
        if self._ranks is not None:
            self._ranks.sum_(update)

    def _gather_plan(self, plan: GroupPlan) -> None:
        if self._ranks is not None:
            _sharding.gather_rows(plan, self._ranks)

    def gather_shards(self) -> None:
        """Bring every rank's state up to date (a collective; a no-op without sharding)."""
        if self._ranks is None:
            return
        for group in self.param_groups:
            cached = self._plans.get(id(group))
            for plan in cached[1] if cached else []:
                self._gather_plan(plan)
        synced = self._synced_failures + [0] * (len(self.param_groups) - len(self._synced_failures))
        counts = torch.tensor([g["basis_failures"] - s for g, s in zip(self.param_groups, synced)])
        self._ranks.sum_(counts)  # each rank counted the factorisations of its own rows
        for group, before, new in zip(self.param_groups, synced, counts.tolist()):
            group["basis_failures"] = before + int(new)
        self._synced_failures = [g["basis_failures"] for g in self.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Per-parameter state (a snapshot: later steps do not change the returned tensors)."""
        self._sync_state()
        try:
            return super().state_dict()
        finally:
            for group in self.param_groups:
                cached = self._plans.get(id(group))
                for plan in cached[1] if cached else []:
                    for p in plan.params:
                        self.state.pop(p, None)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # torch casts every state tensor but "step" to its parameter's floating dtype: the boolean null-space
        # flags would come back as 0./1. floats. Restore the saved dtype of every non-floating tensor, so that
        # a loaded optimizer's state (and its next state_dict) is the saved one exactly.
        saved = state_dict["state"]
        indices = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for index, p in zip(indices, params):
            if index in saved and p in self.state:
                state = self.state[p]
                for key, value in saved[index].items():
                    state[key] = _with_saved_dtypes(state[key], value)
        self._plans = {}
        for group in self.param_groups:
            self._validate_group(group)

    def _init_bucket(self, plan: GroupPlan, bucket, group: dict[str, Any], known: list[bool]) -> None:
        raise NotImplementedError

    def _export_bucket(self, plan: GroupPlan, bucket) -> None:
        raise NotImplementedError

    # ----------------------------------------------------------------- stepping
    def _gradients_finite(self) -> bool:
        """Whether the step may proceed; ``nonfinite="unchecked"`` skips the check and with it the one host
        synchronisation of an ordinary step (for accelerators, where the trainer already checks the loss)."""
        if self.defaults["nonfinite"] == "unchecked":
            return True
        grads, owners = [], []
        for g, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                if p.grad is not None:
                    grads.append(p.grad)
                    owners.append((g, i))
        if not grads:
            return True
        # The 2-norm is finite only if every entry is, and costs a tenth of the inf-norm on CPU (whose
        # foreach kernel is not vectorised: 0.27 against 0.03 ms for allegro-seed001's 12 matrix weights);
        # it also overflows for entries beyond ~1e19 in float32, so a non-finite 2-norm is confirmed by the
        # inf-norm before a parameter is blamed.
        if bool(torch.isfinite(torch.stack([n.float() for n in torch._foreach_norm(grads)])).all()):
            return True
        finite = torch.isfinite(torch.stack([n.float() for n in torch._foreach_norm(grads, float("inf"))]))
        if bool(finite.all()):
            return True
        if self.defaults["nonfinite"] == "skip" or self.param_groups[0].get("nonfinite") == "skip":
            for group in self.param_groups:
                group["skipped_steps"] += 1
            return False
        g, i = owners[int((~finite).nonzero()[0])]
        group = self.param_groups[g]
        name = group["param_names"][i] if "param_names" in group else f"group {g}, index {i}"
        shape = tuple(group["params"][i].shape)
        raise NonFiniteGradientError(
            f"non-finite gradient (NaN or inf) in parameter {name} of shape {shape}; "
            "the step was not applied. Lower the learning rate, clip gradients, or pass "
            "nonfinite='skip' to skip such steps and count them in param_groups[i]['skipped_steps']."
        )

    @property
    def skipped_steps(self) -> int:
        """Steps skipped because of non-finite gradients (``nonfinite='skip'``)."""
        return max((g["skipped_steps"] for g in self.param_groups), default=0)

    @property
    def basis_failures(self) -> int:
        """Eigen/QR factorisations that failed and kept the previous basis, over all groups."""
        return sum(g["basis_failures"] for g in self.param_groups)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimisation step; returns the closure's loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self._gradients_finite():
            return loss
        for group in self.param_groups:
            plans = self._group_plans(group)
            if not plans:
                continue
            group["step"] += 1
            for plan in plans:
                self._step_plan(plan, group)
        return loss

    def _step_plan(self, plan: GroupPlan, group: dict[str, Any]) -> None:
        raise NotImplementedError
