"""Command line: ``mlipopt train``, ``mlipopt structure`` and ``mlipopt demo``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def load_model(source: str, type_names: list[str]) -> torch.nn.Module:
    """A model from a preset name, a nequip checkpoint (``.ckpt``) or a nequip package (``.zip``)."""
    from .models import PRESETS, build_model

    if source in PRESETS:
        return build_model(source, type_names=type_names)
    path = Path(source)
    if not path.exists():
        raise SystemExit(f"mlipopt: '{source}' is neither a model preset ({', '.join(PRESETS)}) nor a file")
    from nequip.utils.global_state import set_global_state

    set_global_state()
    if path.suffix == ".ckpt":
        from nequip.model import ModelFromCheckpoint

        return ModelFromCheckpoint(str(path))
    if path.suffix == ".zip":
        from nequip.model import ModelFromPackage

        return ModelFromPackage(str(path))
    raise SystemExit(f"mlipopt: cannot load a model from '{source}' (expected .ckpt or .zip)")


def _structure(args: argparse.Namespace) -> int:
    from .structure import describe

    model = load_model(args.model, args.type_names.split(","))
    print(describe(model, tp_blocks=args.tp_blocks))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import OPTIMIZERS, format_results, run_demo

    names = tuple(args.optimizers.split(",")) if args.optimizers else OPTIMIZERS
    print(f"mlipopt demo: nequip-tiny on {args.frames} EMT-labelled ethanol frames, {args.steps} steps each")
    results = run_demo(steps=args.steps, n_frames=args.frames, lr=args.lr, optimizers=names)
    print()
    print(format_results(results))
    return 0


def _train(args: argparse.Namespace) -> int:
    from .data import DataError
    from .train import ConfigError, TrainingDiverged, load_config, train

    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    try:
        config = load_config(args.config, overrides)
        print(f"mlipopt train: {config.model.preset} with {config.optimizer.name} -> {config.run_dir}")
        final = train(config, restart=args.restart)
    except (ConfigError, DataError, TrainingDiverged) as exc:
        print(f"mlipopt train: error: {exc}", file=sys.stderr)
        return 2
    print(f"final metrics: {Path(config.run_dir) / 'final_metrics.json'} (best epoch {final['best_epoch']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlipopt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser(
        "train",
        help="train a NequIP/Allegro model from a YAML config",
        description="Train from CONFIG (see examples/ and docs/config.md); KEY=VALUE arguments override "
        "config keys, e.g. optimizer.name=soap optimizer.lr=3e-3 data.force_fraction=0.1. A run "
        "directory with a checkpoint of the same config is resumed.",
    )
    t.add_argument("config", help="YAML config file")
    t.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides (dotted keys)")
    t.add_argument("--run-dir", default=None, help="run directory (default: runs/<config name>)")
    t.add_argument("--restart", action="store_true", help="discard an existing checkpoint in the run dir")
    t.set_defaults(func=_train)
    s = sub.add_parser("structure", help="show each parameter's optimizer role and matrix blocks")
    s.add_argument("model", help="a model preset (see mlipopt.models.PRESETS), a nequip .ckpt or .zip")
    s.add_argument("--tp-blocks", default="adam", choices=["adam", "flatten", "tensor"])
    s.add_argument("--type-names", default="H,C,N,O", help="atom types for presets (comma separated)")
    s.set_defaults(func=_structure)
    d = sub.add_parser("demo", help="train a small NequIP model with AdamW, Muon, SOAP and SOAP-Muon")
    d.add_argument("--steps", type=int, default=60)
    d.add_argument("--frames", type=int, default=16)
    d.add_argument("--lr", type=float, default=1e-2)
    d.add_argument("--optimizers", default=None, help="comma-separated subset of adamw,muon,soap,soap_muon")
    d.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
