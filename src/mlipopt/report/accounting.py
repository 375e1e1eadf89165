"""One source of counts for a study: how many runs each stage registered, which seeds of which final cell
ended how, what failed and what is unfinished. The command line's closing summary, the report's
``index.md`` and the table's seed column all read these numbers, so they cannot disagree.

A final seed ends in one of five ways:

* ``done`` — trained at the selected rate;
* ``retried`` — diverged at the selected rate and trained at the next lower rate of its grid (the
  study re-runs a divergence once, :meth:`mlipopt.study.runner.StudyRunner.retries`);
* ``diverged`` — diverged at the selected rate and at the lower one: a result, reported as such;
* ``failed`` — an error that is not a divergence (a fault of the environment or of mlipopt);
* ``unfinished`` — not trained yet (an interrupted study).

A cell whose selected rate failed on most of its seeds is re-run once, every seed, at the next lower
rate (:meth:`mlipopt.study.runner.StudyRunner.revise`); its runs at the selected rate are superseded,
and the account names the revision beside the cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..study.db import ResultsDB, Run, Selection, run_status


@dataclass
class SeedOutcome:
    """What became of one seed of a final cell (optimizer, force fraction)."""

    optimizer: str
    force_fraction: float
    seed: int
    outcome: str  # done, retried, diverged, failed, unfinished
    selected_lr: float
    lr: float | None  # the rate of the run in the table (None: no run in the table)
    run: Run  # the run at the selected rate
    reported: Run | None  # the run in the table (the retry for a retried seed)
    error: str | None = None


def _first_line(error: str | None) -> str:
    return (error or "").strip().splitlines()[0] if error else ""


@dataclass
class StudyAccount:
    study: str
    stages: dict[str, int] = field(default_factory=dict)  # registered runs per stage, retries included
    seeds: list[SeedOutcome] = field(default_factory=list)
    sweep_diverged: int = 0  # sweep and ratio runs whose loss became non-finite (left out of selection)
    failed: list[Run] = field(default_factory=list)  # faults of any stage (re-run by the next invocation)
    unfinished: list[Run] = field(default_factory=list)
    flagged: list[Run] = field(default_factory=list)  # reported final runs with a training-check flag
    capped: list[Run] = field(default_factory=list)  # reported final runs that ended at their epoch cap
    revisions: list[Selection] = field(default_factory=list)  # cells re-run at a lower rate

    @property
    def reported(self) -> list[Run]:
        """The final runs in the table: one per seed that trained (at its selected or its lower rate)."""
        return [s.reported for s in self.seeds if s.reported is not None]

    @property
    def complete(self) -> bool:
        """Every run ended in a result (trained or diverged): nothing failed, nothing is left to run."""
        return not self.failed and not self.unfinished

    def cell(self, optimizer: str, force_fraction: float) -> list[SeedOutcome]:
        return [s for s in self.seeds if (s.optimizer, s.force_fraction) == (optimizer, force_fraction)]

    def cells(self) -> list[tuple[str, float]]:
        return list(dict.fromkeys((s.optimizer, s.force_fraction) for s in self.seeds))

    def cell_note(self, optimizer: str, force_fraction: float) -> str:
        """'' when every seed trained at the selected rate; else e.g. 'diverged 1/3, lower lr 1/3'."""
        seeds = self.cell(optimizer, force_fraction)
        parts = [f"re-run at lr {r.lr:g}" for r in self.revisions
                 if (r.optimizer, r.force_fraction) == (optimizer, force_fraction)]  # fmt: skip
        for outcome, label in (("retried", "lower lr"), ("diverged", "diverged"), ("failed", "failed"),
                               ("unfinished", "unfinished")):  # fmt: skip
            n = sum(s.outcome == outcome for s in seeds)
            if n:
                parts.append(f"{label} {n}/{len(seeds)}")
        return ", ".join(parts)

    def summary(self) -> list[str]:
        """The counts in sentences (Markdown list items), as the command line and index.md print them."""
        stages = ", ".join(f"{n} {stage}" for stage, n in self.stages.items() if n)
        n_seeds, n_reported = len(self.seeds), len(self.reported)
        lines = [f"- Runs: {stages or 'none'}."]
        flagged = f"; {len(self.flagged)} of these {n_reported} flagged by the checks" if self.flagged else ""
        capped = f"; {len(self.capped)} did not converge (ended at the epoch cap)" if self.capped else ""
        lines.append(f"- Final runs: {n_reported} of {n_seeds} seeds in the table{flagged}{capped}.")
        for r in self.revisions:
            lines.append(f"- {r.optimizer} s = {100 * r.force_fraction:g} %: {r.note}, which is the rate in "
                         "the table; the runs at the selected rate are kept, not reported.")  # fmt: skip
        for s in self.seeds:
            if s.outcome == "done":
                continue
            what = f"{s.optimizer} s = {100 * s.force_fraction:g} % seed {s.seed}"
            where = _first_line(s.run.error).split("; ")[0].removeprefix("TrainingDiverged: ")
            if s.outcome == "retried":
                lines.append(f"  - {what}: diverged at the selected lr {s.selected_lr:g} ({where}); "
                             f"re-run at lr {s.lr:g}, which is the run in the table.")  # fmt: skip
            elif s.outcome == "diverged":
                lines.append(f"  - {what}: diverged at lr {s.selected_lr:g} ({where}) and at the next "
                             "lower rate; not in the table (its cell counts it as diverged).")  # fmt: skip
            elif s.outcome == "failed":
                lines.append(f"  - {what}: failed ({_first_line(s.error)[:200]}).")
            else:
                lines.append(f"  - {what}: not trained yet.")
        if self.sweep_diverged:
            lines.append(
                f"- {self.sweep_diverged} sweep run(s) diverged: those learning rates are too high for this "
                "model and data, and the selection left them out (the sweep landscape marks them ×)."
            )
        others = [r for r in self.failed if r.stage != "final"]
        if others:
            lines.append(f"- {len(others)} sweep run(s) failed with an error; the first: "
                         f"{_first_line(others[0].error)[:200]}.")  # fmt: skip
        return lines


def study_account(db: ResultsDB, study: str) -> StudyAccount:
    """Count every run of ``study`` (superseded finals of an earlier selection excluded)."""
    from ..train.diagnostics import training_checks
    from .trust import flags_of

    runs = db.runs(study)
    account = StudyAccount(study)
    for stage in ("sweep", "ratio", "final"):
        account.stages[stage] = sum(r.stage == stage for r in runs)
    finals = [r for r in runs if r.stage == "final"]
    # a retry of a run that is no longer final (its cell was revised to the retry's rate) is primary
    ids = {r.id for r in finals}
    retries = {r.retry_of: r for r in finals if r.retry_of in ids}
    for run in sorted((r for r in finals if r.retry_of not in ids), key=_cell_order):
        status, retry = run_status(run), retries.get(run.id)
        outcome, reported, error = "unfinished", None, None
        if status == "done":
            outcome, reported = "done", run
        elif status == "failed":
            outcome, error = "failed", run.error
        elif status == "diverged" and retry is not None:
            retry_status = run_status(retry)
            if retry_status == "done":
                outcome, reported = "retried", retry
            elif retry_status == "diverged":
                outcome = "diverged"
            elif retry_status == "failed":
                outcome, error = "failed", retry.error
        account.seeds.append(
            SeedOutcome(run.optimizer, run.force_fraction, run.seed, outcome, run.lr,
                        None if reported is None else reported.lr, run, reported, error)
        )  # fmt: skip
    for run in runs:
        if run.stage == "superseded":
            continue
        status = run_status(run)
        if status == "failed":
            account.failed.append(run)
        elif status in ("pending", "running"):
            account.unfinished.append(run)
        elif status == "diverged" and run.stage != "final":
            account.sweep_diverged += 1
    # a diverged final with no retry yet is unfinished too: the next invocation runs its retry
    account.unfinished += [s.run for s in account.seeds if s.outcome == "unfinished" and run_status(s.run)
                           == "diverged"]  # fmt: skip
    account.revisions = db.selections(study, "revision")
    flags = {r.id: flags_of(db, r) for r in account.reported}
    account.flagged = [r for r in account.reported if training_checks(flags[r.id])]
    account.capped = [r for r in account.reported if "not_converged" in flags[r.id]]
    return account


def _cell_order(run: Run) -> tuple:
    return (-run.force_fraction, run.optimizer, run.seed)
