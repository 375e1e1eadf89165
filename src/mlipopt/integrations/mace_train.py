"""``mlipopt-mace-train``: MACE's own ``mace_run_train`` with mlipopt's optimizers behind ``--optimizer``.

Every ``mace_run_train`` argument keeps its meaning, and everything but the optimizer is MACE's: data,
heads, E0s, SWA / stage two, EMA, checkpoints, ``--restart_latest`` and model export. ``--optimizer``
also accepts every name of :mod:`mlipopt.optim.registry` (``soap``, ``muon``, ``soap_muon``, ``radam``,
…) and ``--optimizer_options`` (JSON) passes their extra settings, e.g.
``--optimizer soap --optimizer_options '{"precondition_frequency": 10}'``.

The seam is MACE's optimizer factory (``mace.cli.run_train.get_optimizer``), the narrowest there is:
the names MACE's parser offers (0.3.16: adam, adamw, schedulefree) still go to MACE's factory untouched,
so a run with them is MACE's run. For an mlipopt optimizer, MACE's parameter groups (its per-group
weight decay) are kept and :func:`mlipopt.structure.split_groups` adds the block structure inside each.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

#: mace-torch versions this wrapper is tested with (tests/mace/test_mace_train.py); others are refused,
#: because the seam (run_train's imported ``get_optimizer`` and ``get_params_options``) is private API.
SUPPORTED_MACE = ("0.3.16",)


def _check_version() -> Any:
    try:
        import mace
        from mace.cli import run_train
    except ImportError:
        raise SystemExit("mlipopt-mace-train: MACE is not installed (pip install 'mlipopt[mace]')") from None
    version = getattr(mace, "__version__", "unknown")
    if version not in SUPPORTED_MACE:
        raise SystemExit(
            f"mlipopt-mace-train: mace-torch {version} is not supported (tested: {', '.join(SUPPORTED_MACE)})"
        )
    return run_train


def build_parser() -> argparse.ArgumentParser:
    """MACE's argument parser, with ``--optimizer`` open to mlipopt's names and ``--optimizer_options``."""
    from mace import tools

    from ..optim.registry import OPTIMIZERS

    parser = tools.build_default_arg_parser()
    for action in parser._actions:  # argparse has no public way to widen an existing option's choices
        if "--optimizer" in action.option_strings:
            own = tuple(action.choices)
            action.choices = [*own, *(n for n in OPTIMIZERS if n not in own)]
            action.help = f"MACE's {', '.join(own)}, or any optimizer of mlipopt.optim.registry"
    parser.set_defaults(mace_optimizers=own)  # what MACE's factory builds: those runs stay MACE's own
    parser.add_argument(
        "--optimizer_options",
        type=json.loads,
        default={},
        help="JSON of extra constructor settings for an mlipopt optimizer, e.g. '{\"rho\": 0.0}'",
    )
    return parser


def mlipopt_optimizer(args: argparse.Namespace, param_options: dict[str, Any], model: Any) -> Any:
    """The optimizer ``args.optimizer`` over MACE's ``param_options`` (its groups, ``lr``)."""
    from ..optim._base import accepted_arguments, reject_unknown
    from ..optim.registry import optimizer_spec
    from ..structure import split_groups

    entry = optimizer_spec(args.optimizer)
    cls = entry.load()
    options = dict(args.optimizer_options or {})
    reject_unknown(cls, {k: v for k, v in options.items() if k not in accepted_arguments(cls)})
    groups = [dict(g) for g in param_options["params"]]
    if entry.structured:
        groups = split_groups(model, groups)
    else:
        for g in groups:
            g["params"] = list(g["params"])
    return cls(groups, lr=param_options["lr"], **{**entry.defaults, **options})


def main(argv: Sequence[str] | None = None) -> None:
    """Parse MACE's arguments (plus ``--optimizer_options``) and run MACE's training."""
    run_train = _check_version()
    args = build_parser().parse_args(argv)
    mace_own = args.__dict__.pop("mace_optimizers")  # not an argument of MACE's: keep its args unchanged
    if args.optimizer_options and args.optimizer in mace_own:
        raise SystemExit(
            f"mlipopt-mace-train: --optimizer_options is for mlipopt's optimizers, not {args.optimizer}"
        )
    if args.optimizer in mace_own:
        del args.optimizer_options
        run_train.run(args)
        return
    mace_params_options, mace_optimizer = run_train.get_params_options, run_train.get_optimizer
    seen: dict[str, Any] = {}

    def get_params_options(args: argparse.Namespace, model: Any) -> dict[str, Any]:
        seen["model"] = model  # the model the groups belong to: structure discovery reads its modules
        return mace_params_options(args, model)

    def get_optimizer(args: argparse.Namespace, param_options: dict[str, Any]) -> Any:
        return mlipopt_optimizer(args, param_options, seen["model"])

    run_train.get_params_options, run_train.get_optimizer = get_params_options, get_optimizer
    try:
        run_train.run(args)
    finally:  # MACE's factory back, for whatever runs next in this process
        run_train.get_params_options, run_train.get_optimizer = mace_params_options, mace_optimizer


if __name__ == "__main__":
    main(sys.argv[1:])
