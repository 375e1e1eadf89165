"""Lazy package exports (PEP 562): ``from mlipopt.study import ResultsDB`` works as before, but importing
one light submodule (a preset table, the config schema) no longer imports every sibling — so
``mlipopt --help`` and a one-line config error do not wait for SQLAlchemy, ASE's builders or e3nn."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list]]:
    """``__getattr__`` and ``__dir__`` for ``package`` whose public ``name`` lives in
    ``package + exports[name]`` (a relative module path such as ``".db"``)."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name], package), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
