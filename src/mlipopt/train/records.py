"""What a run writes and says about itself: the per-epoch metrics table, the final summary's log
lines, and which config changes a checkpoint may be resumed under."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .checkpoint import save_text
from .diagnostics import FLAGS, VERDICT

METRIC_COLUMNS = (
    "epoch",
    "train_time_s",
    "eval_time_s",
    "lr",
    "train_loss",
    "train_energy_loss",
    "train_force_loss",
    "val_e_mae",
    "val_e_rmse",
    "val_e_bias",
    "val_f_mae",
    "val_f_rmse",
    "val_metric",
)


def write_metrics_csv(history: list[dict[str, Any]], path: Path) -> None:
    """``metrics.csv``: one row per epoch, empty cells where a value is undefined (no force labels)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS)
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in METRIC_COLUMNS})
    save_text(buffer.getvalue(), path)


#: Config keys that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = {
    ("run_dir",),
    ("training", "max_epochs"),
    ("training", "progress"),
    ("distributed",),  # checkpoints of versions before data-parallel training lack the section
    ("distributed", "shard_optimizer"),  # the checkpoint holds the gathered, unsharded state
    ("distributed", "allow_world_size_change"),
    ("distributed", "timeout_minutes"),
}


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key in sorted(set(a) | set(b)):
        path = (*prefix, key)
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, path)
        elif va != vb:
            out.append(path)
    return out


def incompatible_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted config keys in which a checkpoint's config and the current one differ, beyond those a
    resumed run may change (its folder, a longer budget, progress bars)."""
    return [".".join(p) for p in _differences(saved, current) if p not in RESUMABLE_CHANGES]


def _describe(errors: dict[str, Any]) -> str:
    text = f"E MAE {errors['e_mae']:.3f} meV/atom"
    if errors.get("e_mae_offset_free") is not None:
        text += f" ({errors['e_mae_offset_free']:.3f} offset-free)"
    if errors.get("f_mae") is not None:
        text += f", F MAE {errors['f_mae']:.2f} meV/Å"
    return text


def log_final(log: Callable[[str], None], final: dict[str, Any]) -> None:
    """The final summary of a run: test errors, each check that failed, extra test sets, forgetting."""
    test = final.get("test")
    if test:
        line = "test: E MAE {e_mae:.3f} / RMSE {e_rmse:.3f} meV/atom".format(**test)
        if test.get("f_mae") is not None:  # energy-only test data has no force error
            line += ", F MAE {f_mae:.2f} / RMSE {f_rmse:.2f} meV/Å".format(**test)
        log(line)
    for flag in final["flags"]:
        where = f"best epoch {final['best_epoch']} of {final['epochs']}"
        log(f"WARNING: {FLAGS[flag]} ({where}) — {VERDICT[flag]}?")
    for name, errors in final.get("extra_tests", {}).items():
        log(f"{name}: {_describe(errors)}")
    if "forgetting" in final:
        log(f"forgetting (vs the pretrained model): {_describe(final['forgetting'])}")
