"""nequip integration: a ``param_groups`` factory for ``nequip-train`` configs.

.. code-block:: yaml

    optimizer:
      _target_: mlipopt.optim.SOAP
      lr: 0.01
      param_groups:
        _target_: mlipopt.integrations.nequip.param_groups
        tp_blocks: flatten
"""

from __future__ import annotations

from typing import Any

import torch

from ..structure import param_groups as _structure_param_groups


def _plain(value: Any) -> Any:
    """Turn OmegaConf containers (as passed by hydra's ``instantiate``) into builtins."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # nequip always brings omegaconf; keep the module importable without it
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def param_groups(
    model: torch.nn.Module,
    tp_blocks: str = "flatten",
    adam_names: Any = (),
    matrix: Any = None,
    adam: Any = None,
    **group_options: Any,
) -> list[dict[str, Any]]:
    """:func:`mlipopt.structure.param_groups` with config values converted to plain Python.

    The groups hold only ints, tuples, lists and strings besides the parameters, so nequip's
    (Lightning) checkpoints of the optimizer state load back without custom classes.
    """
    return _structure_param_groups(
        model,
        tp_blocks=str(tp_blocks),
        adam_names=list(_plain(adam_names) or ()),
        matrix=_plain(matrix),
        adam=_plain(adam),
        **{k: _plain(v) for k, v in group_options.items()},
    )
