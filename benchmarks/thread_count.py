"""Does the number of torch threads per run change a study's results?

Re-trains final runs of a finished study (by default the demo's seed-7 SOAP and SOAP-Muon runs at
s > 0, which the study trained with ``threads_per_run`` = 1) with ``--threads`` torch threads, and
compares the test errors and the best weights bitwise. Usage::

    mlipopt demo
    python benchmarks/thread_count.py mlipopt-demo --threads 2 --optimizers soap,soap_muon
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
from pathlib import Path

import torch
import yaml

from mlipopt.train import load_config, train


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("study", type=Path, help="a finished study folder (holds results.db)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--optimizers", default="soap,soap_muon")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="where the re-trained runs go (default: temp)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="thread_count_"))
    names = args.optimizers.split(",")
    with sqlite3.connect(args.study / "results.db") as db:
        rows = db.execute(
            f"SELECT id, run_dir FROM runs WHERE stage = 'final' AND status = 'done' AND seed = ? "
            f"AND force_fraction > 0 AND optimizer IN ({','.join('?' * len(names))}) ORDER BY id",
            (args.seed, *names),
        ).fetchall()
    header = f"| run | test F MAE, study's threads | with {args.threads} threads | change | weights equal |"
    print(header)
    print("|---|---|---|---|---|")
    for run_id, run_dir in rows:
        raw = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
        raw["run_dir"] = str(out / run_id)
        train(load_config(raw), log=lambda _: None)
        before = json.loads((Path(run_dir) / "final_metrics.json").read_text())["test"]["f_mae"]
        after = json.loads((out / run_id / "final_metrics.json").read_text())["test"]["f_mae"]
        a = torch.load(Path(run_dir) / "best_model.pt", weights_only=True)["model"]
        b = torch.load(out / run_id / "best_model.pt", weights_only=True)["model"]
        equal = all(torch.equal(a[k], b[k]) for k in a)
        change = f"{100 * (after / before - 1):+.1f} %"
        print(f"| {run_id} | {before:.2f} | {after:.2f} | {change} | {equal} |", flush=True)


if __name__ == "__main__":
    main()
