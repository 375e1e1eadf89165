"""``mlipopt-sevenn``: SevenNet's own ``sevenn`` command with mlipopt's optimizers in its ``optimizer:`` key.

Every ``sevenn`` sub-command and input-YAML key keeps its meaning; ``train: optimizer:`` also accepts
every name of :mod:`mlipopt.optim.registry` (``soap``, ``muon``, ``soap_muon``, ``lamb``, …), whose
settings go in ``optim_param:`` as for SevenNet's own optimizers — so fine-tuning SevenNet-0
(``continue: checkpoint: SevenNet-0_11July2024``) with SOAP is SevenNet's fine-tuning with one key changed.

The seam is SevenNet's optimizer table (``sevenn.train.optim.optim_dict``, name → class called as
``cls(params, **optim_param)``): mlipopt's names are added to it, SevenNet's own (``sgd``, ``adagrad``,
``adam``, ``adamw``, ``radam``) are left as they are, so a run with them is SevenNet's run. SevenNet hands
the optimizer a flat parameter list; for the structured optimizers the model it came from (captured
when SevenNet's ``Trainer`` is built) gives :func:`mlipopt.structure.param_groups` its blocks.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

#: sevenn versions this wrapper is tested with (tests/integrations/test_sevenn_train.py); the seam is
#: SevenNet's internal optimizer table and Trainer, so others are refused.
SUPPORTED_SEVENN = ("0.13.0",)


def _check_version() -> None:
    try:
        import sevenn
    except ImportError:
        raise SystemExit(
            "mlipopt-sevenn: SevenNet is not installed (pip install 'mlipopt[sevennet]')"
        ) from None
    version = getattr(sevenn, "__version__", "unknown")
    if version not in SUPPORTED_SEVENN:
        raise SystemExit(
            f"mlipopt-sevenn: sevenn {version} is not supported (tested: {', '.join(SUPPORTED_SEVENN)})"
        )


def _factory(name: str, models: list[Any]) -> Callable[..., Any]:
    """``cls(params, **optim_param)`` for registry optimizer ``name``, as SevenNet's table calls it."""

    def build(params: Any, **options: Any) -> Any:
        from ..optim._base import accepted_arguments, reject_unknown
        from ..optim.registry import optimizer_spec
        from ..structure import param_groups

        entry = optimizer_spec(name)
        cls = entry.load()
        reject_unknown(cls, {k: v for k, v in options.items() if k not in accepted_arguments(cls)})
        options = {**entry.defaults, **options}
        params = list(params)
        if not entry.structured:
            return cls(params, **options)
        model = models[-1]
        model = getattr(model, "module", model)  # DDP
        trainable = {id(p) for p in params}
        groups = param_groups(model, tp_blocks="flatten")
        for group in groups:  # SevenNet's list is the model's trainable parameters; keep exactly those
            keep = [i for i, p in enumerate(group["params"]) if id(p) in trainable]
            for key in ("params", "param_names", "blocks", "layouts"):
                if key in group:
                    group[key] = [group[key][i] for i in keep]
        return cls([g for g in groups if g["params"]], **options)

    return build


def install() -> None:
    """Add the registry's optimizers to SevenNet's optimizer table and let its Trainer report its model."""
    from sevenn.train import optim, trainer

    from ..optim.registry import OPTIMIZERS

    if getattr(trainer.Trainer, "_mlipopt_models", None) is not None:
        return
    models: list[Any] = []
    original_init = trainer.Trainer.__init__

    def __init__(self: Any, model: Any, *args: Any, **kwargs: Any) -> None:
        models.append(model)  # the structured optimizers read its modules (e3nn Linear, tensor products)
        original_init(self, model, *args, **kwargs)

    trainer.Trainer.__init__ = __init__
    trainer.Trainer._mlipopt_models = models
    for name in OPTIMIZERS:
        optim.optim_dict.setdefault(name, _factory(name, models))


def _check_optimizer(args: Sequence[str]) -> None:
    """One line, before SevenNet reads its data, for an ``optimizer:`` neither SevenNet nor mlipopt knows
    (SevenNet itself fails much later, with a KeyError)."""
    from pathlib import Path

    import yaml
    from sevenn.train.optim import optim_dict

    from ..suggest import did_you_mean

    for arg in args:
        path = Path(arg)
        if path.suffix in (".yaml", ".yml") and path.is_file():
            train = (yaml.safe_load(path.read_text()) or {}).get("train") or {}
            name = str(train.get("optimizer", "adam")).lower()
            if name not in optim_dict:
                hint, known = did_you_mean(name, list(optim_dict)), ", ".join(optim_dict)
                raise SystemExit(
                    f"mlipopt-sevenn: {path}: unknown optimizer {name!r}{hint} (choose one of {known})"
                )
            return


def main(argv: Sequence[str] | None = None) -> None:
    """``sevenn`` with mlipopt's optimizers available."""
    _check_version()
    install()
    from sevenn.main import sevenn as cli

    args = list(sys.argv[1:] if argv is None else argv)
    _check_optimizer(args)
    sys.argv = [sys.argv[0], *args]
    cli.main()


if __name__ == "__main__":
    main()
