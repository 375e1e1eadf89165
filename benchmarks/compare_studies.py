"""Are two runs of a study the same, run for run? Compares the final runs of two study folders by
(optimizer, force fraction, seed): test errors and best weights, bit for bit. Usage (issue 16: the demo's
SOAP and SOAP-Muon table on one core against the two-core demo)::

    mlipopt demo --out mlipopt-demo
    OMP_NUM_THREADS=1 taskset -c 0 mlipopt demo --out demo-1core 'optimizers={soap: {lr: [1e-2, 3e-2,
        1e-1]}, soap_muon: {lr: [3e-3, 1e-2, 3e-2], options: {rho: 0.0}}}'   # (one line)
    python benchmarks/compare_studies.py mlipopt-demo demo-1core
"""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

import torch


def finals(folder: Path) -> dict[tuple[str, float, int], tuple[float, float, str]]:
    with sqlite3.connect(folder / "results.db") as db:
        rows = db.execute(
            "SELECT optimizer, force_fraction, seed, test_e_mae, test_f_mae, run_dir FROM runs "
            "WHERE stage = 'final' AND status = 'done'"
        ).fetchall()
    return {(o, s, seed): (e, f, run_dir) for o, s, seed, e, f, run_dir in rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    args = parser.parse_args()
    a, b = finals(args.a), finals(args.b)
    common = sorted(set(a) & set(b))
    print(
        f"| optimizer | s | seed | test F MAE {args.a.name} | {args.b.name} | errors equal | weights equal |"
    )
    print("|---|---|---|---|---|---|---|")
    same = 0
    for key in common:
        (ea, fa, da), (eb, fb, db) = a[key], b[key]
        wa = torch.load(Path(da) / "best_model.pt", weights_only=True)["model"]
        wb = torch.load(Path(db) / "best_model.pt", weights_only=True)["model"]
        weights = all(torch.equal(wa[k], wb[k]) for k in wa)
        errors = (ea, fa) == (eb, fb)
        same += errors and weights
        print(f"| {key[0]} | {key[1]:g} | {key[2]} | {fa:.4f} | {fb:.4f} | {errors} | {weights} |")
    print(f"\n{same} of {len(common)} common final runs bitwise identical")


if __name__ == "__main__":
    main()
