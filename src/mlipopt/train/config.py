"""The training config schema: nested dataclasses loaded from YAML with strict checking.

Unknown keys fail with the list of valid ones (and a "did you mean"), ill-typed values fail naming the
key and the expected type. ``mlipopt train CONFIG.yaml optimizer.lr=3e-3`` overrides single keys.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..data.io import file_digest
from ..models import PRESETS
from ..models.energy_shifts import SHIFT_MODES
from ..optim.registry import BASELINE, canonical_name
from ..suggest import did_you_mean


class ConfigError(ValueError):
    """A config key is unknown, missing or of the wrong type."""


@dataclass
class GenerateConfig:
    """A dataset labelled on the fly by ASE's EMT potential (no files needed; a toy, not DFT)."""

    system: str = "ethanol"  # "ethanol" (rattled molecule) or "copper" (periodic fcc Cu, strained)
    n_frames: int = 64
    rattle: float = 0.08  # Å, standard deviation of the random displacements
    seed: int = 0


@dataclass
class ExtraTestConfig:
    """A further test set reported separately (out-of-distribution paths, other temperatures)."""

    file: str = ""
    max_frames: int | None = None  # use only the first N frames
    stride: int = 1  # then every k-th frame (a file ordered by temperature keeps all temperatures)
    exclude_training: bool = False  # drop frames whose structure is in the train or val split
    coordinate: str | None = None  # info key of a path coordinate (e.g. OH_dist): energies plotted along it


@dataclass
class DataConfig:
    train: str | None = None  # extxyz (or any ASE-readable) file; split into train/val/test unless given
    val: str | None = None
    test: str | None = None
    generate: GenerateConfig | None = None  # instead of files
    energy_key: str = "energy"
    forces_key: str = "forces"
    max_frames: int | None = None  # use only the first N frames of the train file
    max_test_frames: int | None = None  # use only the first N frames of the test file
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # fractions or counts
    force_fraction: float = 1.0  # s: frames keeping force labels in train and val (never test)
    # validation force labels: "masked" (the same fraction s as training — Harari et al. appendix B) or "all"
    val_force_labels: str = "masked"
    energy_references: str = "fit"  # "fit" (least squares on train) or an isolated-atoms file
    train_subset: int | None = None  # train on the first N frames of the training split (learning curves)
    batch_size: int = 5
    eval_batch_size: int = 32
    extra_tests: dict[str, ExtraTestConfig] = field(default_factory=dict)  # name -> further test set


@dataclass
class ModelConfig:
    preset: str = "nequip-tiny"
    # a trained model file to fine-tune (e.g. a MACE .model) and its family; the preset is then ignored
    file: str | None = None
    family: str | None = None
    dtype: str = "float32"
    type_names: list[str] | None = None  # default: elements of the training data
    r_max: float | None = None  # default: the preset's
    avg_num_neighbors: float | None = None  # default: measured on the training set
    options: dict[str, Any] = field(default_factory=dict)  # overrides of preset keys
    freeze: list[str] = field(default_factory=list)  # regexes of parameter names to keep fixed
    # per-type energy shifts: refit (closed-form least squares after every epoch), fixed (at E0) or
    # trainable (Harari et al. table 3); see mlipopt.models.energy_shifts
    energy_shifts: str = "refit"


@dataclass
class OptimizerConfig:
    name: str = BASELINE  # any name of mlipopt.optim.registry.OPTIMIZERS
    lr: float = 1e-3
    weight_decay: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)  # e.g. betas, rho, precondition_frequency
    structure: dict[str, Any] = field(default_factory=dict)  # mlipopt.structure.param_groups options


@dataclass
class SchedulerConfig:
    name: str = "none"  # none, plateau (ReduceLROnPlateau on the validation metric), cosine
    factor: float = 0.5  # plateau
    patience: int = 10  # plateau, epochs
    min_lr: float = 0.0  # plateau floor / cosine eta_min


@dataclass
class LossConfig:
    """Eq. 11 weights λ_E (on per-atom energy) and λ_F."""

    energy_weight: float = 1.0
    force_weight: float = 1.0


@dataclass
class ForgettingConfig:
    """Held-out structures sampled by MD with the pretrained model and labelled by it (no pretraining
    data needed): the fine-tuned model's error on them measures forgetting; replay frames mix more
    such frames into training."""

    frames: int = 0  # held-out frames; 0 switches the measure off
    replay_frames: int = 0  # pretrained-labelled frames added to the training split
    temperature: float = 600.0  # K, Langevin
    steps_between_frames: int = 20
    frames_per_trajectory: int = 10  # trajectories start from training-file frames
    timestep_fs: float = 0.5
    seed: int = 0


@dataclass
class TrainingConfig:
    max_epochs: int = 100
    clip_grad_norm: float | None = None
    early_stopping_patience: int | None = None  # epochs without improvement of the validation metric
    early_stopping_min_delta: float = 0.0
    # stop once the learning rate falls below this (nequip's early_stopping_lower_bounds LR): the end of
    # a plateau schedule; a run stopped by either rule counts as converged, one capped by max_epochs not
    early_stopping_lr_floor: float | None = None
    checkpoint_every: int = 1  # epochs
    keep_checkpoints: list[int] = field(default_factory=list)  # epochs whose checkpoint is kept (spectra)
    progress: bool = True
    device: str = "cpu"


@dataclass
class DistributedConfig:
    """Data-parallel training under ``torchrun``/``srun`` (ignored in a single process)."""

    shard_optimizer: bool = False  # each rank computes its share of Muon/SOAP block updates
    allow_world_size_change: bool = False  # resume a checkpoint written by another number of ranks
    timeout_minutes: float = 30.0  # how long a collective waits for a silent rank


@dataclass
class RunConfig:
    seed: int = 0
    run_dir: str | None = None  # default: runs/<config file name>
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    forgetting: ForgettingConfig = field(default_factory=ForgettingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def data_files(self) -> list[str]:
        """Every file the run reads labels from (training, validation, test, references, extra tests)."""
        d = self.data
        files = [d.train, d.val, d.test]
        files.append(None if d.energy_references == "fit" else d.energy_references)
        files += [extra.file for extra in d.extra_tests.values()]
        files.append(self.model.file)  # a model file to fine-tune is an input like the data
        return [f for f in files if f]

    def data_fingerprint(self) -> dict[str, str]:
        """SHA-256 of each data file's content: a run resumed or counted as done on changed data would
        mix two datasets in one result."""
        out = {}
        for path in self.data_files():
            try:
                out[path] = file_digest(path)
            except OSError:
                out[path] = "missing"
        return out

    def check(self) -> None:
        """Cross-field checks that types alone cannot express."""
        check_ranges(self)
        d = self.data
        if (d.train is None) == (d.generate is None):
            raise ConfigError("data: give exactly one of data.train (a file) or data.generate")
        if not 0.0 <= d.force_fraction <= 1.0:
            raise ConfigError(f"data.force_fraction must lie in [0, 1], got {d.force_fraction}")
        if d.val_force_labels not in ("masked", "all"):
            raise ConfigError(f"data.val_force_labels must be masked or all, got {d.val_force_labels!r}")
        if len(d.split) != 3:
            raise ConfigError(f"data.split needs three sizes (train, val, test), got {d.split}")
        if any(not size >= 0 for size in d.split):
            raise ConfigError(f"data.split sizes must be ≥ 0, got {d.split}")
        if self.loss.energy_weight == 0 and self.loss.force_weight == 0:
            raise ConfigError("loss.energy_weight and loss.force_weight are both 0: nothing to train on")
        if self.training.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(
                f"training.device is {self.training.device!r} but this torch ({torch.__version__}) sees no "
                "CUDA device; use training.device=cpu"
            )
        if d.batch_size < 1 or d.eval_batch_size < 1:
            raise ConfigError("data.batch_size and data.eval_batch_size must be ≥ 1")
        if self.model.file is not None:
            if self.model.family is None:
                raise ConfigError("model.file needs model.family (e.g. mace) to say how to load it")
            if not Path(self.model.file).is_file():
                raise ConfigError(f"model.file: {self.model.file}: no such file")
            self.model.preset = f"{self.model.family}-file"
        if self.model.family is not None and self.model.family not in {p["family"] for p in PRESETS.values()}:
            raise ConfigError(f"model.family {self.model.family!r} unknown")
        if self.model.preset not in PRESETS:
            raise ConfigError(
                f"model.preset {self.model.preset!r} unknown; choose one of {', '.join(PRESETS)}"
            )
        if self.model.energy_shifts not in SHIFT_MODES:
            raise ConfigError(
                f"model.energy_shifts must be one of {', '.join(SHIFT_MODES)}, "
                f"got {self.model.energy_shifts!r}"
            )
        if "per_type_energy_shifts_trainable" in self.model.options:
            raise ConfigError(
                "model.options.per_type_energy_shifts_trainable: set model.energy_shifts instead "
                "(trainable for Harari et al.'s trainable shifts)"
            )
        if self.model.dtype not in ("float32", "float64"):
            raise ConfigError(f"model.dtype must be float32 or float64, got {self.model.dtype!r}")
        try:
            self.optimizer.name = canonical_name(self.optimizer.name)
        except ValueError as exc:
            raise ConfigError(f"optimizer.name: {exc}") from None
        if self.scheduler.name not in ("none", "plateau", "cosine"):
            raise ConfigError(f"scheduler.name must be none, plateau or cosine, got {self.scheduler.name!r}")
        if self.training.max_epochs < 1 or self.training.checkpoint_every < 1:
            raise ConfigError("training.max_epochs and training.checkpoint_every must be ≥ 1")
        floor = self.training.early_stopping_lr_floor
        if floor is not None and self.scheduler.name == "none":
            raise ConfigError(
                "training.early_stopping_lr_floor needs a schedule that lowers the learning rate "
                "(scheduler.name=plateau)"
            )
        if floor is not None and self.scheduler.min_lr >= floor:
            raise ConfigError(
                f"training.early_stopping_lr_floor={floor:g} can never be crossed: the {self.scheduler.name} "
                f"schedule stops at scheduler.min_lr={self.scheduler.min_lr:g}; set min_lr below the floor "
                "(or 0)"
            )
        if self.loss.energy_weight < 0 or self.loss.force_weight < 0:
            raise ConfigError("loss weights must be non-negative")
        for name, extra in d.extra_tests.items():
            check_name(name, f"data.extra_tests.{name}")
            if not extra.file:
                raise ConfigError(f"data.extra_tests.{name}.file is required")
            if extra.stride < 1:
                raise ConfigError(f"data.extra_tests.{name}.stride must be ≥ 1")
            if name in ("train", "val", "test"):
                raise ConfigError(f"data.extra_tests: {name!r} is a split name; choose another")
        g = self.forgetting
        if g.frames or g.replay_frames:
            if "checkpoint" not in PRESETS[self.model.preset] and self.model.file is None:
                raise ConfigError(
                    f"forgetting needs a pretrained model; model.preset {self.model.preset!r} starts "
                    "from random weights (use sevennet-0)"
                )
            if (
                min(g.frames, g.replay_frames) < 0
                or g.steps_between_frames < 1
                or g.frames_per_trajectory < 1
            ):
                raise ConfigError("forgetting: frame counts must be ≥ 0, steps and frames per trajectory ≥ 1")


#: Ranges of numeric keys, checked after loading: (lower bound, lower bound allowed, upper bound, upper
#: bound allowed); None is unbounded. A key missing here may take any value of its type.
GT0 = (0.0, False, None, False)
GE0 = (0.0, True, None, False)
GE1 = (1, True, None, False)
RANGES: dict[str, tuple[float | None, bool, float | None, bool]] = {
    "seed": GE0,
    "data.generate.n_frames": GE1,
    "data.generate.rattle": GE0,
    "data.generate.seed": GE0,
    "data.max_frames": GE1,
    "data.max_test_frames": GE1,
    "data.force_fraction": (0.0, True, 1.0, True),
    "data.batch_size": GE1,
    "data.train_subset": GE1,
    "data.eval_batch_size": GE1,
    "data.extra_tests.*.max_frames": GE1,
    "data.extra_tests.*.stride": GE1,
    "model.r_max": GT0,
    "model.avg_num_neighbors": GT0,
    "optimizer.lr": GE0,
    "optimizer.weight_decay": GE0,
    "scheduler.factor": (0.0, False, 1.0, False),
    "scheduler.patience": GE0,
    "scheduler.min_lr": GE0,
    "loss.energy_weight": GE0,
    "loss.force_weight": GE0,
    "forgetting.frames": GE0,
    "forgetting.replay_frames": GE0,
    "forgetting.temperature": GT0,
    "forgetting.steps_between_frames": GE1,
    "forgetting.frames_per_trajectory": GE1,
    "forgetting.timestep_fs": GT0,
    "forgetting.seed": GE0,
    "training.max_epochs": GE1,
    "distributed.timeout_minutes": GT0,
    "training.clip_grad_norm": GT0,
    "training.early_stopping_patience": GE1,
    "training.early_stopping_min_delta": GE0,
    "training.early_stopping_lr_floor": GT0,
    "training.checkpoint_every": GE1,
}


def _describe_range(bounds: tuple[float | None, bool, float | None, bool]) -> str:
    low, low_ok, high, high_ok = bounds
    parts = []
    if low is not None:
        parts.append(f"{'≥' if low_ok else '>'} {low:g}")
    if high is not None:
        parts.append(f"{'≤' if high_ok else '<'} {high:g}")
    return " and ".join(parts)


def check_ranges(node: Any, path: str = "") -> None:
    """Raise :class:`ConfigError` naming the first numeric key outside its range (:data:`RANGES`)."""
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            check_ranges(getattr(node, f.name), f"{path}.{f.name}" if path else f.name)
        return
    if isinstance(node, dict) and path.endswith("extra_tests"):
        for name, value in node.items():
            check_ranges(value, f"{path}.{name}")
        return
    pattern = ".".join("*" if path.startswith("data.extra_tests.") and i == 2 else part
                       for i, part in enumerate(path.split(".")))  # fmt: skip
    bounds = RANGES.get(pattern)
    if bounds is None or node is None or isinstance(node, bool) or not isinstance(node, (int, float)):
        return
    low, low_ok, high, high_ok = bounds
    bad = node != node  # NaN
    bad |= low is not None and (node < low or (node == low and not low_ok))
    bad |= high is not None and (node > high or (node == high and not high_ok))
    if bad:
        raise ConfigError(f"{path} must be {_describe_range(bounds)}, got {node!r}")


def check_name(name: str, key: str) -> None:
    """Names that become file or folder names stay inside their folder: letters, digits, ``-_.``."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", str(name)) or ".." in str(name):
        raise ConfigError(
            f"{key}: {name!r} is not a usable name (letters, digits, '-', '_' and '.', not starting with "
            "'.' or containing '..'): it becomes a file name"
        )


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} is none of {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {[f.name for f in dataclasses.fields(tp)]}")
        return from_dict(tp, value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, item = typing.get_args(tp)
        return {
            k: _coerce(v if v is not None or item is Any else {}, item, f"{key}.{k}")
            for k, v in value.items()
        }
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - schema bug


def from_dict(cls: type, mapping: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from ``mapping``, rejecting unknown keys and ill-typed values."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in mapping.items():
        full = f"{where}.{key}" if where else str(key)
        if key not in names:
            hint = did_you_mean(str(key), names)
            raise ConfigError(f"unknown config key {full!r}{hint} (valid keys here: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``a.b.c=value`` entries (value parsed as YAML) in a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        path, text = item.split("=", 1)
        node = raw
        *parents, leaf = path.strip().split(".")
        for p in parents:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
            node = child
        node[leaf] = yaml.safe_load(text)
    return raw


PATH_KEYS = ("data.train", "data.val", "data.test", "data.energy_references", "model.file")


def overrides_from_cwd(overrides: list[str], prefix: str = "") -> list[str]:
    """Make relative data paths given on the command line absolute against the current directory (the
    user typed them from there), before relative paths in the file are taken from the file's folder."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        bare = key[len(prefix) :] if prefix and key.startswith(prefix) else key
        is_path = bare in PATH_KEYS or (bare.startswith("data.extra_tests.") and bare.endswith(".file"))
        if sep and is_path and value and value != "fit" and not Path(value).is_absolute():
            item = f"{key}={(Path.cwd() / value).resolve()}"
        out.append(item)
    return out


def resolve_relative_paths(raw: dict[str, Any], base: Path) -> None:
    """Make the file paths of a raw run config (``data.train/val/test``, an isolated-atoms
    ``data.energy_references`` file, ``data.extra_tests.*.file``, ``model.file``) absolute against
    ``base``, the folder of the file they were written in; used for run and study files alike."""

    def absolute(value: Any) -> Any:
        if isinstance(value, str) and value and value != "fit" and not Path(value).is_absolute():
            return str((base / value).resolve())
        return value

    data = raw.get("data")
    if isinstance(data, dict):
        for key in ("train", "val", "test", "energy_references"):
            if key in data:
                data[key] = absolute(data[key])
        for extra in (data.get("extra_tests") or {}).values():
            if isinstance(extra, dict) and "file" in extra:
                extra["file"] = absolute(extra["file"])
    model = raw.get("model")
    if isinstance(model, dict) and "file" in model:
        model["file"] = absolute(model["file"])


#: Overrides that continue a run rather than define another (they keep its default folder).
_CONTINUING = ("run_dir", "training.max_epochs", "training.progress")


def default_run_name(stem: str, overrides: list[str]) -> str:
    """``<config name>``, plus a short hash of the overrides that change the run, so that
    ``mlipopt train cfg.yaml optimizer.name=soap`` and ``... optimizer.name=adamw`` do not share a folder."""
    import hashlib

    defining = sorted(o.strip() for o in overrides if o.partition("=")[0].strip() not in _CONTINUING)
    if not defining:
        return stem
    return f"{stem}-{hashlib.sha1(' '.join(defining).encode()).hexdigest()[:8]}"


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file, or a :class:`ConfigError` naming the file."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what} file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return raw


def load_config(source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    """A checked :class:`RunConfig` from a YAML file or a dict, with ``key=value`` overrides.

    Relative data paths in a file are taken relative to the file's folder; relative paths in
    ``overrides`` (typed on a command line) relative to the current directory.
    """
    base = Path.cwd()
    if isinstance(source, dict):
        raw = dict(source)
    else:
        path = Path(source)
        raw = read_yaml_mapping(path, "config")
        base = path.resolve().parent
        raw.setdefault("run_dir", str(Path("runs") / default_run_name(path.stem, list(overrides or []))))
    resolve_relative_paths(raw, base)
    raw = apply_overrides(raw, overrides_from_cwd(list(overrides or [])))
    config = from_dict(RunConfig, raw)
    config.check()
    return config


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
