"""Energy drift before and after: every optimizer × every way of holding the per-type energy shifts.

    python benchmarks/energy_drift.py        # 10 optimizers × 3 modes, NequIP; ~15 min on 2 cores
    python benchmarks/energy_drift.py --families allegro,sevennet --optimizers adamw,soap

The configuration of issue 11's measurement: shared 3BPA DFT data (train_300K.xyz), seed 42, split
100/25/25, 10 % force labels, plateau scheduler, 20 epochs; nequip-small (allegro-small; SevenNet-0
fine-tuned on 30 frames for 8 epochs). Modes (``model.energy_shifts``): ``fixed`` (shifts stay at E0 —
mlipopt's behaviour before the fix, and nequip's/MACE's default), ``trainable`` (seed 001 table 3) and
``refit`` (closed-form least squares after every epoch, the new default). Prints, per run, the
validation energy MAE after epoch 1 and its maximum later, the signed offset (bias) at that maximum,
the best epoch, the final validation force MAE and the test errors, and the diagnostics flags; writes
``drift.csv`` and ``drift.png`` (validation energy MAE per epoch) into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

SHARED = Path(os.environ.get("MLIPOPT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

#: one learning rate per optimizer, inside its default grid (issue 11 measured AdamW at 3e-3)
LEARNING_RATES = {
    "adamw": 3e-3,
    "adam": 3e-3,
    "radam": 3e-3,
    "sgd": 1e-2,
    "lamb": 3e-3,
    "ranger": 3e-3,
    "schedulefree_adamw": 3e-3,
    "muon": 3e-3,
    "soap": 3e-3,
    "soap_muon": 1e-3,
}
FAMILIES = {
    "nequip": {"model": {"preset": "nequip-small"}},
    "allegro": {"model": {"preset": "allegro-small"}},
    "sevennet": {
        "model": {"preset": "sevennet-0"},
        "data": {"split": [30, 15, 25], "max_frames": 70},
        "training": {"max_epochs": 8},
    },
}


def config(family: str, optimizer: str, mode: str, epochs: int, out: Path) -> dict[str, Any]:
    base: dict[str, Any] = {
        "seed": 42,
        "run_dir": str(out / f"{family}-{optimizer}-{mode}"),
        "data": {
            "train": str(SHARED / "3BPA" / "train_300K.xyz"),
            "split": [100, 25, 25],
            "force_fraction": 0.1,
        },
        "model": {"energy_shifts": mode},
        "optimizer": {
            "name": optimizer,
            "lr": LEARNING_RATES[optimizer] / (10 if family == "sevennet" else 1),
        },
        "scheduler": {"name": "plateau"},
        "training": {"max_epochs": epochs, "progress": False},
    }
    for section, values in FAMILIES[family].items():
        base[section] = {**base[section], **values}
    return base


def train_one(raw: dict[str, Any]) -> dict[str, Any]:
    import torch

    from mlipopt.train import Trainer, load_config

    torch.set_num_threads(1)
    trainer = Trainer(load_config(raw), log=lambda _: None)
    trainer.resume()
    final = trainer.fit()
    history = trainer.history
    first = history[0]["val_e_mae"]
    worst = max(history, key=lambda r: r["val_e_mae"])
    return {
        "run": Path(raw["run_dir"]).name,
        "e_val_epoch1": first,
        "e_val_max": worst["val_e_mae"],
        "e_val_max_epoch": worst["epoch"],
        "e_bias_at_max": worst["val_e_bias"],
        "e_val_final": history[-1]["val_e_mae"],
        "f_val_final": history[-1]["val_f_mae"],
        "best_epoch": final["best_epoch"],
        "epochs": final["epochs"],
        "test_e_mae": final["test"]["e_mae"],
        "test_f_mae": final["test"]["f_mae"],
        "flags": " ".join(final["flags"]),
        "train_time_s": final["train_time_s"],
        "curve": [r["val_e_mae"] for r in history],
    }


def figure(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(r["run"].rsplit("-", 1)[1] for r in rows))  # in the order measured
    fig, axes = plt.subplots(1, len(modes), figsize=(4.3 * len(modes), 3.6), sharey=True, squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for r in rows:
            if r["run"].endswith(f"-{mode}"):
                ax.plot(range(1, len(r["curve"]) + 1), r["curve"], label=r["run"].rsplit("-", 1)[0], lw=1)
        ax.set_yscale("log")
        ax.set_title(f"energy_shifts: {mode}")
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("validation energy MAE [meV/atom]")
    axes[0][-1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", default="nequip")
    parser.add_argument("--optimizers", default=",".join(LEARNING_RATES))
    parser.add_argument("--modes", default="fixed,trainable,refit")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="runs/energy_drift")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    raws = [
        config(family, optimizer, mode, args.epochs, out)
        for family in args.families.split(",")
        for optimizer in args.optimizers.split(",")
        for mode in args.modes.split(",")
    ]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=context) as pool:
        rows = list(pool.map(train_one, raws))
    print("| run | val E ep. 1 | val E max (epoch) | bias at max | val E final | val F final | best epoch | "
          "test E | test F | flags |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['run']} | {r['e_val_epoch1']:.1f} | {r['e_val_max']:.1f} ({r['e_val_max_epoch']}) | "
            f"{r['e_bias_at_max']:+.1f} | {r['e_val_final']:.1f} | {r['f_val_final']:.0f} | "
            f"{r['best_epoch']}/{r['epochs']} | {r['test_e_mae']:.1f} | {r['test_f_mae']:.0f} | "
            f"{r['flags'] or '—'} |"
        )
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "drift.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[k for k in rows[0] if k != "curve"])
        writer.writeheader()
        writer.writerows({k: v for k, v in r.items() if k != "curve"} for r in rows)
    figure(rows, out / "drift.png")
    print(f"\n{out / 'drift.csv'}, {out / 'drift.png'}")


if __name__ == "__main__":
    main()
