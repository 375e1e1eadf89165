"""Every optimizer mlipopt knows, declared once: the one place that names them.

``mlipopt train``, studies, spectra, reports and the trainer integrations read what they need about an
optimizer from its :class:`OptimizerSpec` — the class behind the name, whether it takes structure-aware
param groups, the learning rates a study sweeps, how the spectrum analysis reads its preconditioner —
so adding an optimizer is one entry here (and its class in its own module). The module imports neither
torch nor any optimizer library: ``mlipopt --help`` and the study presets read it for free, and a class
is imported only when :meth:`OptimizerSpec.load` is called.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..suggest import did_you_mean

#: Preconditioner views the spectrum analysis knows how to form from an optimizer's saved state
#: (mlipopt.spectrum.preconditioners): P = I; Adam's diagonal with or without bias correction; SOAP's
#: per-block eigenbasis (SOAP-Muon: its SOAP part); Muon linearised at its momentum; or not formed.
PRECONDITIONER_VIEWS = ("identity", "diagonal", "diagonal_uncorrected", "eigenbasis", "polar", "none")

#: Learning-rate grids swept when a study gives an optimizer neither ``lr`` nor ``lr_order``
#: (docs/optimizers.md). They span Harari et al. table 4's optima for training from scratch (AdamW, Muon,
#: SOAP 5e-3…3e-2; SOAP-Muon 3e-4…1e-3) and Liu et al.'s fine-tuning rates (5e-4…5e-3; SGD 1e-3…1e-2),
#: with one point of room beyond each end; a study extends a grid when its best rate lies on an edge.
ADAM_FAMILY_GRID = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)

#: Fine-tuning grids (the ``finetune-*`` presets: SevenNet-0, 2-epoch sweep on one seed). Probes on ethanol
#: showed 1e-4 — a common fine-tuning default — leaves Adam at 173 meV/Å after 2 epochs where 1e-3
#: reaches 91, and the matrix optimizers need larger steps still; hence grids, not guesses.
FINETUNE_ADAM = MappingProxyType({"lr": (1e-4, 3e-4, 1e-3)})
FINETUNE_LARGER = MappingProxyType({"lr": (3e-4, 1e-3, 3e-3)})

#: Weight decays swept on the selected learning rate when a study leaves both an optimizer's rates and its
#: decays to the defaults (Harari et al. sweep {0, 1e-5, 1e-4, 1e-3}). Without a decay Adam and AdamW are
#: one optimizer (they differ only in how the decay is applied), so a default study compares them here.
DEFAULT_WEIGHT_DECAYS = (0.0, 1e-5, 1e-4, 1e-3)


@dataclass(frozen=True)
class OptimizerSpec:
    """What mlipopt knows about one optimizer.

    ``target`` is ``"module:attribute"`` of its ``torch.optim.Optimizer`` class. ``structured``
    optimizers take :func:`mlipopt.structure.param_groups` (matrix blocks and an Adam role); the others
    take all trainable parameters in one group, as in a plain training script. ``defaults`` are the
    constructor settings mlipopt chooses where the class's own differ from common practice. ``finetune``
    is the study grid entry (``lr``, and ``weight_decay`` or ``options`` where set) of the fine-tuning
    presets.
    ``same_without_decay`` names the optimizer this one equals when the weight decay is 0 (the report
    warns when a study compares the two only there).
    """

    name: str
    target: str
    summary: str
    aliases: tuple[str, ...] = ()
    structured: bool = False
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    lr_grid: tuple[float, ...] = ADAM_FAMILY_GRID
    finetune: Mapping[str, Any] = field(default_factory=lambda: FINETUNE_ADAM)
    preconditioner: str = "none"
    preconditioner_note: str = ""
    same_without_decay: str | None = None

    def __post_init__(self) -> None:
        if self.preconditioner not in PRECONDITIONER_VIEWS:
            raise ValueError(f"{self.name}: unknown preconditioner view {self.preconditioner!r}")

    def load(self) -> type:
        """The optimizer class (imported now, so that naming an optimizer never needs its library)."""
        module, attribute = self.target.split(":")
        return getattr(importlib.import_module(module), attribute)


def _specs(*specs: OptimizerSpec) -> dict[str, OptimizerSpec]:
    return {s.name: s for s in specs}


#: name → spec, in the order reports and docs list them
OPTIMIZERS: Mapping[str, OptimizerSpec] = MappingProxyType(
    _specs(
        OptimizerSpec(
            "adamw",
            "torch.optim:AdamW",
            "Adam with decoupled weight decay (Loshchilov & Hutter): the habitual MLIP baseline",
            finetune=MappingProxyType({**FINETUNE_ADAM, "weight_decay": (1e-5,)}),
            preconditioner="diagonal",
            same_without_decay="adam",
        ),
        OptimizerSpec(
            "adam", "torch.optim:Adam", "Adam, weight decay as L2 on the gradient", preconditioner="diagonal"
        ),
        OptimizerSpec(
            "radam", "torch.optim:RAdam", "rectified Adam (Liu et al. 2020)", preconditioner="diagonal"
        ),
        OptimizerSpec(
            "sgd",
            "torch.optim:SGD",
            "SGD with heavy-ball momentum",
            defaults=MappingProxyType({"momentum": 0.9}),
            finetune=MappingProxyType({"lr": (1e-3, 3e-3, 1e-2)}),
            preconditioner="identity",
            preconditioner_note="SGD: P = I",
        ),
        OptimizerSpec(
            "lamb",
            "pytorch_optimizer:Lamb",
            "LAMB (You et al. 2020): Adam with a layer-wise trust ratio (pytorch-optimizer's)",
            finetune=FINETUNE_LARGER,
            preconditioner_note="LAMB's layer-wise trust ratio depends on the current update: "
            "P is not formed",
        ),
        OptimizerSpec(
            "ranger",
            "pytorch_optimizer:Ranger",
            "Ranger: RAdam + Lookahead + gradient centralisation (pytorch-optimizer's)",
            finetune=FINETUNE_LARGER,
            preconditioner_note="Ranger's gradient centralisation and Lookahead are not a preconditioner: "
            "P is not formed",
        ),
        OptimizerSpec(
            "schedulefree_adamw",
            "schedulefree:AdamWScheduleFree",
            "ScheduleFree AdamW (Defazio et al. 2024): no schedule, evaluation at the averaged iterate",
            aliases=("schedulefree", "sf_adamw"),
            preconditioner="diagonal_uncorrected",
        ),
        OptimizerSpec(
            "muon",
            "mlipopt.optim.muon:Muon",
            "Muon: orthogonalised momentum per matrix block (Newton–Schulz), Adam elsewhere",
            structured=True,
            finetune=FINETUNE_LARGER,  # lr_grid AdamW's: its "match_rms_adamw" scaling carries them over
            preconditioner="polar",
            preconditioner_note="Muon linearised at its momentum: right-multiplication by (MᵀM)^{-1/2} "
            "(its polar factor)",
        ),
        OptimizerSpec(
            "soap",
            "mlipopt.optim.soap:SOAP",
            "SOAP: Adam in each matrix block's Shampoo eigenbasis (Vyas et al. 2024)",
            structured=True,
            finetune=FINETUNE_LARGER,
            preconditioner="eigenbasis",
        ),
        OptimizerSpec(
            "soap_muon",
            "mlipopt.optim.soap:SOAPMuon",
            "SOAP-Muon: SOAP's update orthogonalised towards Muon's (Harari et al.)",
            aliases=("soapmuon",),
            structured=True,
            lr_grid=(1e-4, 3e-4, 1e-3, 3e-3),  # ~10× below the others (Harari et al. table 4)
            finetune=MappingProxyType({"lr": (1e-4, 3e-4, 1e-3), "options": {"rho": 0.0}}),
            preconditioner="eigenbasis",
            preconditioner_note="SOAP-Muon: SOAP's P; its orthogonalisation and RMS normalisation are not "
            "linear",
        ),
    )
)

#: The optimizer every comparison is made against (reports, speed-ups, step costs) and the default of
#: ``mlipopt train``: AdamW, what MLIP training runs by habit.
BASELINE = "adamw"

_ALIASES = {alias: spec.name for spec in OPTIMIZERS.values() for alias in spec.aliases}


def canonical_name(name: str) -> str:
    """``name`` as registered: lower case, ``-`` as ``_``, aliases resolved; a clear error otherwise."""
    key = name.lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in OPTIMIZERS:
        hint = did_you_mean(key, [*OPTIMIZERS, *_ALIASES])
        raise ValueError(f"unknown optimizer {name!r}{hint} (choose one of {', '.join(OPTIMIZERS)})")
    return key


def optimizer_spec(name: str) -> OptimizerSpec:
    """The spec of optimizer ``name`` (any alias or spelling :func:`canonical_name` accepts)."""
    return OPTIMIZERS[canonical_name(name)]


def baseline_first(names: Any) -> list[str]:
    """``names`` sorted for a table: the baseline first, then alphabetically."""
    return sorted(names, key=lambda o: (o != BASELINE, o))


def same_without_decay_pairs() -> list[tuple[str, str]]:
    """Pairs of optimizers that are one optimizer when the weight decay is 0 (e.g. adamw and adam)."""
    return [(s.name, s.same_without_decay) for s in OPTIMIZERS.values() if s.same_without_decay]
