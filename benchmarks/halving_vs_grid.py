"""Does a successive-halving sweep select as well as the full grid, for less? (issue 26, part 3)

Compares two finished (or partly finished) studies of the same protocol, one swept as a grid and one
with ``sweep: {method: halving}``: per optimizer and force fraction, the epochs each sweep trained, the
selected learning rate and weight decay, and the final runs' test force MAE (mean ± std over seeds).
The verdict is "better" where the halving selection's mean is below the grid's by more than the larger
of the two seed standard deviations, "within the spread" where the two differ by at most that, "worse"
otherwise; the medians are printed beside the means because one diverged seed (a selection at the edge
of stability) dominates a mean of three. The last row sums both sweeps' epochs over every cell. Usage::

    mlipopt study --preset sweep-3bpa-grid        # ~3 h on 2 cores (one worker)
    mlipopt study --preset sweep-3bpa-halving     # ~1 h
    python benchmarks/halving_vs_grid.py studies/sweep-3bpa-grid studies/sweep-3bpa-halving
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from mlipopt.study import ResultsDB


def summary(folder: Path) -> dict[tuple[str, float], dict]:
    db = ResultsDB(f"sqlite:///{(folder / 'results.db').resolve()}")
    (study,) = db.studies()
    out: dict[tuple[str, float], dict] = {}
    for run in db.runs(study):
        cell = out.setdefault((run.optimizer, run.force_fraction), {"sweep_epochs": 0, "finals": []})
        if run.stage in ("sweep", "ratio"):
            cell["sweep_epochs"] += run.epochs or 0
        elif run.stage == "final" and run.status == "done" and run.test_f_mae is not None:
            cell["finals"].append(run.test_f_mae)
    for s in db.selections(study, "sweep"):
        if (s.optimizer, s.force_fraction) in out:
            out[(s.optimizer, s.force_fraction)]["selected"] = (s.lr, s.weight_decay)
    for s in db.selections(study, "revision"):  # the selected rate failed on most final seeds
        if (s.optimizer, s.force_fraction) in out:
            out[(s.optimizer, s.force_fraction)]["revised"] = s.lr
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", type=Path, help="folder of the grid-swept study")
    parser.add_argument("halving", type=Path, help="folder of the halving-swept study")
    args = parser.parse_args()
    grid, halving = summary(args.grid), summary(args.halving)
    print(
        "| optimizer | s | grid sweep epochs | halving sweep epochs | share | grid selection "
        "| halving selection | grid test F MAE: mean ± std (seeds), median | halving test F MAE | verdict |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    totals = [0, 0]
    for key in sorted(grid.keys() & halving.keys()):
        g, h = grid[key], halving[key]
        totals[0], totals[1] = totals[0] + g["sweep_epochs"], totals[1] + h["sweep_epochs"]
        share = h["sweep_epochs"] / g["sweep_epochs"] if g["sweep_epochs"] else float("nan")
        if g["finals"] and h["finals"]:
            (gm, gs), (hm, hs) = _mean_std(g["finals"]), _mean_std(h["finals"])
            errors = " | ".join(
                f"{m:.1f} ± {sd:.1f} ({len(c['finals'])}), {statistics.median(c['finals']):.1f}"
                for m, sd, c in ((gm, gs, g), (hm, hs, h))
            )
            spread = max(gs, hs)
            verdict = "better" if hm < gm - spread else "within the spread" if hm - gm <= spread else "worse"
        else:
            errors, verdict = "— | —", "(final runs not finished)"

        def point(c: dict) -> str:
            if "selected" not in c:
                return "—"
            lr = f"{c['selected'][0]:g}" + (f" → {c['revised']:g} (revised)" if "revised" in c else "")
            return f"lr {lr}, wd {c['selected'][1]:g}"

        print(
            f"| {key[0]} | {key[1]:g} | {g['sweep_epochs']} | {h['sweep_epochs']} | {share:.0%} | {point(g)} "
            f"| {point(h)} | {errors} | {verdict} |"
        )
    print(f"| all | | {totals[0]} | {totals[1]} | {totals[1] / max(totals[0], 1):.0%} | | | | | |")


if __name__ == "__main__":
    main()
