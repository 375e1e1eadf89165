"""Running a study: expand, execute stage by stage, select hyperparameters on the validation metric."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .db import ResultsDB
from .executors import make_executor
from .spec import RunSpec, StudySpec, default_ratio, run_config, sweep_points


@dataclass
class StudyOutcome:
    best_point: dict[tuple[str, float], tuple[float, float]] = field(default_factory=dict)
    best_ratio: dict[str, tuple[float, float]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    database_url: str = ""


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class StudyRunner:
    def __init__(self, spec: StudySpec, progress: Callable[[str], None] = print) -> None:
        self.spec = spec
        self.progress = progress
        self.folder = spec.folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._resolve_dataset()
        self.db = ResultsDB(spec.database_url)
        self.executor = make_executor(spec.executor)
        self.outcome = StudyOutcome(database_url=spec.database_url)

    def _resolve_dataset(self) -> None:
        if self.spec.dataset is None:
            return
        from ..data.xtb import dataset_files

        files = dataset_files(self.spec.dataset, progress=self.progress)
        data = self.spec.base.setdefault("data", {})
        data["train"], data["test"] = str(files["train"]), str(files["test"])
        data.setdefault("split", [0.8, 0.2, 0.0])

    # ------------------------------------------------------------------ execution
    def execute(self, runs: list[RunSpec], label: str) -> None:
        self.db.register(self.spec.name, runs)
        todo = [r for r in runs if self.db.status(r.run_id) != "done"]
        done_before = len(runs) - len(todo)
        self.progress(
            f"{label}: {len(runs)} runs ({done_before} already done, {len(todo)} to run); "
            f"{self.executor.describe()}"
        )
        by_id = {r.run_id: r for r in runs}
        start = time.perf_counter()
        tasks = [{"run_id": r.run_id, "config": r.config, "db_url": self.db.url} for r in todo]
        for n, result in enumerate(self.executor.map(tasks), start=1):
            run = by_id[result["run_id"]]
            elapsed = time.perf_counter() - start
            eta = elapsed / n * (len(todo) - n)
            what = f"{run.optimizer} s={run.force_fraction:g} seed {run.seed} lr {run.lr:g}"
            what += f" wd {run.weight_decay:g}" if run.weight_decay else ""
            if result["status"] == "done" and "final" in result:
                test = result["final"].get("test") or {}
                metric = result["final"]["best_val_metric"]
                e_mae, f_mae = test.get("e_mae") or float("nan"), test.get("f_mae") or float("nan")
                errors = f"test E {e_mae:.2f} meV/atom, F {f_mae:.1f} meV/Å"
                if run.stage != "final":
                    errors = f"val metric {metric:.1f}"
                self.progress(
                    f"  [{n:>3}/{len(todo)}] {what}: {errors}  ({_fmt_time(elapsed)}, ~{_fmt_time(eta)} left)"
                )
            elif result["status"] == "failed":
                self.outcome.failed.append(run.run_id)
                self.progress(f"  [{n:>3}/{len(todo)}] {what}: FAILED — {result['error']}")

    def _best(self, runs: list[RunSpec]) -> RunSpec | None:
        scores = {r.id: r.best_val_metric for r in self.db.runs(self.spec.name) if r.status == "done"}
        ranked = [r for r in runs if scores.get(r.run_id) is not None]
        return min(ranked, key=lambda r: scores[r.run_id]) if ranked else None

    # ------------------------------------------------------------------ stages
    def run(self) -> StudyOutcome:
        spec, out = self.spec, self.outcome
        short, full = spec.short_epochs(), spec.final_epochs()
        ratio0 = default_ratio(spec)

        groups: dict[tuple[str, float], list[RunSpec]] = {}
        for opt in spec.optimizers:
            points = sweep_points(spec, opt)
            for s in spec.force_fractions:
                if len(points) == 1:
                    out.best_point[(opt, s)] = points[0]
                    continue
                groups[(opt, s)] = [
                    run_config(spec, opt, s, spec.sweep_seed, lr, wd, ratio0, short, "sweep")
                    for lr, wd in points
                ]
        if groups:
            self.execute([r for g in groups.values() for r in g], "sweep (lr × weight decay)")
            for key, runs in groups.items():
                best = self._best(runs)
                if best is not None:
                    out.best_point[key] = (best.lr, best.weight_decay)

        ratio_groups: dict[str, list[RunSpec]] = {}
        for opt in spec.optimizers:
            out.best_ratio[opt] = ratio0
            if len(spec.loss_ratios) > 1 and 1.0 in spec.force_fractions and (opt, 1.0) in out.best_point:
                lr, wd = out.best_point[(opt, 1.0)]
                ratio_groups[opt] = [
                    run_config(spec, opt, 1.0, spec.sweep_seed, lr, wd, tuple(ratio), short, "ratio")
                    for ratio in spec.loss_ratios
                ]
        if ratio_groups:
            self.execute([r for g in ratio_groups.values() for r in g], "loss-ratio sweep at full forces")
            for opt, runs in ratio_groups.items():
                best = self._best(runs)
                if best is not None:
                    out.best_ratio[opt] = best.loss_ratio

        finals = []
        for opt in spec.optimizers:
            for s in spec.force_fractions:
                if (opt, s) not in out.best_point:
                    self.progress(f"  {opt} at s={s:g}: every sweep run failed; no final runs")
                    continue
                lr, wd = out.best_point[(opt, s)]
                finals += [
                    run_config(spec, opt, s, seed, lr, wd, out.best_ratio[opt], full, "final")
                    for seed in spec.seeds
                ]
        self.execute(finals, "final runs")
        if spec.refine is not None:
            self.refine_stage(finals)
        return out

    def refine_stage(self, finals: list[RunSpec]) -> None:
        """L-BFGS on the final runs of the best ``top`` optimizers per force fraction (by validation)."""
        import numpy as np

        spec, settings = self.spec, self.spec.refine
        done = {r.id: r for r in self.db.runs(spec.name, status="done")}
        chosen = []
        for s in spec.force_fractions:
            by_opt: dict[str, list[float]] = {}
            for run in finals:
                if (
                    run.force_fraction == s
                    and run.run_id in done
                    and done[run.run_id].best_val_metric is not None
                ):
                    by_opt.setdefault(run.optimizer, []).append(done[run.run_id].best_val_metric)
            ranked = sorted(by_opt, key=lambda o: float(np.mean(by_opt[o])))[: settings.top]
            chosen += [
                r for r in finals if r.force_fraction == s and r.optimizer in ranked and r.run_id in done
            ]
        todo = [r for r in chosen if (row := self.db.refinement(r.run_id)) is None or row.status != "done"]
        self.progress(f"L-BFGS refinement: {len(chosen)} runs ({len(chosen) - len(todo)} already done)")
        options = {
            "iterations": settings.iterations,
            "memory": settings.memory,
            "patience": settings.patience,
            "criterion": settings.criterion,
        }
        tasks = [
            {"run_id": r.run_id, "kind": "refine", "run_dir": r.config["run_dir"], "refine": options,
             "db_url": self.db.url}
            for r in todo
        ]  # fmt: skip
        by_id = {r.run_id: r for r in todo}
        for n, result in enumerate(self.executor.map(tasks), start=1):
            run = by_id[result["run_id"]]
            what = f"{run.optimizer} s={run.force_fraction:g} seed {run.seed}"
            if result["status"] == "done" and "summary" in result:
                before = (result["summary"]["test_before"] or {}).get("f_mae")
                after = (result["summary"]["test_after"] or {}).get("f_mae")
                change = f"test F MAE {before:.1f} -> {after:.1f} meV/Å" if before and after else "done"
                self.progress(f"  [{n:>3}/{len(todo)}] refined {what}: {change}")
            elif result["status"] == "failed":
                self.progress(f"  [{n:>3}/{len(todo)}] refining {what} FAILED — {result['error']}")


def run_study(spec: StudySpec, progress: Callable[[str], None] = print) -> StudyOutcome:
    """Run (or continue) every stage of ``spec``; finished runs are skipped, unfinished ones resumed."""
    return StudyRunner(spec, progress).run()


def summary(outcome: StudyOutcome) -> dict[str, Any]:
    return {
        "best_point": {f"{k[0]}@{k[1]:g}": v for k, v in outcome.best_point.items()},
        "best_ratio": outcome.best_ratio,
        "failed": outcome.failed,
    }
