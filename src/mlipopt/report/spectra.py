"""The report's conditioning section: κ of the loss Hessian and of each optimizer's preconditioned
Hessian (``spectrum`` stage or ``mlipopt spectrum --database``), beside the time-to-target table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..spectrum.analysis import density_figure
from ..study.db import ResultsDB, Run


def spectra_section(db: ResultsDB, runs: list[Run], out: Path) -> list[str]:
    """Table (per optimizer, force fraction, checkpoint: mean over the analysed seeds) and density plot."""
    by_id = {r.id: r for r in runs}
    stored = db.spectra(list(by_id))
    if not stored:
        return []
    cells: dict[tuple[str, float, str], list[dict]] = {}
    for run_id, checkpoint, result in stored:
        run = by_id[run_id]
        cells.setdefault((run.optimizer, run.force_fraction, checkpoint), []).append(result)

    def mean(results: list[dict], key: str, field: str) -> str:
        values = [
            r["spectra"][key][field] for r in results if key in r["spectra"] and r["spectra"][key][field]
        ]
        return f"{np.mean(values):.3g}" if values else "—"

    k = stored[0][2]["k"]
    lines = [
        "## Conditioning: loss Hessian H and preconditioned P·H",
        "",
        f"κ_top = λ₁/λ_{k} over the top {k} eigenvalues of H and of P^½HP^½ (P: the optimizer's "
        "preconditioner from its state); effective rank = (tr H)²/tr(H²). A preconditioner helps where "
        "κ_top(P·H) ≪ κ_top(H) (Liu et al. appendix A). Computed by `mlipopt spectrum` on the first "
        "training frames of each run, in float64.",
        "",
        "| force labels | optimizer | checkpoint | runs | λ_max(H) | κ_top(H) | κ_top(P·H) | eff. rank H | "
        "eff. rank P·H |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (opt, s, checkpoint), results in sorted(
        cells.items(), key=lambda kv: (-kv[0][1], kv[0][0], kv[0][2])
    ):
        lambda_max = np.mean([r["spectra"]["H"]["top"][0] for r in results])
        lines.append(
            f"| {100 * s:g} % | {opt} | {checkpoint} | {len(results)} | {lambda_max:.4g} | "
            f"{mean(results, 'H', 'kappa_top')} | {mean(results, 'PH', 'kappa_top')} | "
            f"{mean(results, 'H', 'effective_rank')} | {mean(results, 'PH', 'effective_rank')} |"
        )
    notes = sorted({r["note"] for _, _, r in stored if r.get("note")})
    lines += ["", *[f"- {n}" for n in notes]]
    with_density = [r for _, _, r in stored if "density" in r["spectra"]["H"]]
    if with_density:
        density_figure(with_density, out / "spectrum_density.png")
        lines += ["", "![spectral densities of H and P·H](spectrum_density.png)"]
    return lines + [""]
