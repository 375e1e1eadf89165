"""Call one of mlipopt's functions in another Python process: another environment's interpreter (a model
family installed there, e.g. MACE beside nequip) or a fresh process of this one (an isolated timing).

The one protocol for it: ``python -m mlipopt.elsewhere`` reads ``{"function": "mlipopt.module:name",
"kwargs": {...}}`` as JSON on stdin, calls the function, and prints its JSON result as the last line of
stdout. Training runs in another process through the public command instead (``mlipopt train CONFIG``,
:mod:`mlipopt.study.jobs`), which has its own checkpoints and logs.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from typing import Any


def call_elsewhere(function: str, kwargs: dict[str, Any], python: str | None = None, what: str = "") -> Any:
    """``function(**kwargs)`` (``"mlipopt.module:name"``; arguments and result JSON) in a new process of
    ``python`` (default: this interpreter). A failure raises with the process's stderr tail."""
    if not function.startswith("mlipopt."):
        raise ValueError(f"only mlipopt's own functions run elsewhere, not {function!r}")
    job = json.dumps({"function": function, "kwargs": kwargs})
    python = python or sys.executable
    done = subprocess.run(
        [python, "-m", "mlipopt.elsewhere"], input=job, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what or function} failed in {python}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _serve() -> None:
    job = json.loads(sys.stdin.read())
    module, _, name = job["function"].partition(":")
    if not module.startswith("mlipopt."):
        raise SystemExit(f"only mlipopt's own functions run here, not {job['function']!r}")
    result = getattr(importlib.import_module(module), name)(**job["kwargs"])
    print(json.dumps(result))


if __name__ == "__main__":
    _serve()
