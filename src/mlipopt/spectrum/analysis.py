"""``mlipopt spectrum``: the loss Hessian of a trained run and its optimizer's preconditioned Hessian.

For a run directory and a checkpoint (``last``: weights and optimizer state of the last epoch;
``best``: the best weights, with the last epoch's optimizer state; ``epoch:N``: a kept checkpoint;
``refined``: the L-BFGS weights with its curvature pairs), the run's own loss is rebuilt in float64
on its first training frames, and reported: the top-k eigenvalues, κ of the top-k eigenspace, the
effective rank and the spectral density of H, of ``P^{1/2} H P^{1/2}`` for the optimizer's P, and of
both restricted to the parameter roles ("matrix": blocks the matrix optimizers precondition; "adam":
the rest) and to the largest matrix parameters.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..figures import save_figure
from ..optim.registry import canonical_name, optimizer_spec
from ..structure import param_groups
from ..train import Trainer, load_config
from ..train.checkpoint import load_torch, save_json
from .hessian import HessianOperator, trainer_loss_terms
from .lanczos import Spectrum, analyse
from .preconditioners import Preconditioner, from_lbfgs_history, from_optimizer

CHECKPOINT_FILES = {"last": "checkpoint.pt", "best": "best_model.pt", "refined": "refined_model.pt"}


def _checkpoint_file(run_dir: Path, checkpoint: str) -> Path:
    if checkpoint.startswith("epoch:"):
        return run_dir / f"checkpoint_epoch{int(checkpoint.split(':', 1)[1])}.pt"
    if checkpoint not in CHECKPOINT_FILES:
        raise ValueError(f"checkpoint must be last, best, refined or epoch:N, got {checkpoint!r}")
    return run_dir / CHECKPOINT_FILES[checkpoint]


def restricted(matvec: Callable[[torch.Tensor], torch.Tensor], index: torch.Tensor, size: int):
    """The principal submatrix of a symmetric operator on ``index`` (a principal restriction stays
    symmetric, and its eigenvalues interlace the full operator's)."""

    def apply(v: torch.Tensor) -> torch.Tensor:
        full = torch.zeros(size, dtype=v.dtype, device=v.device)
        full[index] = v
        return matvec(full)[index]

    return apply


def analyse_run(
    run_dir: str | Path,
    checkpoint: str = "last",
    k: int = 20,
    frames: int = 10,
    density: bool = True,
    blocks: int = 3,
    bottom: bool = False,
    dtype: str = "float64",
    probes: int = 3,
    steps: int = 30,
    tol: float = 1e-4,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Everything ``mlipopt spectrum`` reports for one run and checkpoint (a JSON-able dict)."""
    run_dir = Path(run_dir)
    source = _checkpoint_file(run_dir, checkpoint)
    if not source.is_file():
        hint = " (run `mlipopt refine` first)" if checkpoint == "refined" else ""
        raise FileNotFoundError(f"{run_dir}: no {source.name} for checkpoint {checkpoint!r}{hint}")
    config = load_config(run_dir / "config.yaml")
    config.run_dir = str(run_dir)
    if config.model.preset != "sevennet-0":
        config.model.dtype = dtype
    trainer = Trainer(config, log=lambda _: None)
    weights = load_torch(source)
    trainer.model.load_state_dict(weights["model"])
    optimizer_state = weights.get("optimizer")
    if optimizer_state is None and (run_dir / "checkpoint.pt").is_file():
        optimizer_state = load_torch(run_dir / "checkpoint.pt")["optimizer"]  # the last epoch's state
    name = canonical_name(config.optimizer.name)

    named = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
    params, names = [p for _, p in named], [n for n, _ in named]
    hessian = HessianOperator(params, trainer_loss_terms(trainer, frames), names=names)
    size, tdtype, device = hessian.size, hessian.dtype, hessian.device
    n_frames = min(frames, len(trainer.sets["train"]))
    progress(
        f"{run_dir.name} [{checkpoint}]: {size:,} parameters, loss on {n_frames} training frames, {name}"
    )

    preconditioner: Preconditioner | None = None
    note = ""
    if checkpoint == "refined" and weights.get("lbfgs"):
        history = weights["lbfgs"]
        preconditioner = from_lbfgs_history(history["s"], history["y"], hessian.flat)
        label = "lbfgs"
    elif optimizer_state is not None and optimizer_spec(name).preconditioner != "none":
        trainer.optimizer.load_state_dict(optimizer_state)
        preconditioner = from_optimizer(name, trainer.optimizer, hessian.flat)
        label = name
    else:
        not_formed = optimizer_spec(name).preconditioner == "none"
        note = (
            optimizer_spec(name).preconditioner_note
            if not_formed
            else "no optimizer state saved: P not formed"
        )
        label = name
    if preconditioner is not None:
        note = preconditioner.note

    def h_matvec(v: torch.Tensor) -> torch.Tensor:
        return hessian.matvec(v)

    def ph_matvec(v: torch.Tensor) -> torch.Tensor:
        return preconditioner.sqrt_apply(hessian.matvec(preconditioner.sqrt_apply(v)))

    counter = lambda: hessian.products  # noqa: E731
    start = time.perf_counter()
    common = dict(dtype=tdtype, device=device, counter=counter, probes=probes, steps=steps, tol=tol)
    result: dict[str, Any] = {
        "run": run_dir.name,
        "run_dir": str(run_dir),
        "checkpoint": checkpoint,
        "optimizer": name,
        "force_fraction": config.data.force_fraction,
        "frames": min(frames, len(trainer.sets["train"])),
        "parameters": size,
        "k": k,
        "density_probes": probes,
        "eigsh_tol": tol,
        "lanczos_steps": steps,
        "dtype": str(tdtype).replace("torch.", ""),
        "note": note,
    }
    spectra: dict[str, Spectrum] = {}
    spectra["H"] = analyse(h_matvec, size, "H", k=k, bottom=bottom, density=density, **common)
    progress(f"  H: λ_max {spectra['H'].top[0]:.4g}, κ_top{k} {_fmt(spectra['H'].kappa_top)} "
             f"({spectra['H'].products} Hv, {spectra['H'].seconds:.0f} s)")  # fmt: skip
    if preconditioner is not None:
        spectra["PH"] = analyse(
            ph_matvec, size, f"P·H ({label})", k=k, bottom=bottom, density=density, **common
        )
        ph = spectra["PH"]
        progress(f"  P·H ({label}): λ_max {ph.top[0]:.4g}, κ_top{k} {_fmt(ph.kappa_top)} "
                 f"({ph.products} Hv, {ph.seconds:.0f} s)")  # fmt: skip

    # per role and for the largest matrix parameters: top-min(k, 5) of the principal submatrices
    sub_k = min(k, 5)
    groups = param_groups(trainer.model)
    by_id = {id(p): i for i, p in enumerate(params)}
    views: list[tuple[str, torch.Tensor]] = []
    for role in ("matrix", "adam"):
        members = [by_id[id(p)] for g in groups if g["role"] == role for p in g["params"] if id(p) in by_id]
        if members:
            views.append((f"role:{role}", _indices(hessian.flat, members, device)))
    matrix = [by_id[id(p)] for g in groups if g["role"] == "matrix" for p in g["params"] if id(p) in by_id]
    for i in sorted(matrix, key=lambda i: -params[i].numel())[:blocks]:
        views.append((f"param:{names[i]}", _indices(hessian.flat, [i], device)))
    result["blocks"] = []
    for view, index in views:
        if len(index) < 3:
            continue
        row: dict[str, Any] = {"view": view, "size": len(index)}
        for key, matvec in (("H", h_matvec), ("PH", ph_matvec if preconditioner is not None else None)):
            if matvec is None:
                continue
            spectrum = analyse(
                restricted(matvec, index, size), len(index), key, k=sub_k, density=False, **common
            )
            row[key] = {"top": spectrum.top, "kappa_top": spectrum.kappa_top}
        result["blocks"].append(row)
        progress(f"  {view} ({len(index):,}): κ_top{sub_k}(H) {_fmt(row['H']['kappa_top'])}"
                 + (f", κ_top{sub_k}(PH) {_fmt(row['PH']['kappa_top'])}" if "PH" in row else ""))  # fmt: skip
    result["spectra"] = {key: s.to_dict() for key, s in spectra.items()}
    result["hessian_vector_products"] = hessian.products
    result["hvp_method"] = hessian.method
    result["seconds"] = time.perf_counter() - start
    return result


def _indices(flat: Any, members: list[int], device: torch.device) -> torch.Tensor:
    return torch.cat([torch.arange(flat.offsets[i], flat.offsets[i + 1], device=device) for i in members])


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def density_figure(results: list[dict[str, Any]], path: Path) -> None:
    """Spectral densities (log scale) of H and P·H, eigenvalues in units of each operator's λ_max so
    that the spread below the top can be compared across operators and runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, key in zip(axes, ("H", "PH")):
        for i, r in enumerate(results):
            s = r["spectra"].get(key)
            if not s or "density" not in s or not s["top"]:
                continue
            grid = np.array(s["density"]["grid"]) / s["top"][0]
            values = np.array(s["density"]["density"]) * s["top"][0]
            label = f"{r['optimizer']} s={100 * r['force_fraction']:g}% [{r['checkpoint']}]"
            ax.plot(grid, np.maximum(values, 1e-12), color=plt.cm.tab10(i % 10), lw=1.2, label=label)
        ax.set_yscale("log")
        ax.set_ylim(bottom=1e-6)
        ax.set_xlabel("λ / λ_max")
        ax.set_title("loss Hessian H" if key == "H" else "preconditioned P^½ H P^½")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("spectral density (per unit λ/λ_max)")
    axes[1].legend(fontsize=7)
    save_figure(fig, path)


def table(results: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: κ of the top-k eigenspace of H and P·H, effective ranks, costs."""
    rows = [
        "| run | checkpoint | optimizer | λ_max(H) | κ_top(H) | κ_top(P·H) | eff. rank H | eff. rank P·H | "
        "Hv products | time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        h, ph = r["spectra"]["H"], r["spectra"].get("PH", {})
        rows.append(
            f"| {r['run']} | {r['checkpoint']} | {r['optimizer']} | {h['top'][0]:.4g} | "
            f"{_fmt(h['kappa_top'])} | {_fmt(ph.get('kappa_top'))} | {_fmt(h.get('effective_rank'))} | "
            f"{_fmt(ph.get('effective_rank'))} | {r['hessian_vector_products']} | {r['seconds']:.0f} s |"
        )
    return rows


def write(results: list[dict[str, Any]], out: Path) -> Path:
    """``spectrum.json``, ``spectrum_density.png`` and ``spectrum.md`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    save_json(copy.deepcopy(results), out / "spectrum.json")
    density_figure(results, out / "spectrum_density.png")
    notes = sorted({r["note"] for r in results if r.get("note")})
    text = [
        "# Loss Hessian spectra",
        "",
        f"κ_top = λ₁/λ_k over the top-k eigenvalues (k = {results[0]['k']}); "
        "effective rank = (tr H)²/tr(H²).",
        "",
        *table(results),
        "",
        *[f"- {n}" for n in notes],
        "",
        "![spectral densities](spectrum_density.png)",
        "",
    ]
    (out / "spectrum.md").write_text("\n".join(text))
    json.loads((out / "spectrum.json").read_text())  # written and readable
    return out / "spectrum.md"
