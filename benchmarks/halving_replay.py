"""Which early-stopping rule would have chosen the grid's learning rate, and for how much? (issue 26)

A sweep's pruner sees nothing but the validation curves of its trials, and a grid study has recorded
every point's whole curve. This script replays Optuna's own pruners over those curves — the grid's
points as trials in a given order, each reporting its best validation metric so far after every epoch
and stopping where the pruner says — and applies the study's selection (best metric among the completed
runs that trained) and its edge extensions, so a pruner can be judged without training anything:

* with the trial order of a recorded halving study (``--recorded``), the replay must prune exactly the
  runs that study pruned, at the same epochs, where training is deterministic (AdamW's curves are bitwise
  the grid's; SOAP's differ in the last digits, so a close call may go the other way): the check printed
  first;
* over ``--orders`` random trial orders, how often each rule selects each point, and its mean cost.
  Asynchronous halving lets the first run at a rung go on, so the order decides what is pruned: one
  recorded study is one draw of it.

Rules (``--rules``): ``halving:η:first`` (Optuna's SuccessiveHalvingPruner, the study's ``sweep:
{method: halving}``), ``hyperband:η:first`` (HyperbandPruner: brackets that start pruning at later
rungs), ``median:startup:warmup`` (MedianPruner). The final-run error of a selection is shown where one
of the given studies trained finals at it. Usage::

    python benchmarks/halving_replay.py studies/sweep-3bpa-grid \\
        --recorded studies/sweep-3bpa-halving studies/sweep-3bpa-halving-4 --orders 200
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna

from mlipopt.study import ResultsDB
from mlipopt.study.db import run_flags
from mlipopt.study.presets import STUDY_PRESETS
from mlipopt.study.spec import neighbour_rate
from mlipopt.train.diagnostics import training_checks, verdicts

Point = tuple[float, float]  # (lr, weight decay)


@dataclass
class Recorded:
    """One sweep point of the grid study: its whole validation curve and whether it trained."""

    curve: list[float]
    finished: bool  # trained to the end (not diverged)
    untrained: bool  # flagged "did not train": never selected


def open_db(folder: Path) -> tuple[ResultsDB, str]:
    db = ResultsDB(f"sqlite:///{(folder / 'results.db').resolve()}")
    (study,) = db.studies()
    return db, study


def grid_points(folder: Path) -> dict[tuple[str, float], dict[Point, Recorded]]:
    db, study = open_db(folder)
    cells: dict[tuple[str, float], dict[Point, Recorded]] = {}
    for run in db.runs(study, stage="sweep"):
        curve = [e.val_metric for e in db.curve(run.id) if e.val_metric is not None]
        untrained = "did not train" in verdicts(training_checks(run_flags(run)))
        cells.setdefault((run.optimizer, run.force_fraction), {})[(run.lr, run.weight_decay)] = Recorded(
            curve, run.status == "done", untrained
        )
    return cells


def final_errors(folders: list[Path]) -> dict[tuple[str, float, Point], tuple[float, float, str]]:
    """Final-run test F MAE (mean, std over seeds) per point, from every study that trained finals: keyed
    by the point its sweep selected and by the point the finals trained at (a revised cell moved the
    rate: a selection there in a replay would be revised alike)."""
    out = {}
    for folder in folders:
        db, study = open_db(folder)
        finals = [r for r in db.runs(study, stage="final") if r.status == "done" and r.test_f_mae is not None]
        revised = {(s.optimizer, s.force_fraction): s.lr for s in db.selections(study, "revision")}
        for s in db.selections(study, "sweep"):
            key = (s.optimizer, s.force_fraction)
            lr = revised.get(key, s.lr)
            errors = [r.test_f_mae for r in finals if (r.optimizer, r.force_fraction) == key and r.lr == lr]
            if len(errors) > 1:
                note = folder.name + (f", revised to lr {lr:g}" if key in revised else "")
                result = (statistics.mean(errors), statistics.stdev(errors), note)
                out[(*key, (s.lr, s.weight_decay))] = result
                out.setdefault((*key, (lr, s.weight_decay)), result)
    return out


def make_pruner(rule: str, sweep_epochs: int) -> optuna.pruners.BasePruner:
    kind, *numbers = rule.split(":")
    a, b = (int(x) for x in numbers)
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=b, reduction_factor=a, min_early_stopping_rate=0
        )
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=b, max_resource=sweep_epochs, reduction_factor=a)
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=a, n_warmup_steps=b)
    raise SystemExit(
        f"unknown rule {rule!r}: use halving:η:first, hyperband:η:first or median:startup:warmup"
    )


def replay(
    points: dict[Point, Recorded],
    order: list[Point],
    rule: str,
    name: str,
    sweep_epochs: int,
    extensions: int,
    extension_order: Callable[[list[Point]], list[Point]],
) -> tuple[Point | None, int, dict[Point, int]]:
    """The selected point, the epochs trained and each trial's epochs, with the study's edge extensions
    (a best rate on the edge adds the next rate, every weight decay, as trials of the same search)."""
    study = optuna.create_study(study_name=name, direction="minimize", pruner=make_pruner(rule, sweep_epochs))
    distributions = {
        "lr": optuna.distributions.FloatDistribution(1e-12, 1e3, log=True),
        "weight_decay": optuna.distributions.FloatDistribution(0.0, 1e3),
    }
    trained: dict[Point, int] = {}
    completed: dict[Point, float] = {}
    pending, added = list(order), 0
    while True:
        for point in pending:
            record = points[point]
            study.enqueue_trial({"lr": point[0], "weight_decay": point[1]})
            trial = study.ask(distributions)
            best, pruned = float("inf"), False
            for epoch, value in enumerate(record.curve, start=1):
                best = min(best, value)
                trial.report(best, epoch)
                if epoch < len(record.curve) and trial.should_prune():
                    pruned = True
                    break
            trained[point] = epoch
            if pruned:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            elif not record.finished:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, best)
                completed[point] = best
        sound = {p: v for p, v in completed.items() if not points[p].untrained} or completed
        if not sound:
            return None, sum(trained.values()), trained
        chosen = min(sound, key=sound.get)
        rates = sorted({p[0] for p in trained})
        edge = -1 if chosen[0] == rates[0] else 1 if chosen[0] == rates[-1] else 0
        if edge == 0 or added >= extensions:
            return chosen, sum(trained.values()), trained
        new_lr = neighbour_rate(chosen[0], edge)
        pending = extension_order([p for p in points if abs(p[0] / new_lr - 1) < 1e-9])
        if not pending:  # the grid study never trained that rate: the replay cannot go on
            return chosen, sum(trained.values()), trained
        added += 1


def sequential(
    points: dict[Point, Recorded], initial: list[Point], extensions: int
) -> tuple[Point | None, int]:
    """The engine's default sweep, no pruning: every rate at weight decay 0 (extended past an edge, as the
    study does), then the default decays on the selected rate; returns the selection and its epochs.
    Order does not matter here."""
    from mlipopt.optim.registry import DEFAULT_WEIGHT_DECAYS

    def best(chosen: list[Point]) -> Point | None:
        done = [p for p in chosen if points[p].finished]
        sound = [p for p in done if not points[p].untrained] or done
        return min(sound, key=lambda p: min(points[p].curve)) if sound else None

    tried = [p for p in initial if p[1] == 0.0]
    chosen, added = best(tried), 0
    while chosen is not None and added < extensions:
        rates = sorted({p[0] for p in tried})
        edge = -1 if chosen[0] == rates[0] else 1 if chosen[0] == rates[-1] else 0
        new = [p for p in points if p[1] == 0.0 and abs(p[0] / neighbour_rate(chosen[0], edge) - 1) < 1e-9]
        if edge == 0 or not new:
            break
        tried += new
        chosen, added = best(tried), added + 1
    if chosen is not None:
        tried += [p for p in points if p[0] == chosen[0] and p[1] in DEFAULT_WEIGHT_DECAYS and p not in tried]
        chosen = best(tried)
    return chosen, sum(len(points[p].curve) for p in tried)


def recorded_order(
    folder: Path, key: tuple[str, float]
) -> tuple[list[Point], dict[Point, int], dict[Point, list[float]], str]:
    """The trial order of a recorded halving study's cell, each trial's epochs and curve there, and the
    cell's Optuna study name."""
    db, study = open_db(folder)
    name = f"{study}/sweep/{key[0]}/s{key[1]:g}"
    runs = {r.id: r for r in db.runs(study, stage="sweep")}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=name, storage=db.url).get_trials(deepcopy=False)
    order = []
    for t in sorted(trials, key=lambda t: t.number):
        run = runs.get(t.user_attrs.get("run_id"))
        if run is not None:
            order.append((run.lr, run.weight_decay))
    mine = [r for r in runs.values() if (r.optimizer, r.force_fraction) == key]
    epochs = {(r.lr, r.weight_decay): r.epochs or 0 for r in mine}
    curves = {
        (r.lr, r.weight_decay): [e.val_metric for e in db.curve(r.id) if e.val_metric is not None]
        for r in mine
    }
    return order, epochs, curves, name


def preset_rule(folder: Path) -> str | None:
    _, study = open_db(folder)
    sweep = STUDY_PRESETS.get(study, {}).get("sweep")
    if not sweep:
        return None
    return f"halving:{sweep.get('reduction_factor', 3)}:{sweep.get('min_epochs', 2)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", type=Path, help="folder of the grid-swept study (every curve whole)")
    parser.add_argument(
        "--recorded", type=Path, nargs="*", default=[], help="halving studies to check against"
    )
    parser.add_argument("--rules", default="halving:3:2,halving:3:4,halving:2:2,hyperband:3:2,median:4:4")
    parser.add_argument("--orders", type=int, default=200, help="random trial orders per rule and cell")
    parser.add_argument("--extensions", type=int, default=2, help="the study's sweep_extensions")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cells = grid_points(args.grid)
    db, grid_study = open_db(args.grid)
    sweep_epochs = STUDY_PRESETS[grid_study].get("sweep_epochs", 20)
    grid_selection = {(s.optimizer, s.force_fraction): s for s in db.selections(grid_study, "sweep")}
    finals = final_errors([args.grid, *args.recorded])
    # the grid before its extensions: the points at the rates of each optimizer's default grid
    from mlipopt.study import load_study
    from mlipopt.study.presets import preset

    optimizers = load_study(preset(grid_study)).optimizers
    first_grid = {}
    for key, points in cells.items():
        rates = optimizers[key[0]].learning_rates(key[0])
        first_grid[key] = sorted(p for p in points if any(abs(p[0] / r - 1) < 1e-9 for r in rates))

    def initial(key: tuple[str, float]) -> list[Point]:
        return list(first_grid[key])

    print("## Replay of the recorded halving studies (same trial order, same rule)\n")
    print("| study | optimizer | s | rule | trials | curves bitwise the grid's | same epochs "
          "| replay selects | study selected | epochs replay / study |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for folder in args.recorded:
        rule = preset_rule(folder)
        rdb, rstudy = open_db(folder)
        chosen = {
            (s.optimizer, s.force_fraction): (s.lr, s.weight_decay) for s in rdb.selections(rstudy, "sweep")
        }
        for key in sorted(cells):
            order, epochs, curves, name = recorded_order(folder, key)
            identical = sum(c == cells[key][p].curve[: len(c)] for p, c in curves.items())
            start = set(first_grid[key])
            first = [p for p in order if p in start]
            rest = [p for p in order if p not in set(first)]
            selected, cost, trained = replay(
                cells[key], first, rule, name, sweep_epochs, args.extensions,
                lambda new, rest=rest: [p for p in rest if p in new],
            )  # fmt: skip
            same = sum(trained.get(p) == e for p, e in epochs.items())
            n = len(epochs)
            print(f"| {folder.name} | {key[0]} | {key[1]:g} | {rule} | {n} | {identical}/{n} | {same}/{n} | "
                  f"{_point(selected)} | {_point(chosen.get(key))} | "
                  f"{cost} / {sum(epochs.values())} |")  # fmt: skip
    print(f"\n## Rules over {args.orders} random trial orders (grid: every point, {sweep_epochs} epochs)\n")
    print("| optimizer | s | rule | mean sweep epochs (share of grid) | selections (share of orders) "
          "| grid's selection chosen | grid's rate chosen (any decay) "
          "| final test F MAE of the most chosen |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for key in sorted(cells):
        grid_choice = (
            (grid_selection[key].lr, grid_selection[key].weight_decay) if key in grid_selection else None
        )
        grid_cost = sum(len(r.curve) for r in cells[key].values())
        for rule in args.rules.split(","):
            rng = random.Random(0)

            def shuffled(new: list[Point], rng: random.Random = rng) -> list[Point]:
                return rng.sample(new, len(new))

            picks, costs = Counter(), []
            for k in range(args.orders):
                order = initial(key)
                rng.shuffle(order)
                name = f"replay/{key[0]}/s{key[1]:g}/{k}"
                selected, cost, _ = replay(
                    cells[key], order, rule, name, sweep_epochs, args.extensions, shuffled
                )
                picks[selected] += 1
                costs.append(cost)
            top = ", ".join(f"{_point(p)} {100 * n / args.orders:.0f} %" for p, n in picks.most_common(3))
            best = picks.most_common(1)[0][0]
            rate = _final_rate(finals, key, grid_choice)
            same_rate = sum(
                n for p, n in picks.items() if p is not None and _final_rate(finals, key, p) == rate
            )
            error = finals.get((*key, best))
            error_text = f"{error[0]:.1f} ± {error[1]:.1f} ({error[2]})" if error else "no finals trained"
            print(f"| {key[0]} | {key[1]:g} | {rule} | {statistics.mean(costs):.0f} "
                  f"({100 * statistics.mean(costs) / grid_cost:.0f} %) | {top} | "
                  f"{100 * picks[grid_choice] / args.orders:.0f} % | {100 * same_rate / args.orders:.0f} % | "
                  f"{error_text} |")  # fmt: skip
    print(
        "\n## The engine's default sweep without pruning: rates at weight decay 0, then decays on the best\n"
    )
    print("| optimizer | s | sweep epochs (share of grid) | selects | grid's rate | final test F MAE |")
    print("|---|---|---|---|---|---|")
    for key in sorted(cells):
        grid_choice = (
            (grid_selection[key].lr, grid_selection[key].weight_decay) if key in grid_selection else None
        )
        grid_cost = sum(len(r.curve) for r in cells[key].values())
        selected, cost = sequential(cells[key], initial(key), args.extensions)
        same = _final_rate(finals, key, selected) == _final_rate(finals, key, grid_choice)
        error = finals.get((*key, selected))
        error_text = f"{error[0]:.1f} ± {error[1]:.1f} ({error[2]})" if error else "no finals trained"
        print(f"| {key[0]} | {key[1]:g} | {cost} ({100 * cost / grid_cost:.0f} %) | {_point(selected)} | "
              f"{'yes' if same else 'no'} | {error_text} |")  # fmt: skip
    known = [
        f"{k[0]} s={k[1]:g} {_point(k[2])}: {v[0]:.1f} ± {v[1]:.1f} ({v[2]})"
        for k, v in sorted(finals.items())
    ]
    print("\nfinal runs known:", "; ".join(known))


def _final_rate(finals: dict, key: tuple[str, float], point: Point | None) -> float | None:
    """The rate a selection's final runs train at: a selection the grid study revised (its finals
    diverged) trains at the revised rate, as a replay's selection of that point would."""
    if point is None:
        return None
    known = finals.get((*key, point))
    if known and "revised to lr " in known[2]:
        return float(known[2].rsplit("revised to lr ", 1)[1])
    return point[0]


def _point(point: Point | None) -> str:
    return "—" if point is None else f"lr {point[0]:g}, wd {point[1]:g}"


if __name__ == "__main__":
    main()
