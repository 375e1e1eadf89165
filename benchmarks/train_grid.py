"""Test errors of NequIP and Allegro trained with AdamW and SOAP at several force fractions.

    python benchmarks/train_grid.py                       # 12 runs on 300 ethanol frames, ~15 min on 2 cores
    python benchmarks/train_grid.py --epochs 5 --fractions 1.0   # quick look

Uses the example configs (examples/ethanol_{nequip,allegro}.yaml, which read ../shared/data) with the
same seed, data split and force masks for every optimizer; the learning rate is the examples' and is
not tuned per optimizer, so this is a smoke-level comparison, not the study of issue 4.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mlipopt.train import load_config, train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--models", default="nequip,allegro")
    parser.add_argument("--optimizers", default="adamw,soap")
    parser.add_argument("--fractions", default="1.0,0.1,0.0")
    parser.add_argument("--out", default="runs/train_grid")
    args = parser.parse_args()
    rows = []
    for model in args.models.split(","):
        for fraction in map(float, args.fractions.split(",")):
            for optimizer in args.optimizers.split(","):
                run_dir = Path(args.out) / f"{model}-{optimizer}-s{fraction:g}"
                config = load_config(
                    ROOT / "examples" / f"ethanol_{model}.yaml",
                    [
                        f"optimizer.name={optimizer}",
                        f"data.force_fraction={fraction}",
                        f"training.max_epochs={args.epochs}",
                        "training.progress=false",
                        f"run_dir={run_dir}",
                    ],
                )
                print(f"== {run_dir.name}", flush=True)
                final = train(config, log=lambda line: None)
                rows.append((model, optimizer, fraction, final))
                (Path(args.out) / "grid.json").write_text(
                    json.dumps([dict(model=m, **f) for m, _, _, f in rows], indent=1)
                )
    print("\n| model | s | optimizer | E MAE [meV/atom] | F MAE [meV/Å] | F RMSE | best ep | time [s] |")
    print("|---|---|---|---|---|---|---|---|")
    for model, optimizer, fraction, f in rows:
        t = f["test"]
        print(
            f"| {model} | {fraction:g} | {optimizer} | {t['e_mae']:.2f} | {t['f_mae']:.1f} | "
            f"{t['f_rmse']:.1f} | {f['best_epoch']} | {f['train_time_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
