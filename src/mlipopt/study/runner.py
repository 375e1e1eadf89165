"""Running a study: expand, execute stage by stage, select hyperparameters on the validation metric."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from ..data import read_frames
from ..data.xtb import dataset_files
from ..train.diagnostics import FLAGS, training_checks, verdicts
from . import axes
from .db import ResultsDB, is_divergence, run_flags
from .executors import make_executor
from .halving import TrialRef, register_trials
from .jobs import FidelityJob, RefineJob, SpectrumJob, TrainJob
from .spec import (
    RunSpec,
    StudySpec,
    default_ratio,
    neighbour_rate,
    next_lower_rate,
    run_config,
    sweep_points,
)
from .step_cost import measure_study_step_costs

#: The run checks that say a rate was too high for a seed: the best epoch came early and the validation
#: metric rose after it. An energy-only model at the per-element floor (``constant_energy``) did not
#: train either, but a lower rate does not give it forces to learn from, so it does not count.
RATE_FAILURES = frozenset({"early_best", "no_progress"})


@dataclass
class StudyOutcome:
    best_point: dict[tuple[str, float], tuple[float, float]] = field(default_factory=dict)
    best_ratio: dict[str, tuple[float, float]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    # sweep runs whose loss became NaN: a learning rate too high is an answer of the sweep, not a failure
    diverged: list[str] = field(default_factory=list)
    database_url: str = ""


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class _Progress:
    """Elapsed time and time left of one stage. Runs finish in bursts (parallel workers, short and long
    runs mixed), so the estimate is the larger of the elapsed rate and the finished runs' median own
    duration times the runs left per worker."""

    def __init__(self, total: int, workers: int) -> None:
        self.total, self.workers, self.n = total, max(1, workers), 0
        self.start = time.perf_counter()
        self.durations: list[float] = []

    def finished(self, train_seconds: float | None) -> None:
        self.n += 1
        if train_seconds:
            self.durations.append(float(train_seconds))

    def __str__(self) -> str:
        elapsed = time.perf_counter() - self.start
        left = max(self.total - self.n, 0)
        eta = elapsed / max(self.n, 1) * left
        if self.durations:
            eta = max(eta, float(np.median(self.durations)) * math.ceil(left / self.workers))
        return f"{_fmt_time(elapsed)}, ~{_fmt_time(eta)} left" if left else _fmt_time(elapsed)


class StudyRunner:
    def __init__(self, spec: StudySpec, progress: Callable[[str], None] = print) -> None:
        self.spec = spec
        self.progress = progress
        self.folder = spec.folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._resolve_dataset()
        self._validate_data()
        self.db = ResultsDB(spec.database_url)
        self.executor = make_executor(spec.executor)
        self.outcome = StudyOutcome(database_url=spec.database_url)
        self.poll_seconds = 5.0  # while waiting for runs other processes hold
        self.trials: dict[str, TrialRef] = {}  # run id → its trial, for the runs of a halving sweep

    def _resolve_dataset(self) -> None:
        if self.spec.dataset is None:
            return
        files = dataset_files(self.spec.dataset, progress=self.progress)
        data = self.spec.base.setdefault("data", {})
        data["train"], data["test"] = str(files["train"]), str(files["test"])
        data.setdefault("split", [0.8, 0.2, 0.0])

    def _validate_data(self) -> None:
        """Read and check the study's data files once, before any run starts: a bad frame fails the
        study at once with its file and frame named, not every run of it an hour later."""
        data = self.spec.base.get("data", {})
        keys = {
            "energy_key": data.get("energy_key", "energy"),
            "forces_key": data.get("forces_key", "forces"),
        }
        needs_forces = max(self.spec.force_fractions, default=0.0) > 0
        for name in ("train", "val", "test"):
            if data.get(name):
                read_frames(data[name], **keys, require_forces=needs_forces and name != "test")
        for extra in (data.get("extra_tests") or {}).values():
            if isinstance(extra, dict) and extra.get("file"):
                read_frames(extra["file"], **keys, require_forces=False)

    # ------------------------------------------------------------------ execution
    def execute(self, runs: list[RunSpec], label: str) -> None:
        """Train the runs not yet done. Each worker claims its run atomically in the database, so studies
        started at once on one database share the work; runs held by another process are waited for
        (and taken over if that process stops renewing its claim). A run that diverged is a result and
        is not trained again; one that failed (a fault) is retried once per call."""
        self.db.register(self.spec.name, runs)
        finished = (
            ("done", "diverged", "pruned") if self.spec.sweep.method == "halving" else ("done", "diverged")
        )
        todo = [r for r in runs if self.db.status(r.run_id) not in finished]
        self.progress(
            f"{label}: {len(runs)} runs ({len(runs) - len(todo)} already done, {len(todo)} to run); "
            f"{self.executor.describe()}"
        )
        by_id = {r.run_id: r for r in runs}
        clock = _Progress(len(todo), getattr(self.executor, "workers", 1))
        attempted: set[str] = set()
        while todo:
            ready = [r for r in todo if r.run_id not in attempted and self.db.claimable(r.run_id)]
            # a trial of a halving sweep is pruned epoch by epoch
            jobs = [TrainJob(r.run_id, r.config, self.db.url, self.trials.get(r.run_id)) for r in ready]
            for result in self.executor.map(jobs):
                run = by_id[result["run_id"]]
                attempted.add(run.run_id)
                if result["status"] == "claimed":
                    continue  # another process took it first: waited for below
                if result["status"] == "pruned" and result.get("skipped"):
                    continue
                clock.finished((result.get("final") or {}).get("train_time_s"))
                self._report_result(run, result, clock)
            held = [r for r in todo if self.db.status(r.run_id) == "running" and r.run_id not in attempted]
            held += [r for r in todo if r.run_id in attempted and self.db.status(r.run_id) == "running"]
            todo = [r for r in todo if self.db.status(r.run_id) not in (*finished, "failed") or
                    (self.db.status(r.run_id) == "failed" and r.run_id not in attempted)]  # fmt: skip
            if todo and not ready:
                holders = sorted({self.db.holder(r.run_id) or "?" for r in held})
                self.progress(
                    f"  waiting for {len(todo)} run(s) held by other processes ({', '.join(holders)[:200]})"
                )
                time.sleep(self.poll_seconds)
            attempted -= {r.run_id for r in todo if self.db.claimable(r.run_id)}

    def _report_result(self, run: RunSpec, result: dict, clock: _Progress) -> None:
        what = f"{run.optimizer} s={run.force_fraction:g} seed {run.seed} lr {run.lr:g}"
        what += f" wd {run.weight_decay:g}" if run.weight_decay else ""
        where = f"[{clock.n:>3}/{clock.total}]"
        if result["status"] == "pruned" and "final" in result:
            final, budget = result["final"], run.config["training"]["max_epochs"]
            self.progress(
                f"  {where} {what}: pruned after epoch {final['epochs']} of {budget} "
                f"(best val metric {final['best_val_metric']:.1f})  ({clock})"
            )
        elif result["status"] == "done" and "final" in result:
            test = result["final"].get("test") or {}
            metric = result["final"]["best_val_metric"]
            e_mae, f_mae = test.get("e_mae"), test.get("f_mae")
            errors = "test E " + ("—" if e_mae is None else f"{e_mae:.2f}") + " meV/atom"
            errors += "" if f_mae is None else f", F {f_mae:.1f} meV/Å"
            if run.stage != "final":
                errors = f"val metric {metric:.1f}"
            labels = verdicts(result["final"].get("flags") or [])
            errors += f"  [{', '.join(labels)}]" if labels else ""
            self.progress(f"  {where} {what}: {errors}  ({clock})")
        elif result["status"] == "failed" and is_divergence(result["error"]):
            self.outcome.diverged.append(run.run_id)
            consequence = "left out of the selection" if run.stage != "final" else (
                "re-run once at the next lower rate" if run.retry_of is None else "reported as diverged"
            )  # fmt: skip
            self.progress(f"  {where} {what}: diverged (loss not finite) — {consequence}  ({clock})")
        elif result["status"] == "failed":
            self.outcome.failed.append(run.run_id)
            self.progress(f"  {where} {what}: FAILED — {result['error']}")

    def _select(self, runs: list[RunSpec], what: str) -> tuple[RunSpec | None, str | None]:
        """The run with the best validation metric among those that trained (no "did not train" flag:
        early best, no progress, energy-only at the constant floor; mlipopt.train.diagnostics); returns
        it and a note when flagged runs were involved.

        An energy drift alone does not exclude a run: the metric (10 × E-MAE + F-MAE) already charges
        its energy error, and excluding it could select a run that trained far worse (an architectures
        study picked a diverging rate, metric 5e5, over a drifting one at 4e2). The drift is noted.
        """
        done = {r.id: r for r in self.db.runs(self.spec.name, status="done")}
        ranked = [r for r in runs if r.run_id in done and done[r.run_id].best_val_metric is not None]
        if not ranked:
            return None, None
        score = lambda r: done[r.run_id].best_val_metric  # noqa: E731
        flagged = {r.run_id: training_checks(run_flags(done[r.run_id])) for r in ranked}
        untrained = {k for k, f in flagged.items() if "did not train" in verdicts(f)}
        sound = [r for r in ranked if r.run_id not in untrained]
        best_overall = min(ranked, key=score)
        if not sound:
            labels = sorted({v for f in flagged.values() for v in verdicts(f)})
            note = f"every run flagged ({', '.join(labels)}): selected lr {best_overall.lr:g} anyway"
            self.progress(f"  WARNING {what}: {note}")
            return best_overall, note
        best = min(sound, key=score)
        notes = []
        if best is not best_overall:
            labels = ", ".join(verdicts(flagged[best_overall.run_id]))
            notes.append(
                f"lr {best_overall.lr:g} had a better metric but is flagged ({labels}); not selected"
            )
        if flagged[best.run_id]:
            notes.append(f"selected lr {best.lr:g} shows {', '.join(verdicts(flagged[best.run_id]))}")
        note = "; ".join(notes) or None
        if note:
            self.progress(f"  {what}: {note}")
        return best, note

    def _record(self, stage: str, key: tuple[str, float], chosen: RunSpec | None, runs: list[RunSpec],
                extensions: int, note: str | None) -> None:  # fmt: skip
        rates = sorted({r.lr for r in runs})
        position = "single point"
        if chosen is not None and len(rates) > 1:
            position = (
                "lower edge"
                if chosen.lr == rates[0]
                else "upper edge"
                if chosen.lr == rates[-1]
                else "interior"
            )
        self.db.record_selection(
            self.spec.name, stage, key[0], key[1],
            run_id=None if chosen is None else chosen.run_id,
            lr=None if chosen is None else chosen.lr,
            weight_decay=None if chosen is None else chosen.weight_decay,
            grid=rates, extensions=extensions, position=position, note=note,
        )  # fmt: skip

    def _as_trials(self, stage: str, key: tuple[str, float], runs: list[RunSpec]) -> list[RunSpec]:
        """A halving sweep: register ``runs`` as trials of the Optuna study of (``stage``, ``key``) and
        return them in a fixed shuffled order (seeded by ``sweep_seed``): asynchronous halving lets the
        first run at a rung go on, so a grid in ascending order of rate would promote every run whose
        metric improves on the ones before it. A grid sweep: ``runs`` as they are."""
        sweep = self.spec.sweep
        if sweep.method != "halving" or (stage == "ratio" and not sweep.ratios):
            return runs
        order = sorted(runs, key=lambda r: r.run_id)
        random.Random(self.spec.sweep_seed).shuffle(order)
        params = [
            (r.run_id, {"lr": r.lr, "weight_decay": r.weight_decay, "energy_weight": r.loss_ratio[0],
                        "force_weight": r.loss_ratio[1]})
            for r in order
        ]  # fmt: skip
        name = f"{self.spec.name}/{stage}/{key[0]}/s{key[1]:g}"
        first = sweep.first_rung(self.spec.short_epochs())
        self.trials.update(register_trials(self.db.url, name, params, sweep.reduction_factor, first))
        return order

    def sweep_stage(self, groups: dict[tuple[str, float], list[RunSpec]]) -> dict[tuple[str, float], RunSpec]:
        """Learning rate × weight decay per (optimizer, force fraction). A best rate on the edge of its
        grid adds the next rate beyond that edge (every weight decay), up to ``sweep_extensions`` times,
        so the selected rate is interior whenever the budget allows; the report says where it is not."""
        spec = self.spec
        extensions = dict.fromkeys(groups, 0)
        pending = [r for g in groups.values() for r in g]
        label = "sweep (lr × weight decay)"
        chosen: dict[tuple[str, float], RunSpec] = {}
        notes: dict[tuple[str, float], str | None] = {}
        while pending:
            pending = [r for key, runs in groups.items() for r in self._as_trials(
                "sweep", key, [r for r in runs if r in pending])]  # fmt: skip
            self.execute(pending, label)
            pending = []
            for key, runs in groups.items():
                best, notes[key] = self._select(runs, f"{key[0]} at s={key[1]:g}")
                if best is None:
                    continue
                chosen[key] = best
                rates = sorted({r.lr for r in runs})
                edge = -1 if best.lr == rates[0] else 1 if best.lr == rates[-1] else 0
                if len(rates) < 2 or edge == 0 or extensions[key] >= spec.sweep_extensions:
                    continue
                new_lr = neighbour_rate(best.lr, edge)
                extensions[key] += 1
                self.progress(
                    f"  {key[0]} at s={key[1]:g}: best lr {best.lr:g} is on the grid's edge; "
                    f"adding {new_lr:g}"
                )
                added = [
                    run_config(spec, key[0], key[1], spec.sweep_seed, new_lr, wd, best.loss_ratio,
                               spec.short_epochs(), "sweep")
                    for wd in sorted({r.weight_decay for r in runs})
                ]  # fmt: skip
                runs.extend(added)
                pending.extend(added)
            label = "sweep: grid extensions"
        self._decays_on_selected_rate(groups, chosen, notes)
        for key, runs in groups.items():
            self._record("sweep", key, chosen.get(key), runs, extensions[key], notes.get(key))
        return chosen

    def _decays_on_selected_rate(
        self,
        groups: dict[tuple[str, float], list[RunSpec]],
        chosen: dict[tuple[str, float], RunSpec],
        notes: dict[tuple[str, float], str | None],
    ) -> None:
        """Where an optimizer's rates and decays are both the defaults, try the default weight decays on
        the selected rate (one run each) and keep the best of them and the decay-free run: a decay sweep
        at a fraction of a joint grid's cost (issue 24)."""
        spec, added = self.spec, {}
        for key, best in chosen.items():
            decays = spec.optimizers[key[0]].decays_on_selected_rate()
            tried = {r.weight_decay for r in groups[key] if r.lr == best.lr}
            added[key] = [
                run_config(spec, key[0], key[1], spec.sweep_seed, best.lr, wd, best.loss_ratio,
                           spec.short_epochs(), "sweep")
                for wd in decays if wd not in tried
            ]  # fmt: skip
        pending = [r for key, runs in added.items() for r in self._as_trials("sweep", key, runs)]
        if not pending:
            return
        self.execute(pending, "sweep: weight decay on the selected rate")
        for key, runs in added.items():
            if not runs:
                continue
            groups[key].extend(runs)
            lr = chosen[key].lr
            same_rate = [r for r in groups[key] if r.lr == lr]
            best, note = self._select(same_rate, f"{key[0]} at s={key[1]:g}, lr {lr:g}")
            if best is not None:
                chosen[key] = best
                notes[key] = note or notes.get(key)

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
                    self.db.record_selection(
                        spec.name, "sweep", opt, s, lr=points[0][0], weight_decay=points[0][1],
                        grid=[points[0][0]], extensions=0, position="single point", note=None,
                    )  # fmt: skip
                    continue
                groups[(opt, s)] = [
                    run_config(spec, opt, s, spec.sweep_seed, lr, wd, ratio0, short, "sweep")
                    for lr, wd in points
                ]
        if groups:
            for key, best in self.sweep_stage(groups).items():
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
            ratio_runs = [r for o, g in ratio_groups.items() for r in self._as_trials("ratio", (o, 1.0), g)]
            self.execute(ratio_runs, "loss-ratio sweep at full forces")
            for opt, runs in ratio_groups.items():
                best, note = self._select(runs, f"{opt} loss ratio")
                if best is not None:
                    out.best_ratio[opt] = best.loss_ratio
                    if note:
                        self.db.record_selection(
                            spec.name, "ratio", opt, 1.0, run_id=best.run_id, lr=best.lr,
                            weight_decay=best.weight_decay, grid=[best.lr], extensions=0,
                            position="single point", note=note,
                        )  # fmt: skip

        finals = self.final_stage(full)
        self._warn_flagged(finals)
        if spec.refine is not None:
            self.refine_stage(finals)
        if spec.spectrum is not None:
            self.spectrum_stage(finals)
        if spec.fidelity is not None:
            self.fidelity_stage(finals)
        return out

    def final_runs(self, epochs: int) -> list[RunSpec]:
        """Every seed of every cell at its selected point, or at the revised rate of a cell whose
        selected rate failed on most of its seeds (:meth:`revise`)."""
        spec, out = self.spec, self.outcome
        revised = {(r.optimizer, r.force_fraction): r.lr for r in self.db.selections(spec.name, "revision")}
        finals = []
        for opt in spec.optimizers:
            for s in spec.force_fractions:
                if (opt, s) not in out.best_point:
                    self.progress(f"  {opt} at s={s:g}: every sweep run failed; no final runs")
                    continue
                lr, wd = out.best_point[(opt, s)]
                lr = revised.get((opt, s), lr)
                finals += [
                    run_config(spec, opt, s, seed, lr, wd, out.best_ratio[opt], epochs, "final")
                    for seed in spec.seeds
                ]
        return finals

    def final_stage(self, epochs: int) -> list[RunSpec]:
        """Train the final seeds; re-run a seed that diverged once at the next lower rate; re-run a whole
        cell once at the next lower rate when its selected rate failed on most seeds. Returns the final
        runs that the report reads (retries included)."""
        finals = self.final_runs(epochs)
        for attempt in range(2):  # the selected rates, then the cells revised after them
            retries = self.retries(finals)  # divergences an earlier invocation already met
            retired = self.db.retire_finals(self.spec.name, {r.run_id for r in finals + retries})
            if retired:
                self.progress(
                    f"{retired} final run(s) of an earlier selection superseded (kept, not reported)"
                )
            if attempt == 0 and self.spec.step_cost is not None and finals:
                self.step_cost_stage(finals)
            self.execute(finals, "final runs" if attempt == 0 else "final runs of the revised cells")
            retries = self.retries(finals)
            if retries:
                what = "final runs that diverged, re-run once at the next lower rate of the grid"
                self.execute(retries, what)
            finals = finals + retries
            if attempt == 1 or not self.revise(finals):
                break
            finals = self.final_runs(epochs)
        return finals

    def revise(self, finals: list[RunSpec]) -> bool:
        """Record a lower rate for each cell whose selected rate failed on more than half of its seeds
        (diverged, or a validation curve of an unstable rate: :data:`RATE_FAILURES`), once per cell.
        The sweep picks the rate on one seed and a short schedule; a rate on the edge of stability can
        win it by a hair (in the demo 180.4 against 182.2 at 0.3 and 0.1) and then fail on other seeds,
        and which rate wins such a near tie depends on the summation order (threads, CPU). Only the
        validation curves and the loss decide, never the test set. Returns whether any cell of ``finals``
        now has another rate than its runs: revised here, or by another study process on the same
        database (which then trains the revised runs too: without that, a process that found the
        revision recorded ended its final stage and reported the revised runs as not trained)."""
        spec = self.spec
        done = {r.id: r for r in self.db.runs(spec.name, status="done")}
        revised = {(r.optimizer, r.force_fraction): r.lr for r in self.db.selections(spec.name, "revision")}
        grids = {(s.optimizer, s.force_fraction): json.loads(s.grid) for s in self.db.selections(
            spec.name, "sweep")}  # fmt: skip
        cells: dict[tuple[str, float], list[RunSpec]] = {}
        for run in finals:
            if run.retry_of is None:
                cells.setdefault((run.optimizer, run.force_fraction), []).append(run)
        changed = False
        for key, runs in cells.items():
            if key in revised:
                changed |= any(r.lr != revised[key] for r in runs)
                continue
            diverged = sum(self.db.status(r.run_id) == "diverged" for r in runs)
            untrained = sum(
                r.run_id in done and bool(RATE_FAILURES & set(run_flags(done[r.run_id]))) for r in runs
            )
            if 2 * (diverged + untrained) <= len(runs):
                continue
            # the seeds' retries already ran at the lower rate: when most of them diverged there too, a
            # re-run of the cell there would only repeat those divergences
            lower_diverged = sum(self.db.status(r.run_id) == "diverged" for r in finals if r.retry_of
                                 and (r.optimizer, r.force_fraction) == key)  # fmt: skip
            if 2 * lower_diverged > len(runs):
                continue
            lr = runs[0].lr
            lower = next_lower_rate(lr, grids.get(key, [lr]))
            why = " and ".join(
                text for n, text in ((untrained, "did not train"), (diverged, "diverged")) if n
            )
            note = (f"the selected lr {lr:g} failed on {diverged + untrained} of {len(runs)} final seeds "
                    f"({why}); the cell was re-run at lr {lower:g}")  # fmt: skip
            self.progress(f"  {key[0]} at s={key[1]:g}: {note}")
            self.db.record_selection(
                spec.name, "revision", key[0], key[1], run_id=None, lr=lower,
                weight_decay=runs[0].weight_decay, grid=grids.get(key, [lr]), extensions=0,
                position="revised", note=note,
            )  # fmt: skip
            changed = True
        return changed

    def retries(self, finals: list[RunSpec]) -> list[RunSpec]:
        """For each final run that diverged at its selected rate, the same run (seed, schedule, weight
        decay) at the next lower rate of its (extended) grid. A divergence is deterministic on one CPU
        and thread count, so re-running the same rate cannot help; the retry is made once, and a retry
        that diverges too leaves the seed reported as diverged."""
        grids = {(s.optimizer, s.force_fraction): json.loads(s.grid) for s in self.db.selections(
            self.spec.name, "sweep")}  # fmt: skip
        out = []
        for run in finals:
            if self.db.status(run.run_id) != "diverged":
                continue
            lr = next_lower_rate(run.lr, grids.get((run.optimizer, run.force_fraction), [run.lr]))
            retry = run_config(self.spec, run.optimizer, run.force_fraction, run.seed, lr, run.weight_decay,
                               run.loss_ratio, self.spec.final_epochs(), "final")  # fmt: skip
            out.append(dataclasses.replace(retry, retry_of=run.run_id))
        return out

    def spectrum_stage(self, finals: list[RunSpec]) -> None:
        """Hessian spectra (H and the optimizer's P·H) of the first seeds' final runs, per cell."""
        settings = self.spec.spectrum
        done = {r.id for r in self.db.runs(self.spec.name, status="done")}
        seeds = self.spec.seeds[: settings.seeds]
        chosen = [r for r in finals if r.seed in seeds and r.run_id in done]
        stored = {
            (run_id, checkpoint) for run_id, checkpoint, _ in self.db.spectra([r.run_id for r in chosen])
        }
        options = {"k": settings.k, "frames": settings.frames, "density": settings.density,
                   "probes": settings.probes, "steps": settings.steps}  # fmt: skip
        jobs = [
            SpectrumJob(r.run_id, r.config["run_dir"], checkpoint, options, self.db.url)
            for r in chosen
            for checkpoint in settings.checkpoints
            if (r.run_id, checkpoint) not in stored
        ]
        self.progress(f"spectra: {len(chosen) * len(settings.checkpoints)} ({len(jobs)} to compute)")
        by_id = {r.run_id: r for r in chosen}
        for n, result in enumerate(self.executor.map(jobs), start=1):
            run = by_id[result["run_id"]]
            what = f"{run.optimizer} s={run.force_fraction:g} seed {run.seed} [{result.get('checkpoint')}]"
            if result["status"] == "done":
                h, ph = result["summary"]["H"], result["summary"].get("PH")
                text = f"κ_top(H) {h:.3g}" + (f", κ_top(P·H) {ph:.3g}" if ph is not None else "")
                self.progress(f"  [{n:>3}/{len(jobs)}] {what}: {text}")
            else:
                self.progress(f"  [{n:>3}/{len(jobs)}] {what}: FAILED — {result['error']}")

    def fidelity_stage(self, finals: list[RunSpec]) -> None:
        """MD with every finished final model (:class:`~.spec.FidelityStageSpec`), once per model: a result
        stored for the run, protocol and temperature is not computed again."""
        stage = self.spec.fidelity
        done = {r.id for r in self.db.runs(self.spec.name, status="done")}
        chosen = [r for r in finals if r.run_id in done]
        results = self.db.fidelity_results([r.run_id for r in chosen])
        stored = {run_id for run_id, protocol, temperature, _ in results
                  if protocol == stage.protocol and temperature == stage.temperature_K}  # fmt: skip
        settings = asdict(stage.settings())
        jobs = [
            FidelityJob(
                r.run_id,
                r.config["run_dir"],
                stage.protocol,
                stage.reference,
                settings,
                self.db.url,
                observed=stage.observed,
            )  # fmt: skip
            for r in chosen
            if r.run_id not in stored
        ]
        self.progress(
            f"fidelity ({stage.protocol}, {stage.temperature_K:g} K, {stage.seeds} × {stage.steps} MD steps "
            f"per model, reference {stage.reference}): {len(chosen)} models ({len(jobs)} to run)"
        )
        by_id = {r.run_id: r for r in chosen}
        for n, result in enumerate(self.executor.map(jobs), start=1):
            run = by_id[result["run_id"]]
            what = f"{run.optimizer} s={run.force_fraction:g} seed {run.seed}"
            if result["status"] == "done":
                survived, error = 100 * result["survived"], result["structure_error"]
                text = f"MD runs survived {survived:.0f} %, structure error {error:.3f}"
                self.progress(f"  [{n:>3}/{len(jobs)}] {what}: {text}")
            else:
                self.progress(f"  [{n:>3}/{len(jobs)}] {what}: FAILED — {result['error']}")

    def step_cost_stage(self, finals: list[RunSpec]) -> None:
        """A controlled step-time measurement per optimizer (same batch, interleaved), once per study."""
        if self.db.step_costs(self.spec.name):
            return
        if self.spec.executor.python:  # measured in this process, where that model's family is not
            self.progress(f"step cost: not measured (the runs train in {self.spec.executor.python})")
            return
        self.progress("step cost: measuring every optimizer on one batch, interleaved")
        rows = measure_study_step_costs(self.spec, finals, self.progress)
        self.db.record_step_costs(self.spec.name, rows)

    def _warn_flagged(self, finals: list[RunSpec]) -> None:
        done = {r.id: r for r in self.db.runs(self.spec.name, status="done")}
        trained = [r for r in finals if r.run_id in done]
        capped = [r for r in trained if "not_converged" in run_flags(done[r.run_id])]
        if capped:
            self.progress(
                f"NOTE: {len(capped)} of the {len(trained)} trained final runs did not converge (ended at "
                "max_epochs before their stopping rule); the report's table compares budgets there"
            )
        flagged = [(r, training_checks(run_flags(done[r.run_id]))) for r in trained]
        flagged = [(r, f) for r, f in flagged if f]
        if flagged:
            self.progress(f"WARNING: {len(flagged)} of the {len(trained)} trained final runs are flagged:")
            for r, f in flagged:
                self.progress(
                    f"  {r.optimizer} s={r.force_fraction:g} seed {r.seed}: {', '.join(FLAGS[x] for x in f)}"
                )

    def refine_stage(self, finals: list[RunSpec]) -> None:
        """L-BFGS on the final runs of the best ``top`` optimizers per force fraction (by validation)."""

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
        jobs = [RefineJob(r.run_id, r.config["run_dir"], options, self.db.url) for r in todo]
        by_id = {r.run_id: r for r in todo}
        for n, result in enumerate(self.executor.map(jobs), start=1):
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
    """Run (or continue) every stage of ``spec``; finished runs are skipped, unfinished ones resumed. A
    study with ``models``/``train_sizes`` axes runs one sub-study per cell (:mod:`mlipopt.study.axes`)."""
    if axes.has_axes(spec):
        failed, diverged = axes.run_cells(spec, progress, lambda sub: StudyRunner(sub, progress).run())
        return StudyOutcome(failed=failed, diverged=diverged, database_url=spec.database_url)
    return StudyRunner(spec, progress).run()
