"""Report sections for held-out data beyond the test split: extra test sets (out-of-distribution paths,
frames not in training; Liu et al. table 1) and forgetting of a pretrained model, each base and +L-BFGS.

Values come from each final run's stored ``final`` metrics and, for refined runs, the refinement
summary (``<key>_before`` / ``<key>_after``); path figures read the runs' ``extra_test_<name>.csv``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..figures import save_figure
from ..study.db import ResultsDB, Run
from .aggregate import final_runs, mean_std

Rows = dict[tuple[str, float, str], list[dict[str, Any]]]  # (optimizer, fraction, variant) -> per seed
PRETRAINED = "pretrained (no fine-tuning)"


def _collect(db: ResultsDB, study: str, key: str) -> Rows:
    """Per (optimizer, force fraction, "base" | "+L-BFGS"): the ``key`` entry of each seed's metrics."""
    rows: Rows = {}
    for run in final_runs(db, study):
        final = json.loads(run.final or "{}")
        start = (final.get("pretrained") or {}).get(key)
        if start:  # the pretrained model before fine-tuning, evaluated by every run on its own split
            rows.setdefault((PRETRAINED, run.force_fraction, "base"), []).append(start)
        if final.get(key):
            rows.setdefault((run.optimizer, run.force_fraction, "base"), []).append(final[key])
        refined = db.refinement(run.id)
        if refined is not None and refined.status == "done" and refined.summary:
            after = json.loads(refined.summary).get(f"{key}_after")
            if after:
                rows.setdefault((run.optimizer, run.force_fraction, "+L-BFGS"), []).append(after)
    return rows


def _order(rows: Rows, by: Rows | None = None) -> list[tuple[str, float, str]]:
    """Force fractions descending; within one, by the base model's mean error in ``by`` (default
    ``rows``), force MAE if measured else energy MAE, each refinement right after its base row."""
    by = by or rows

    def score(k: tuple[str, float, str]) -> float:
        base = by.get((k[0], k[1], "base")) or by.get(k) or rows[k]
        return float(np.mean([r.get("f_mae") or r.get("e_mae") or 0.0 for r in base]))

    return sorted(rows, key=lambda k: (-k[1], score(k), k[2] != "base"))


def pretrained_summary(db: ResultsDB, study: str) -> list[str]:
    """One line: the test errors of the pretrained model before fine-tuning (shifts refitted)."""
    rows = _collect(db, study, "test")
    start = [v for (opt, _, _), values in rows.items() if opt == PRETRAINED for v in values]
    if not start:
        return []
    e = mean_std([x.get("e_mae") for x in start], 2)
    f = mean_std([x.get("f_mae") for x in start], 1)
    return [
        f"Before fine-tuning (pretrained model, per-element energy shifts refitted to the training split; "
        f"{len(start)} runs): test E MAE {e} meV/atom, F MAE {f} meV/Å.",
        "",
    ]


def extra_tests_section(db: ResultsDB, study: str, out: Path) -> list[str]:
    """One table per extra test set, and a figure of the energy along each path that has a coordinate."""
    names = sorted(
        {name for r in final_runs(db, study) for name in json.loads(r.final or "{}").get("extra_tests", {})}
    )
    if not names:
        return []
    lines = ["## Extra test sets (mean ± std over seeds)", ""]
    for name in names:
        per_test: Rows = {}
        for key, values in _collect(db, study, "extra_tests").items():
            picked = [v[name] for v in values if name in v]
            if picked:
                per_test[key] = picked
        n_frames = next(iter(per_test.values()))[0].get("frames")
        lines += [
            f"### `{name}` ({n_frames} frames)",
            "",
            "| force labels | optimizer | runs | E MAE [meV/atom] | E RMSE | E MAE offset-free | "
            "F MAE [meV/Å] | F RMSE |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for opt, frac, variant in _order(per_test):
            v = per_test[(opt, frac, variant)]
            label = opt if variant == "base" else f"{opt} +L-BFGS"
            cells = [mean_std([x.get(k) for x in v], 2) for k in ("e_mae", "e_rmse", "e_mae_offset_free")]
            cells += [mean_std([x.get(k) for x in v], 1) for k in ("f_mae", "f_rmse")]
            lines.append(f"| {100 * frac:g} % | {label} | {len(v)} | " + " | ".join(cells) + " |")
        lines.append("")
    figure = path_figure(final_runs(db, study), names, out / "extra_test_paths.png")
    if figure:
        lines += [
            "Energy along the paths (each curve relative to its value at the reference minimum; "
            "mean over seeds, base models):",
            "",
            "![paths](extra_test_paths.png)",
            "",
        ]
    return lines


def _read_path(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    if not path.is_file():
        return None
    rows = list(csv.DictReader(open(path)))
    if not rows or rows[0]["coordinate"] == "":
        return None

    def column(key: str) -> np.ndarray:
        return np.array([float(r[key]) for r in rows])

    return column("coordinate"), column("energy_ref"), column("energy_pred")


def path_figure(runs: list[Run], names: list[str], path: Path) -> bool:
    """Energy along each extra test with a coordinate: reference and the seed-mean of each optimizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fraction = max(r.force_fraction for r in runs)
    data: dict[str, dict[str, list]] = {}
    labels: dict[str, str] = {}
    for name in names:
        for run in runs:
            if run.force_fraction != fraction:
                continue
            start = _read_path(Path(run.run_dir) / f"extra_test_{name}_pretrained.csv")
            if start is not None:
                data.setdefault(name, {}).setdefault(PRETRAINED, []).append(start)
            curve = _read_path(Path(run.run_dir) / f"extra_test_{name}.csv")
            if curve is not None:
                data.setdefault(name, {}).setdefault(run.optimizer, []).append(curve)
                extra = json.loads(run.config).get("data", {}).get("extra_tests", {}).get(name) or {}
                labels[name] = extra.get("coordinate") or "path coordinate"
    if not data:
        return False
    optimizers = sorted({o for d in data.values() for o in d})
    colours = {o: plt.cm.tab10(i % 10) for i, o in enumerate(optimizers)}
    fig, axes = plt.subplots(1, len(data), figsize=(4.6 * len(data), 3.8), squeeze=False)
    for ax, (name, by_opt) in zip(axes[0], sorted(data.items())):
        x, ref, _ = next(iter(by_opt.values()))[0]
        order, zero = np.argsort(x), int(np.argmin(ref))
        ax.plot(x[order], (ref - ref[zero])[order], "k-", linewidth=2, label="reference")
        for opt, curves in sorted(by_opt.items()):
            pred = np.mean([c[2] for c in curves], axis=0)
            style = {"color": "grey", "linestyle": "--"} if opt == PRETRAINED else {"color": colours[opt]}
            ax.plot(x[order], (pred - pred[zero])[order], label=opt, linewidth=1, **style)
        ax.set_xlabel(labels[name])
        ax.set_ylabel("ΔE [eV]")
        ax.set_title(name)
        ax.legend(fontsize=6)
    save_figure(fig, path)
    return True


def forgetting_section(db: ResultsDB, study: str, out: Path) -> list[str]:
    """Error against the pretrained model on its own MD frames next to the test force error."""
    rows = _collect(db, study, "forgetting")
    if not rows:
        return []
    tests = _collect(db, study, "test")
    lines = [
        "## Forgetting (error against the pretrained model on frames it sampled; 0 before fine-tuning)",
        "",
        "| force labels | optimizer | runs | test F MAE [meV/Å] | forgetting E MAE [meV/atom] | "
        "forgetting F MAE [meV/Å] |",
        "|---|---|---|---|---|---|",
    ]
    points = []
    for key in _order(rows, by=tests):
        opt, frac, variant = key
        v, t = rows[key], tests.get(key, [])
        label = opt if variant == "base" else f"{opt} +L-BFGS"
        lines.append(
            f"| {100 * frac:g} % | {label} | {len(v)} | {mean_std([x.get('f_mae') for x in t], 1)} | "
            f"{mean_std([x['e_mae'] for x in v], 2)} | {mean_std([x.get('f_mae') for x in v], 1)} |"
        )
        f_test = [x["f_mae"] for x in t if x.get("f_mae") is not None]
        f_forget = [x["f_mae"] for x in v if x.get("f_mae") is not None]
        if f_test and f_forget:
            points.append((opt, variant, float(np.mean(f_test)), float(np.mean(f_forget))))
    lines.append("")
    if points:
        tradeoff_figure(points, out / "forgetting.png")
        lines += ["![test error against forgetting](forgetting.png)", ""]
    return lines


def tradeoff_figure(points: list[tuple[str, str, float, float]], path: Path) -> None:
    """Test force MAE against forgetting force MAE; L-BFGS refinements as hollow markers, linked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    optimizers = sorted({p[0] for p in points})
    colours = {o: plt.cm.tab10(i % 10) for i, o in enumerate(optimizers)}
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    base = {p[0]: p for p in points if p[1] == "base"}
    for opt, variant, test, forget in points:
        hollow = variant != "base"
        ax.plot([forget], [test], "o", markerfacecolor="none" if hollow else colours[opt],
                color=colours[opt], label=None if hollow else opt)  # fmt: skip
        if hollow and opt in base:
            ax.annotate("", (forget, test), (base[opt][3], base[opt][2]),
                        arrowprops={"arrowstyle": "->", "color": colours[opt], "lw": 0.8})  # fmt: skip
    ax.set_xlabel("forgetting: F MAE vs pretrained [meV/Å]")
    ax.set_ylabel("test F MAE [meV/Å]")
    ax.set_title("accuracy vs forgetting (hollow: +L-BFGS)")
    ax.legend(fontsize=7)
    save_figure(fig, path)
