"""Study definition (YAML) and its expansion into runs, following Harari et al., appendix B.

A study is: one base training config (data, model, schedule) × optimizers, each with its own
hyperparameter grid × force fractions × seeds. Stages:

1. ``sweep``: learning rate × weight decay per (optimizer, force fraction), one seed, shortened schedule;
2. ``ratio``: λ_E:λ_F per optimizer at full forces with that optimizer's best (lr, wd), same schedule;
3. ``final``: every seed, full schedule, with the selected hyperparameters (the ratio chosen at full
   forces is kept at every force fraction, as in the paper).

A stage whose grid has a single point is not run: its point is selected directly.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..data.xtb import XTBDatasetSpec
from ..fidelity.settings import FidelitySettings
from ..optim.registry import BASELINE, DEFAULT_WEIGHT_DECAYS, optimizer_spec
from ..train.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    check_name,
    from_dict,
    load_config,
    overrides_from_cwd,
    read_yaml_mapping,
    resolve_relative_paths,
)
from .presets import PAPER_SEEDS


@dataclass
class OptimizerGrid:
    """Hyperparameter grid of one optimizer. ``lr_order`` p gives {3·10^-(p+1), 10^-p, 3·10^-p}.

    Harari et al., appendix B; ``lr`` lists learning rates explicitly instead; with neither, the
    optimizer's default grid (its registry entry's ``lr_grid``, docs/optimizers.md) is swept.

    ``weight_decay`` lists decays swept jointly with the rates. Left unset, the rates are swept without
    decay; where the rates are the default grid too, the decays
    ``mlipopt.optim.registry.DEFAULT_WEIGHT_DECAYS`` are then tried on the selected rate (issue 24: a
    cheap decay sweep, so that Adam and AdamW differ).
    """

    lr: list[float] | None = None
    lr_order: int | None = None
    # add 5·10^-(p+1) (the paper's NequIP-water grid). Design §5 writes 5·10^-p, but Harari et al. table 4's
    # water learning rates are 10^-2, 5·10^-3 and 3·10^-4, 10^-3: 5·10^-3 only fits p = 2 as 5·10^-(p+1).
    lr_extra: bool = False
    weight_decay: list[float] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    structure: dict[str, Any] = field(default_factory=dict)

    def weight_decays(self) -> list[float]:
        """The decays swept jointly with the learning rates."""
        if self.weight_decay is None:
            return [0.0]
        if not self.weight_decay or any(not wd >= 0 for wd in self.weight_decay):
            raise ConfigError(f"weight_decay: give decays ≥ 0, got {self.weight_decay}")
        return list(self.weight_decay)

    def decays_on_selected_rate(self) -> list[float]:
        """The decays tried on the selected rate after the rate sweep (those it already ran are not run
        again): the defaults where both the rates and the decays are left to them, else none."""
        if self.weight_decay is None and self.lr is None and self.lr_order is None:
            return list(DEFAULT_WEIGHT_DECAYS)
        return []

    def learning_rates(self, name: str) -> list[float]:
        """The grid: ``lr`` as given, else the ``lr_order`` triple, else the optimizer's default grid."""
        if self.lr is not None:
            if not self.lr or any(not lr > 0 for lr in self.lr):
                raise ConfigError(f"optimizers.{name}.lr: give positive learning rates, got {self.lr}")
            return list(self.lr)
        if self.lr_order is None:
            try:
                return list(optimizer_spec(name).lr_grid)
            except ValueError as exc:
                raise ConfigError(f"optimizers.{name}: {exc}") from None
        p = self.lr_order
        rates = (
            [3 * 10.0 ** -(p + 1)]
            + ([5 * 10.0 ** -(p + 1)] if self.lr_extra else [])
            + [10.0**-p, 3 * 10.0**-p]
        )
        return [float(f"{r:.3g}") for r in rates]


@dataclass
class ExecutorSpec:
    kind: str = "local"  # local or ray
    workers: int = 0  # local: parallel runs; 0 = as many as the machine holds at threads_per_run
    threads_per_run: int = 1  # torch threads of each process
    ranks_per_run: int = 1  # data-parallel processes per training run (torchrun, or `launcher`)
    launcher: str | None = None  # command prefix starting a run's ranks, e.g. "srun python"
    python: str | None = None  # train each run in a subprocess of this interpreter (another environment)
    num_gpus: float = 0.0  # ray: GPUs per run
    address: str | None = None  # ray: cluster address (None: start or join a local instance)
    max_retries: int = 3  # ray: times a run is re-run after its worker or node died (it resumes)


@dataclass
class RefineSpec:
    """Stage "then refine" (Liu et al.): L-BFGS on the final runs of the ``top`` optimizers per force
    fraction, ranked by their mean validation metric over seeds (the test set is not looked at)."""

    top: int = 3
    iterations: int = 50
    memory: int = 20
    patience: int = 10
    criterion: str = "force_rmse"  # or "metric" (10 × E-MAE + F-MAE; keeps the energy in check)


@dataclass
class StepCostSpec:
    """The controlled step-time measurement of a study (mlipopt.study.step_cost)."""

    repeats: int = 30  # timed steps per optimizer, rounded up to whole refresh periods (3 at SOAP's 10)
    warmup: int = 3


@dataclass
class SpectrumSpec:
    """Stage "spectrum" (mlipopt spectrum): Hessian spectra of the final runs of the first ``seeds``
    seeds of every (optimizer, force fraction), stored in the results database."""

    checkpoints: list[str] = field(default_factory=lambda: ["last"])
    k: int = 20
    frames: int = 10
    seeds: int = 1
    density: bool = True
    probes: int = 3  # stochastic Lanczos quadrature: random probes × Lanczos steps
    steps: int = 30


@dataclass
class FidelityStageSpec(FidelitySettings):
    """Stage "fidelity" (mlipopt fidelity): MD with every final model under ``protocol``, stability,
    structure and (liquids) diffusion against ``reference`` — a recorded trajectory file (e.g. one of
    :mod:`mlipopt.data.reference_md`) or a calculator name (``xtb``, ``emt``), which then runs its own MD
    once per model, so give a file for an expensive reference. The MD settings are
    :class:`~mlipopt.fidelity.settings.FidelitySettings`' (``seeds`` MD runs per model), at 300 K by
    default; ``observed``: an experimental reference for the report (:mod:`mlipopt.fidelity.experiment`)."""

    protocol: str = "liquid"
    reference: str = "xtb"
    temperature_K: float = 300.0
    observed: str | None = None

    def settings(self) -> FidelitySettings:
        """The MD settings alone, as the fidelity job receives them."""
        return FidelitySettings(**{f.name: getattr(self, f.name) for f in fields(FidelitySettings)})


@dataclass
class ModelAxisEntry:
    """One model of the ``models`` axis: its ``model`` config section, and what differs for it — base config
    overrides (e.g. fewer epochs for a large pretrained model), optimizer grids, training-set sizes."""

    model: dict[str, Any] = field(default_factory=dict)
    base: dict[str, Any] = field(default_factory=dict)
    optimizers: dict[str, OptimizerGrid] | None = None
    train_sizes: list[int] | None = None
    # the Python whose mlipopt trains and measures this model, when its family lives in another
    # environment (MACE pins e3nn 0.4.4, nequip needs 0.6): e.g. .venv-mace/bin/python
    python: str | None = None


@dataclass
class PublishedFigure:
    """One literature test error on the study's data, to set the study's baseline beside (issue 24)."""

    source: str  # the citation: authors, year, table
    model: str
    train_size: int  # training frames N
    f_mae: float  # meV/Å
    e_mae: float | None = None  # meV/atom (a per-molecule figure divided by the atom count)
    note: str = ""


@dataclass
class PublishedSpec:
    """Published figures and how this study's protocol differs from theirs; the architectures report
    sets ``baseline``'s errors at full force labels beside them, measured at the same N where the study
    has it and extrapolated along its fitted learning curve (err = a·N^b) where it does not."""

    figures: list[PublishedFigure] = field(default_factory=list)
    baseline: str = BASELINE
    differences: list[str] = field(default_factory=list)


@dataclass
class ArchitectureChecksSpec:
    """What an architectures study measures besides errors (models/cost.py, fidelity/symmetry.py)."""

    cost_batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    cost_repeats: int = 5  # timed samples per block
    cost_warmup: int = 2
    cost_blocks: int = 6  # interleaved rounds over the models; their medians' range is the quoted spread
    cost_min_sample_s: float = 0.01  # each sample averages enough calls to last this long
    equivariance_frames: int = 3  # test frames of each final run (first seed, largest N)
    equivariance_rotations: int = 8
    symmetrize_order: int = 3  # SO(3) quadrature order of the symmetrized non-equivariant models
    symmetrized_test_frames: int = 50  # test frames scored raw and symmetrized (non-equivariant models)
    geometry: bool = True  # molecules: relax the first test frame turned two ways, and its vibrations
    geometry_steps: int = 500  # BFGS steps per relaxation (to 1e-3 eV/Å)
    nve_steps: int = 400  # velocity-Verlet steps of NVE MD from the first test frame (0: none)
    nve_timestep_fs: float = 0.5


@dataclass(frozen=True)
class CellKey:
    """Where a sub-study sits on an architectures study's axes (:mod:`mlipopt.study.axes`): stored with
    every run as columns, so the report selects runs by them and never reads a study name."""

    parent: str  # the architectures study
    model: str  # label of the models axis ("base" without one)
    train_size: int | None = None  # training frames (None: the base split)


@dataclass
class SweepSpec:
    """How the sweep stages search their grids. ``grid``: every point trained for ``sweep_epochs``.
    ``halving``: asynchronous successive halving (ASHA; Li et al. 2020) with Optuna's
    ``SuccessiveHalvingPruner``: every point starts, and at ``min_epochs`` × ``reduction_factor``^k epochs
    a run continues only if its validation metric is among the best 1/``reduction_factor`` of the runs
    that reached that epoch; the others stop there, marked ``pruned``. The trials live in the study's
    own database (Optuna's tables beside mlipopt's), so ``optuna-dashboard <database>`` shows them too."""

    method: str = "grid"  # grid or halving
    reduction_factor: int = 3
    min_epochs: int | None = None  # first rung; default sweep_epochs / reduction_factor², at least 1
    ratios: bool = True  # halving: the loss-ratio sweep too (else it stays a grid)

    def first_rung(self, sweep_epochs: int) -> int:
        return self.min_epochs or max(1, sweep_epochs // self.reduction_factor**2)


@dataclass
class StudySpec:
    name: str = "study"
    base: dict[str, Any] = field(default_factory=dict)  # a `mlipopt train` config (without optimizer)
    dataset: XTBDatasetSpec | None = None  # built-in xTB dataset instead of base.data.train
    optimizers: dict[str, OptimizerGrid] = field(default_factory=dict)
    force_fractions: list[float] = field(default_factory=lambda: [1.0, 0.1, 0.0])
    seeds: list[int] = field(default_factory=lambda: list(PAPER_SEEDS))
    loss_ratios: list[list[float]] = field(default_factory=lambda: [[1.0, 1.0], [1.0, 10.0], [1.0, 100.0]])
    sweep_seed: int = 7
    sweep_epochs: int | None = None  # default: a fifth of the final schedule
    # a best learning rate on the edge of its grid adds the next rate beyond it, up to this many times
    sweep_extensions: int = 2
    sweep: SweepSpec = field(default_factory=SweepSpec)
    study_dir: str | None = None  # default: studies/<name>
    database: str | None = None  # SQLAlchemy URL; default sqlite:///<study_dir>/results.db
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)
    refine: RefineSpec | None = None
    step_cost: StepCostSpec | None = field(default_factory=StepCostSpec)  # null: not measured
    spectrum: SpectrumSpec | None = None
    fidelity: FidelityStageSpec | None = None
    # architectures and training-set sizes as axes (mlipopt.study.axes): one sub-study per (model, N)
    models: dict[str, ModelAxisEntry] = field(default_factory=dict)
    train_sizes: list[int] = field(default_factory=list)
    architecture_checks: ArchitectureChecksSpec = field(default_factory=ArchitectureChecksSpec)
    published: PublishedSpec | None = None  # literature figures on the same data (architectures report)
    cell: CellKey | None = None  # set by mlipopt.study.axes on each sub-study of an architectures study

    @property
    def folder(self) -> Path:
        return Path(self.study_dir or Path("studies") / self.name)

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{(self.folder / 'results.db').resolve()}"

    def final_epochs(self) -> int:
        return int(self.base.get("training", {}).get("max_epochs", 100))

    def short_epochs(self) -> int:
        return self.sweep_epochs or max(1, self.final_epochs() // 5)


#: Config keys added after run ids were first written: left out of a run's identity while unset.
UNSET_IDENTITY = [("data", "train_subset")]


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study: its key (stage, optimizer, force fraction, seed, the swept settings
    and, in an architectures study, its cell) and its checked config, whose hash is its id."""

    stage: str
    optimizer: str
    force_fraction: float
    seed: int
    lr: float
    weight_decay: float
    loss_ratio: tuple[float, float]
    config: dict[str, Any]
    # a final run re-run at the next lower rate of its grid: the id of the run that diverged at the
    # selected rate (not part of the run's identity, which is its config)
    retry_of: str | None = None
    cell: CellKey | None = None

    @functools.cached_property
    def run_id(self) -> str:
        """Content hash of the config (run_dir and display options excluded) and of the data files'
        contents: same config on the same data, same run — so the ratio sweep's default-ratio point
        reuses the learning-rate sweep's best run, and a finished run on old data is not counted as
        done on new data."""
        identity = copy.deepcopy(self.config)
        identity.pop("run_dir", None)
        identity.get("training", {}).pop("progress", None)
        identity.pop("distributed", None)  # how many processes train it does not change the run
        for section, key in UNSET_IDENTITY:  # keys added later count only when set: old ids stay valid
            if identity.get(section, {}).get(key, "absent") is None:
                identity[section].pop(key)
        identity["data_fingerprint"] = from_dict(RunConfig, self.config).data_fingerprint()
        digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]
        return f"{self.optimizer}-s{self.force_fraction:g}-seed{self.seed}-{digest}"  # once: cached


def load_study(
    source: str | Path | dict[str, Any], overrides: list[str] | None = None, base_dir: Path | None = None
) -> StudySpec:
    """A checked :class:`StudySpec` from YAML. Relative paths (data files, a model's ``python:``) are
    taken from the file's folder; for a mapping, from ``base_dir`` (default: the current directory)."""
    base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
    if isinstance(source, dict):
        raw = copy.deepcopy(source)
    else:
        path = Path(source)
        raw = read_yaml_mapping(path, "study")
        base_dir = path.resolve().parent
        raw.setdefault("name", path.stem)
    raw = apply_overrides(raw, overrides_from_cwd(list(overrides or []), prefix="base."))
    models = raw.get("models")
    if isinstance(models, list):  # shorthand: a list of presets
        raw["models"] = {str(name): {"model": {"preset": name}} for name in models}
    elif isinstance(models, dict):
        raw["models"] = {k: {"model": {"preset": v}} if isinstance(v, str) else v for k, v in models.items()}
    spec = from_dict(StudySpec, raw)
    check_name(spec.name, "study.name")
    for label, entry in spec.models.items():
        check_name(label, "study.models")
        if "preset" not in entry.model and "file" not in entry.model:
            raise ConfigError(f"study.models.{label}: give its model section a preset (or a file)")
        if entry.python is not None:
            entry.python = interpreter(entry.python, base_dir, f"study.models.{label}.python")
    for n in [*spec.train_sizes, *(n for e in spec.models.values() for n in e.train_sizes or [])]:
        if n < 1:
            raise ConfigError(f"study.train_sizes: {n} is not a frame count ≥ 1")
    if not spec.optimizers:
        raise ConfigError("study: list at least one optimizer under `optimizers`")
    for name, grid in spec.optimizers.items():
        grid.learning_rates(name)
    if "optimizer" in spec.base:
        raise ConfigError(
            "study.base: leave out `optimizer`; optimizers and their grids go under `optimizers`"
        )
    for s in spec.force_fractions:
        if not 0 <= s <= 1:
            raise ConfigError(f"study.force_fractions: {s} is not in [0, 1]")
    if spec.refine is not None and spec.refine.criterion not in ("force_rmse", "metric"):
        raise ConfigError(
            f"study.refine.criterion must be force_rmse or metric, got {spec.refine.criterion!r}"
        )
    if spec.sweep_extensions < 0:
        raise ConfigError(f"study.sweep_extensions must be ≥ 0, got {spec.sweep_extensions}")
    check_sweep(spec)
    if spec.fidelity is not None:
        check_fidelity(spec.fidelity, base_dir)
    if spec.executor.kind not in ("local", "ray"):
        raise ConfigError(f"study.executor.kind must be local or ray, got {spec.executor.kind!r}")
    e = spec.executor
    if e.workers < 0 or e.threads_per_run < 1 or e.ranks_per_run < 1 or e.num_gpus < 0:
        raise ConfigError(
            "study.executor: workers must be ≥ 0, threads_per_run and ranks_per_run ≥ 1, num_gpus ≥ 0; got "
            f"{e.workers}, {e.threads_per_run}, {e.ranks_per_run}, {e.num_gpus}"
        )
    if e.python is not None:
        e.python = interpreter(e.python, base_dir, "study.executor.python")
    resolve_relative_paths(spec.base, base_dir)
    data = spec.base.setdefault("data", {})
    if spec.dataset is None and "train" not in data and "generate" not in data:
        raise ConfigError("study: give a dataset (built-in xTB) or base.data.train / base.data.generate")
    return spec


def check_fidelity(stage: FidelityStageSpec, base_dir: Path) -> None:
    """A known protocol and experimental reference, and a reference trajectory file that exists (a
    relative path taken from ``base_dir``; ASE's ``@`` frame selection kept)."""
    from ..fidelity.experiment import OBSERVATIONS
    from ..fidelity.settings import PROTOCOLS, REFERENCE_CALCULATORS

    if stage.protocol not in PROTOCOLS:
        raise ConfigError(
            f"study.fidelity.protocol must be one of {', '.join(PROTOCOLS)}, got {stage.protocol!r}"
        )
    if stage.observed is not None and stage.observed not in OBSERVATIONS:
        raise ConfigError(
            f"study.fidelity.observed: no experimental reference {stage.observed!r}; "
            f"known: {', '.join(OBSERVATIONS)}"
        )
    if stage.reference in REFERENCE_CALCULATORS:
        return
    path, at, index = stage.reference.partition("@")
    file = Path(path).expanduser()
    file = file if file.is_absolute() else base_dir / file
    if not file.is_file():
        raise ConfigError(
            f"study.fidelity.reference: {path} is neither a reference calculator "
            f"({', '.join(REFERENCE_CALCULATORS)}) nor a trajectory file; record a reference MD with "
            "python -m mlipopt.data.reference_md FOLDER --steps N"
        )
    stage.reference = f"{file}{at}{index}"


def interpreter(path: str, base_dir: Path, where: str) -> str:
    """``path`` (``~`` and ``$VARS`` expanded, relative to ``base_dir``) as an absolute path to a Python
    that runs ``mlipopt``; a clear error when it is missing, so a study fails before any run starts."""
    import os
    import subprocess

    candidate = Path(os.path.expandvars(os.path.expanduser(path)))
    candidate = candidate if candidate.is_absolute() else base_dir / candidate
    if not candidate.is_file() or not os.access(candidate, os.X_OK):
        raise ConfigError(f"{where}: {path} is not an executable Python (looked for {candidate})")
    probe = subprocess.run([str(candidate), "-c", "import mlipopt"], capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"{where}: {candidate} cannot import mlipopt ({last}); install it there: "
                          f"{candidate} -m pip install -e <project>")  # fmt: skip
    return str(candidate)


def run_config(
    spec: StudySpec,
    optimizer: str,
    force_fraction: float,
    seed: int,
    lr: float,
    weight_decay: float,
    loss_ratio: tuple[float, float],
    epochs: int,
    stage: str,
) -> RunSpec:
    """The full, checked training config of one run."""
    grid = spec.optimizers[optimizer]
    config = copy.deepcopy(spec.base)
    config["seed"] = seed
    config.setdefault("data", {})["force_fraction"] = force_fraction
    config["optimizer"] = {
        "name": optimizer,
        "lr": lr,
        "weight_decay": weight_decay,
        "options": copy.deepcopy(grid.options),
        "structure": copy.deepcopy(grid.structure),
    }
    config["loss"] = {"energy_weight": float(loss_ratio[0]), "force_weight": float(loss_ratio[1])}
    config.setdefault("training", {})["max_epochs"] = epochs
    config["training"]["progress"] = False
    config["run_dir"] = None
    checked = asdict(load_config(config))  # fail at expansion, not in a worker an hour later
    run = RunSpec(stage, optimizer, force_fraction, seed, lr, weight_decay, tuple(loss_ratio), checked,
                  cell=spec.cell)  # fmt: skip
    checked["run_dir"] = str((spec.folder / "runs" / run.run_id).resolve())
    return run


def next_lower_rate(lr: float, grid: list[float]) -> float:
    """The largest rate of ``grid`` (the sweep's rates, extensions included) below ``lr``; below the grid,
    the next rate down the 1-3-10 ladder."""
    lower = [r for r in grid if r < lr * (1 - 1e-9)]
    return max(lower) if lower else neighbour_rate(lr, -1)


def neighbour_rate(lr: float, direction: int) -> float:
    """The next learning rate beyond ``lr`` (direction +1 up, −1 down) on the 1-3-10 ladder of the
    grids (3e-3 → 1e-2 → 3e-2); rates off the ladder step by √10."""
    exponent = math.floor(math.log10(lr) + 1e-9)
    mantissa = lr / 10.0**exponent
    if abs(mantissa - 1.0) < 1e-6:
        new = 3 * 10.0 ** (exponent - (direction < 0))
    elif abs(mantissa - 3.0) < 1e-6:
        new = 10.0 ** (exponent + (direction > 0))
    else:
        new = lr * math.sqrt(10.0) ** direction
    return float(f"{new:.3g}")


def sweep_points(spec: StudySpec, optimizer: str) -> list[tuple[float, float]]:
    grid = spec.optimizers[optimizer]
    return [(lr, wd) for lr in grid.learning_rates(optimizer) for wd in grid.weight_decays()]


def default_ratio(spec: StudySpec) -> tuple[float, float]:
    loss = spec.base.get("loss", {})
    if len(spec.loss_ratios) == 1:
        return tuple(spec.loss_ratios[0])
    return (float(loss.get("energy_weight", 1.0)), float(loss.get("force_weight", 1.0)))


def check_sweep(spec: StudySpec) -> None:
    """A halving sweep needs Optuna and runs whose epochs the study process's workers see one by one."""
    sweep = spec.sweep
    if sweep.method not in ("grid", "halving"):
        raise ConfigError(f"study.sweep.method must be grid or halving, got {sweep.method!r}")
    if sweep.method == "grid":
        return
    if sweep.reduction_factor < 2:
        raise ConfigError(f"study.sweep.reduction_factor must be ≥ 2, got {sweep.reduction_factor}")
    if sweep.min_epochs is not None and not 1 <= sweep.min_epochs < spec.short_epochs():
        raise ConfigError(
            f"study.sweep.min_epochs must be ≥ 1 and below the sweep's {spec.short_epochs()} epochs, "
            f"got {sweep.min_epochs}"
        )
    if spec.executor.ranks_per_run > 1 or spec.executor.python or any(m.python for m in spec.models.values()):
        raise ConfigError(
            "study.sweep.method=halving prunes runs epoch by epoch inside the worker: it needs "
            "executor.ranks_per_run=1 and no other environment's python (use method=grid there)"
        )
    try:
        import optuna  # noqa: F401
    except ImportError as exc:
        raise ConfigError("study.sweep.method=halving needs Optuna: pip install 'mlipopt[study]'") from exc
