"""Successive-halving sweeps (``sweep: {method: halving}``) on Optuna's ``SuccessiveHalvingPruner``.

Optuna's pruner is ASHA (Li et al., "A System for Massively Parallel Hyperparameter Tuning", MLSys 2020):
a run reports its validation metric after every epoch; at the rungs ``min_epochs × η^k`` it goes on only
if its value is among the best ``1/η`` of the values that runs reported at that rung so far, and stops
(*pruned*) otherwise. Chosen over Ray Tune's ASHA because it needs no Ray and keeps its trials in an
SQLAlchemy database — the study's own, so a resumed or a second study process sees the same trials, on
SQLite and PostgreSQL alike — and because its pruner is called from inside mlipopt's own epoch loop,
so a trial stays a normal run of the study (its curve, checks, budget and checkpoint in the results
database and run folder). Grid points are enqueued as fixed trials: Optuna decides only when to stop.

The asynchronous rule depends on the order in which runs reach a rung: the first run at a rung always
goes on. With one worker the order, and so the pruned set, is the same on every re-run; with several it
can differ (which runs finish first varies).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: The value a trial reports: the best validation metric so far (10 × E-MAE + F-MAE, what the study
#: selects on), so a noisy epoch does not prune a run whose best is among the leaders.
REPORTED = "best validation metric so far"


def _storage(url: str) -> Any:
    """Optuna's storage in the study database. Study processes starting at once all create Optuna's
    tables on first use and all but one fail on the unique schema-version row: those retry, and find
    the tables made."""
    import time

    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(20):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except (IntegrityError, OperationalError):
            time.sleep(0.1 * (attempt + 1))
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def _pruner(reduction_factor: int, min_epochs: int) -> Any:
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=min_epochs, reduction_factor=reduction_factor, min_early_stopping_rate=0
    )


def _distributions(params: dict[str, float]) -> dict[str, Any]:
    """Wide fixed ranges: enqueued grid values (extensions beyond the grid included) always fit."""
    from optuna.distributions import FloatDistribution

    ranges = {"lr": (1e-12, 1e3, True), "weight_decay": (0.0, 1e3, False)}
    ranges |= {"energy_weight": (0.0, 1e6, False), "force_weight": (0.0, 1e6, False)}
    return {k: FloatDistribution(*ranges[k][:2], log=ranges[k][2]) for k in params}


@dataclass(frozen=True)
class TrialRef:
    """Where a run reports: an Optuna study in the results database, and its trial there."""

    storage: str
    study: str
    trial: int
    reduction_factor: int
    min_epochs: int


def register_trials(
    url: str, name: str, runs: list[tuple[str, dict[str, float]]], reduction_factor: int, min_epochs: int
) -> dict[str, TrialRef]:
    """One Optuna trial per run (``(run_id, params)``) in the Optuna study ``name``, created once: a
    resumed study finds its trials by run id. Returns run id → trial."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name,
        storage=_storage(url),
        direction="minimize",
        pruner=_pruner(reduction_factor, min_epochs),
        load_if_exists=True,
    )

    with registration_lock(url):  # study processes starting at once create each trial once
        known: dict[str, int] = {}
        for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
            known.setdefault(trial.user_attrs.get("run_id"), trial.number)
        for run_id, params in runs:
            if run_id not in known:
                study.enqueue_trial(params, user_attrs={"run_id": run_id})
                known[run_id] = study.ask(_distributions(params)).number
    return {run_id: TrialRef(url, name, known[run_id], reduction_factor, min_epochs) for run_id, _ in runs}


@contextlib.contextmanager
def registration_lock(url: str) -> Iterator[None]:
    """One study process at a time registers trials: a lock file beside an SQLite database, a PostgreSQL
    advisory lock (held by one connection for the block) otherwise."""
    if url.startswith("sqlite:///"):
        from .._filelock import exclusive

        with exclusive(url.removeprefix("sqlite:///") + ".optuna.lock"):
            yield
        return
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    key = 0x6D6C6970  # "mlip": one lock for every study of the database; registration is brief
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    finally:
        engine.dispose()


class HalvingTrial:
    """A run's side of the search: :meth:`prune` after every epoch (the trainer's ``prune`` hook),
    :meth:`finish` once the run ended."""

    def __init__(self, ref: TrialRef) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.load_study(
            study_name=ref.study,
            storage=_storage(ref.storage),
            pruner=_pruner(ref.reduction_factor, ref.min_epochs),
        )
        self.number = ref.trial
        trial_id = self.study._storage.get_trial_id_from_study_id_trial_number(
            self.study._study_id, ref.trial
        )
        self.trial = optuna.trial.Trial(self.study, trial_id)
        self.best = float("inf")

    def resume(self, history: list[dict[str, Any]]) -> None:
        """A run resumed from its checkpoint: its best so far is that of the epochs already trained."""
        self.best = min([self.best, *(float(row["val_metric"]) for row in history)])

    def prune(self, row: dict[str, Any]) -> bool:
        self.best = min(self.best, float(row["val_metric"]))
        self.trial.report(self.best, int(row["epoch"]))
        return self.trial.should_prune()

    def finish(self, final: dict[str, Any] | None) -> None:
        """Complete (the run's best validation metric), pruned, or failed (``final`` None: it diverged or
        broke). A trial told already — a run re-recorded — is left as it is."""
        from optuna.trial import TrialState

        if final is None:
            state, value = TrialState.FAIL, None
        elif final.get("stop_reason") == "pruned":
            state, value = TrialState.PRUNED, None
        else:
            state, value = TrialState.COMPLETE, float(final["best_val_metric"])
        if self.study._storage.get_trial(self.trial._trial_id).state.is_finished():
            return
        self.study.tell(self.number, value, state=state)
