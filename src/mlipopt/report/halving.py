"""What a successive-halving sweep did: per optimizer and force fraction, how many runs were pruned after
which epoch, the epochs it trained against a full grid's, and a figure of every run's validation curve
ending where it was pruned (mlipopt.study.halving)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ..figures import save_figure
from ..study.db import ResultsDB, Run


def _budget(run: Run) -> int:
    return int(json.loads(run.config).get("training", {}).get("max_epochs", run.epochs or 0))


def halving_section(db: ResultsDB, study: str, out: Path) -> list[str]:
    """Markdown lines (empty when no sweep run of ``study`` was pruned)."""
    swept = [r for r in db.runs(study) if r.stage in ("sweep", "ratio")]
    if not any(r.status == "pruned" for r in swept):
        return []
    lines = [
        "## Successive halving",
        "",
        "The sweep stopped runs early (asynchronous successive halving, Optuna's `SuccessiveHalvingPruner`): "
        "at each rung a run went on only if its best validation metric so far was among the best of the "
        "runs that had reached that epoch. Selection is among the runs that completed.",
        "",
        "| force labels | optimizer | stage | runs | pruned after epoch (runs) | completed | epochs trained "
        "| a full grid's epochs | share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[float, str, str], list[Run]] = {}
    for r in swept:
        groups.setdefault((r.force_fraction, r.optimizer, r.stage), []).append(r)
    for (s, optimizer, stage), runs in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1], kv[0][2])):
        pruned = Counter(r.epochs for r in runs if r.status == "pruned" and r.epochs)
        trained = sum(r.epochs or 0 for r in runs)
        full = sum(_budget(r) for r in runs)
        where = ", ".join(f"{e} ({n})" for e, n in sorted(pruned.items())) or "—"
        completed = sum(r.status == "done" for r in runs)
        lines.append(
            f"| {100 * s:g} % | {optimizer} | {stage} | {len(runs)} | {where} | {completed} | {trained} "
            f"| {full} | {trained / full:.0%} |"
        )
    lines.append("")
    if halving_figure(db, swept, out / "halving.png"):
        lines += ["![validation curves of the halving sweep](halving.png)", ""]
    return lines


def halving_figure(db: ResultsDB, runs: list[Run], path: Path) -> bool:
    """Validation metric against epoch for every sweep run, one panel per (optimizer, force fraction):
    completed runs coloured by learning rate, pruned runs grey, ending with × where they stopped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r.optimizer, r.force_fraction) for r in runs if r.stage == "sweep"})
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    for ax, (optimizer, s) in zip(axes[0], panels):
        mine = [r for r in runs if r.stage == "sweep" and (r.optimizer, r.force_fraction) == (optimizer, s)]
        rates = sorted({r.lr for r in mine})
        colours = {lr: plt.cm.viridis(k / max(1, len(rates) - 1)) for k, lr in enumerate(rates)}
        for r in mine:
            curve = [(e.epoch, e.val_metric) for e in db.curve(r.id) if e.val_metric is not None]
            if not curve:
                continue
            epochs, values = zip(*curve)
            if r.status == "pruned":
                ax.plot(epochs, values, "-", color="0.6", lw=0.8)
                ax.plot(epochs[-1:], values[-1:], "x", color="0.4", ms=5)
            else:
                label = f"lr {r.lr:g}" + (f", wd {r.weight_decay:g}" if r.weight_decay else "")
                ax.plot(epochs, values, "-", color=colours[r.lr], lw=1.4, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation metric (10·E + F)")
        ax.set_title(f"{optimizer}, {100 * s:g} % force labels")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=6, title="completed (grey ×: pruned)", title_fontsize=6)
    save_figure(fig, path)
    return True
