"""Command line: mlipopt train, study, report, refine, spectrum, fidelity, demo and structure."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

# Start-up stays light: `mlipopt --help`, a misspelt option or a one-line config error must not wait for
# SQLAlchemy, e3nn or ASE's builders (issue 22). Each command imports what it needs when it runs; the
# parser needs only the names of the presets.
from .study.presets import STUDY_PRESETS


def load_model(source: str, type_names: list[str]) -> Any:
    """A model from a preset name, a nequip checkpoint (``.ckpt``) or a nequip package (``.zip``)."""
    from .models import PRESETS, build_model
    from .suggest import did_you_mean

    if source in PRESETS:
        return build_model(source, type_names=type_names)
    path = Path(source)
    if not path.exists():
        raise SystemExit(
            f"mlipopt: '{source}' is neither a model preset{did_you_mean(source, PRESETS)} "
            f"({', '.join(PRESETS)}) nor a file"
        )
    if path.suffix not in (".ckpt", ".zip"):
        raise SystemExit(f"mlipopt: cannot load a model from '{source}' (expected .ckpt or .zip)")
    from .models.nequip import load_nequip_file  # the nequip family's own loaders (they unpickle)

    return load_nequip_file(path)


def _structure(args: argparse.Namespace) -> int:
    from .structure import describe

    model = load_model(args.model, args.type_names.split(","))
    print(describe(model, tp_blocks=args.tp_blocks))
    return 0


def _study_spec(source: str | None, preset_name: str | None, overrides: list[str]):
    from .study import load_study
    from .study.presets import preset
    from .train.config import read_yaml_mapping

    if source and "=" in source and not Path(source).exists():  # `--preset NAME key=value ...`
        source, overrides = None, [source, *overrides]
    if source and source in STUDY_PRESETS and not Path(source).exists():
        source, preset_name = None, source
    if preset_name:
        raw = preset(preset_name)
        if source:  # a YAML file refines the preset; its models are added to the preset's
            refinement = read_yaml_mapping(Path(source), "study")
            models = refinement.pop("models", None)
            raw.update(refinement)
            if isinstance(models, dict) and isinstance(raw.get("models"), dict):
                raw["models"] = {**raw["models"], **models}  # the same label: the YAML's entry
            elif models is not None:
                raw["models"] = models
            # the YAML's relative paths (a model's `python:`, data files) are taken from its folder
            return load_study(raw, overrides, base_dir=Path(source).resolve().parent)
        return load_study(raw, overrides)
    if not source:
        raise SystemExit("mlipopt study: give a study YAML file or --preset NAME")
    return load_study(source, overrides)


def _run_study_and_report(spec, out: str | None) -> int:
    """Run the study, write its report and print its table and counts. Exit status 0 when every run
    ended in a result (a divergence or a flag is a result); 1 when a run failed with an error, which a
    re-run of the same command retries (the finished runs are kept)."""
    import time

    from .report import make_report
    from .report.accounting import study_account
    from .report.architectures import make_architectures_report
    from .study import ResultsDB, run_study
    from .study.axes import cells, has_axes

    start = time.perf_counter()
    run_study(spec)
    database = str(spec.folder / "results.db") if spec.database is None else spec.database
    if has_axes(spec):
        report = make_architectures_report(database, spec.name, out or spec.folder)
        table = report.read_text().split("## Learning curves")[0]
    else:
        report = make_report(database, out or spec.folder)
        table = (report.parent / "mae_table.md").read_text()
    print(f"\nstudy {spec.name!r} done in {(time.perf_counter() - start) / 60:.1f} min; report: {report}")
    print(table)
    db = ResultsDB(spec.database_url)
    names = [c.spec.name for c in cells(spec)] if has_axes(spec) else [spec.name]
    failed = []
    for name in names:
        account = study_account(db, name)
        if len(names) > 1:
            print(f"{name}:")
        print("\n".join(account.summary()))
        failed += account.failed + account.unfinished
    if failed:
        first = (failed[0].error or "not trained").strip().splitlines()[0][:300]
        print(
            f"{len(failed)} run(s) ended with an error, not a result (first: {failed[0].id}: {first}). "
            "Finished runs are kept: fix the cause (the full error is in the database and the run's "
            "folder), then rerun the same command to train only what is missing.",
            file=sys.stderr,
        )
        return 1
    return 0


def _study(args: argparse.Namespace) -> int:
    return _run_study_and_report(_study_spec(args.study, args.preset, args.overrides), args.out)


def _report(args: argparse.Namespace) -> int:
    from .report import make_report
    from .report.architectures import is_architectures_database, make_architectures_report
    from .study import ResultsDB

    source = Path(args.source)
    database = str(source / "results.db") if source.is_dir() else args.source
    try:
        parent = None
        if args.study is None and Path(database).is_file():
            parent = is_architectures_database(ResultsDB(f"sqlite:///{Path(database).resolve()}"))
        if parent is not None:
            path = make_architectures_report(database, parent, args.out or Path(database).parent)
            print(f"report: {path}")
            return 0
        path = make_report(database, args.out, args.study)
    except (FileNotFoundError, ValueError) as exc:
        print(f"mlipopt report: error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    print((path.parent / "mae_table.md").read_text())
    return 0


def _default_fidelity_dir(run_dirs: list[Path]) -> Path:
    """``<study>/fidelity`` when the runs belong to one study, else ``fidelity``."""
    studies = {
        d.resolve().parent.parent for d in run_dirs if (d.resolve().parent.parent / "results.db").is_file()
    }
    return studies.pop() / "fidelity" if len(studies) == 1 else Path("fidelity")


def _fidelity(args: argparse.Namespace) -> int:
    import dataclasses

    from .fidelity.protocols import FidelitySettings
    from .fidelity.references import evaluate_runs
    from .fidelity.report import write_report
    from .study import ResultsDB

    run_dirs = [Path(d) for d in args.runs]
    missing = [str(d) for d in run_dirs if not (d / "config.yaml").is_file()]
    if missing:
        print(f"mlipopt fidelity: error: not run directories: {', '.join(missing)}", file=sys.stderr)
        return 2
    temperatures = [float(t) for t in str(args.temperature).split(",")]
    settings = FidelitySettings(
        temperature_K=temperatures[0], steps=args.steps, timestep_fs=args.timestep, seeds=args.seeds,
        ensemble=args.ensemble,
    )  # fmt: skip
    out = Path(args.out) if args.out else _default_fidelity_dir(run_dirs)
    results, references = [], []
    for temperature in temperatures:
        settings.temperature_K = temperature
        at_t, reference = evaluate_runs(
            run_dirs, args.protocol, args.reference, settings,
            trajectory_dir=out / "trajectories" / f"{temperature:g}K",
        )  # fmt: skip
        results += at_t
        references.append(reference)
    index = write_report(results, references, settings, args.protocol, out, temperatures)
    if args.database:
        db = ResultsDB(args.database)
        for result, run_dir in zip(results, run_dirs * len(temperatures)):
            db.record_fidelity(run_dir.name, args.protocol, result.temperature_K, dataclasses.asdict(result))
        print(f"{len(results)} result(s) stored in {args.database}")
    print(f"\nreport: {index}")
    print(index.read_text())
    return 0


def _spectrum(args: argparse.Namespace) -> int:
    from .spectrum.analysis import analyse_run, table, write
    from .study import ResultsDB

    results = []
    for run_dir in args.runs:
        for checkpoint in args.checkpoints.split(","):
            results.append(
                analyse_run(
                    run_dir, checkpoint.strip(), k=args.k, frames=args.frames, density=not args.no_density,
                    blocks=args.blocks, bottom=args.bottom, probes=args.probes, steps=args.steps,
                )
            )  # fmt: skip
    out = Path(args.out) if args.out else Path(args.runs[0]) / "spectrum"
    index = write(results, out)
    if args.database:
        db = ResultsDB(args.database)
        for r in results:
            db.record_spectrum(Path(r["run_dir"]).name, r["checkpoint"], r)
    print("\n".join(table(results)))
    print(f"\nreport: {index}")
    return 0


def _refine(args: argparse.Namespace) -> int:
    from .train.refine import refine

    run_dir = Path(args.run_dir)
    if not (run_dir / "best_model.pt").is_file():
        print(f"mlipopt refine: error: {run_dir} holds no trained run (best_model.pt)", file=sys.stderr)
        return 2
    summary = refine(run_dir, args.iterations, args.memory, args.patience, args.criterion)
    print(f"refined model: {run_dir / 'refined_model.pt'} (iteration {summary['best_iteration']}, "
          f"{summary['function_evals']} evaluations, {summary['seconds']:.0f} s)")  # fmt: skip
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .study import load_study
    from .study.presets import preset

    raw = preset("demo")
    raw["study_dir"] = args.out
    print(
        "mlipopt demo: 3BPA labelled by GFN2-xTB (built here, cached), nequip-small, AdamW / Muon / SOAP / "
        "SOAP-Muon at 100 %, 10 % and 0 % force labels, 3 seeds; under 45 minutes on 2 cores"
    )

    return _run_study_and_report(load_study(raw, args.overrides), args.out)


def _train(args: argparse.Namespace) -> int:
    from .train.config import load_config

    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    config = load_config(args.config, overrides)  # a config error is reported before the trainer loads
    from .train.distributed import launched_rank
    from .train.trainer import train

    speak = launched_rank() == 0  # under torchrun/srun rank 0 alone reports
    if speak:
        world = os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or "1"
        ranks = f" on {world} data-parallel processes" if world != "1" else ""
        print(f"mlipopt train: {config.model.preset} with {config.optimizer.name}{ranks} -> {config.run_dir}")
    final = train(config, restart=args.restart)
    if speak:
        print(
            f"final metrics: {Path(config.run_dir) / 'final_metrics.json'} (best epoch {final['best_epoch']})"
        )
    return 0


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown once, and only where there is one (not ``None``, ``False`` or an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "%(default)" in text
            or "(default" in text
            or action.default in (None, False, [], argparse.SUPPRESS)
        ):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The command line: every subcommand and option described (tests/test_cli.py walks it)."""
    from . import __version__

    presets = ", ".join(STUDY_PRESETS)
    parser = argparse.ArgumentParser(
        prog="mlipopt",
        description="The optimizer as a measured design axis of training ML interatomic potentials: train, "
        "study, report, refine, spectrum, fidelity, demo, structure, doctor. `mlipopt COMMAND --help` for "
        "each.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"mlipopt {__version__}",
        help="print the version and exit (`mlipopt doctor` for the whole environment)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, formatter_class=_Formatter, help=help, description=description)

    t = command(
        "train",
        "train (or fine-tune SevenNet-0) from a YAML config",
        "Train from CONFIG (see examples/ and docs/config.md); KEY=VALUE arguments override config keys, "
        "e.g. optimizer.name=soap optimizer.lr=3e-3 data.force_fraction=0.1. A run directory with a "
        "checkpoint of the same config is resumed.",
    )
    t.add_argument("config", help="YAML config file")
    t.add_argument("overrides", nargs="*", default=[], help="KEY=VALUE config overrides (dotted keys)")
    t.add_argument("--run-dir", default=None, help="run directory (default: runs/<config name>)")
    t.add_argument("--restart", action="store_true", help="discard an existing checkpoint in the run dir")
    t.set_defaults(func=_train)

    s = command(
        "structure",
        "show each parameter's optimizer role and matrix blocks",
        "Print which parameters of a model the matrix optimizers treat as matrices (and as which blocks) "
        "and which get Adam.",
    )
    s.add_argument("model", help="a model preset (see mlipopt.models.PRESETS), a nequip .ckpt or .zip")
    s.add_argument(
        "--tp-blocks",
        default="flatten",
        choices=["adam", "flatten", "tensor"],
        help="tensor-product path weights: Adam (Harari et al.), (m1·m2, n) matrices, or 3-mode tensors",
    )
    s.add_argument("--type-names", default="H,C,N,O", help="atom types for presets (comma separated)")
    s.set_defaults(func=_structure)

    st = command(
        "study",
        "run a study (grids × optimizers × force fractions × seeds) and write its report",
        f"Run STUDY.yaml or a preset ({presets}); KEY=VALUE arguments override study keys, e.g. "
        "base.data.train=water.xyz seeds=[7,42]. Re-running continues: finished runs are skipped, "
        "unfinished ones resume from their checkpoints. Exit status 0 when every run ended in a result "
        "(trained or diverged), 1 when a run failed with an error.",
    )
    st.add_argument("study", nargs="?", default=None, help="study YAML file or preset name")
    st.add_argument("overrides", nargs="*", default=[], help="KEY=VALUE study overrides (dotted keys)")
    st.add_argument("--preset", default=None, help=f"a named study: {presets} (a YAML file refines it)")
    st.add_argument("--out", default=None, help="report folder (default: the study folder)")
    st.set_defaults(func=_study)

    r = command(
        "report",
        "tables and figures of a study from its results database",
        "Write (again) a study's report from its results database: the test-error table with seed "
        "statistics, heatmaps, validation curves, time to target, step cost, run checks and selections.",
    )
    r.add_argument("source", help="results database (.db file or SQLAlchemy URL) or a study folder")
    r.add_argument("--out", default=None, help="report folder (default: beside the database)")
    r.add_argument("--study", default=None, help="study name when the database holds several")
    r.set_defaults(func=_report)

    rf = command(
        "refine",
        "L-BFGS refinement of a trained run (full batch, best validation kept)",
        "Continue a finished run's best model with full-batch L-BFGS (Liu et al. appendix B) and keep the "
        "iteration with the best validation value: writes refined_model.pt (calculator.load(run, "
        "weights='refined')), refine_final.json and refine_metrics.csv.",
    )
    rf.add_argument("run_dir", help="a run directory of `mlipopt train` or a study")
    rf.add_argument("--iterations", type=int, default=50, help="L-BFGS iterations at most")
    rf.add_argument("--memory", type=int, default=20, help="L-BFGS history length m")
    rf.add_argument("--patience", type=int, default=10, help="iterations without validation improvement")
    rf.add_argument(
        "--criterion",
        choices=("force_rmse", "metric"),
        default="force_rmse",
        help="validation quantity that picks the kept iteration: force RMSE (Liu et al.) or 10·E-MAE+F-MAE",
    )
    rf.set_defaults(func=_refine)

    sp = command(
        "spectrum",
        "Hessian spectra of the training loss and of each optimizer's preconditioned Hessian",
        "For each run and checkpoint: the top-k eigenvalues, κ of the top-k eigenspace, effective rank and "
        "spectral density of the loss Hessian H (the run's own eq. 11 loss on its first training frames, "
        "float64) and of P^½HP^½ for the run's optimizer state P; also per parameter role and for the "
        "largest matrix parameters. Writes spectrum.md/json/png.",
    )
    sp.add_argument("runs", nargs="+", help="run directories")
    sp.add_argument(
        "--checkpoints",
        default="last",
        help="comma-separated: last, best, refined, epoch:N (kept checkpoints)",
    )
    sp.add_argument("--k", type=int, default=20, help="eigenvalues at the top (κ over the top-k eigenspace)")
    sp.add_argument("--frames", type=int, default=10, help="training frames the loss is evaluated on")
    sp.add_argument("--blocks", type=int, default=3, help="largest matrix parameters analysed on their own")
    sp.add_argument(
        "--bottom", action="store_true", help="also the k smallest (possibly negative) eigenvalues"
    )
    sp.add_argument("--no-density", action="store_true", help="skip the spectral density (fewer Hv products)")
    sp.add_argument(
        "--probes", type=int, default=3, help="random probes of the stochastic Lanczos quadrature"
    )
    sp.add_argument("--steps", type=int, default=30, help="Lanczos steps per probe")
    sp.add_argument("--out", default=None, help="output folder (default: <first run>/spectrum)")
    sp.add_argument("--database", default=None, help="results database URL to store the spectra in")
    sp.set_defaults(func=_spectrum)

    f = command(
        "fidelity",
        "MD stability and structure of trained runs against a reference calculator or trajectory",
        "Run MD with each trained model and with the reference; compare stability (time to failure), "
        "structure (pair-distance distributions, RDFs), and per protocol diffusion, elastic constants "
        "and phonons (docs/fidelity.md).",
    )
    f.add_argument("runs", nargs="+", help="run directories (e.g. mlipopt-demo/runs/*)")
    f.add_argument(
        "--protocol",
        default="molecule",
        choices=["molecule", "liquid", "crystal"],
        help="molecule: MD stability and pair distances (and a geometry optimisation); liquid: RDF, MSD, "
        "diffusion (D(T) and E_a with several temperatures); crystal: elastic constants and phonons",
    )
    f.add_argument("--reference", default="xtb", help="xtb, emt, or a reference trajectory file")
    f.add_argument(
        "--temperature", default="600", help="K; several, comma-separated, give D(T) and E_a (liquid)"
    )
    f.add_argument("--steps", type=int, default=2000, help="MD steps per trajectory")
    f.add_argument("--timestep", type=float, default=0.5, help="MD time step in fs")
    f.add_argument("--seeds", type=int, default=2, help="trajectories per model and temperature")
    f.add_argument(
        "--ensemble",
        default="langevin",
        choices=["langevin", "nose_hoover", "nve"],
        help="thermostat of the MD: Langevin (stochastic), Nosé-Hoover chain (deterministic), or none (NVE)",
    )
    f.add_argument("--out", default=None, help="report folder (default: <study>/fidelity or ./fidelity)")
    f.add_argument(
        "--database", default=None, help="results database (file or SQLAlchemy URL) to store results in"
    )
    f.set_defaults(func=_fidelity)

    d = command(
        "demo",
        "the main job on the built-in dataset: four optimizers × three force fractions × three seeds",
        "Builds a 3BPA dataset with GFN2-xTB (no download), runs the demo study and writes the report to "
        "--out. Scale it with overrides, e.g. seeds=[7,42,123,2026] base.training.max_epochs=100 "
        "dataset.frames_per_temperature=200 base.model.preset=nequip-seed001.",
    )
    d.add_argument("overrides", nargs="*", default=[], help="KEY=VALUE overrides of the demo study")
    d.add_argument("--out", default="mlipopt-demo", help="study and report folder")
    d.set_defaults(func=_demo)

    doc = command(
        "doctor",
        "versions, installed extras, threads, CPU and available model families (for bug reports)",
        "Print what a bug report needs: mlipopt, Python and torch versions, which extras and model "
        "families this environment has, torch threads and the CPU model (bit-for-bit re-runs hold on the "
        "same CPU model and thread count only).",
    )
    doc.set_defaults(func=_doctor)
    return parser


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import report

    print(report())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE overrides may follow options: `mlipopt train CFG --run-dir X key=val`
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"mlipopt {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        message = user_error(exc)
        if message is None or os.environ.get("MLIPOPT_DEBUG"):
            raise
        print(f"mlipopt {args.command}: error: {message}", file=sys.stderr)
        return 2


#: The errors of bad input or a missing package, by module: a one-line message, no traceback. Looked up
#: in sys.modules, since an exception of a class implies its module is loaded (no import at error time).
USER_ERRORS = {
    "mlipopt.train.config": "ConfigError",
    "mlipopt.data.io": "DataError",
    "mlipopt.train.checkpoint": "CheckpointError",
    "mlipopt.train.trainer": "TrainingDiverged",
    "mlipopt.optim._base": "NonFiniteGradientError",
    "mlipopt.models.family": "FamilyUnavailable",
}


def user_error(exc: BaseException) -> str | None:
    """A one-line message for errors caused by input or environment (no traceback); None for bugs."""
    import errno

    known = tuple(getattr(sys.modules[m], name) for m, name in USER_ERRORS.items() if m in sys.modules)
    if known and isinstance(exc, known):
        return str(exc)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        if exc.errno == errno.ENOSPC:
            return f"no space left on the device{where}; free space or choose another folder (run_dir/--out)"
        if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            return f"permission denied{where}; choose a folder you can write to (run_dir/--out)"
        if isinstance(exc, FileNotFoundError):
            return str(exc) if not exc.filename else f"no such file or folder: {exc.filename}"
        return f"{exc.strerror or exc}{where}"
    return None


if __name__ == "__main__":
    sys.exit(main())
