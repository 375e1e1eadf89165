"""The one protocol for calling mlipopt in another Python process (mlipopt.elsewhere)."""

import sys

import pytest

from mlipopt.elsewhere import call_elsewhere
from mlipopt.study.spec import neighbour_rate


def test_a_function_called_in_another_process_returns_what_it_returns_here():
    assert call_elsewhere(
        "mlipopt.study.spec:neighbour_rate", {"lr": 3e-3, "direction": 1}
    ) == neighbour_rate(3e-3, 1)
    assert (
        call_elsewhere("mlipopt.study.spec:neighbour_rate", {"lr": 1e-2, "direction": -1}, sys.executable)
        == 3e-3
    )


def test_a_failure_elsewhere_raises_with_its_message_and_only_mlipopt_runs_there():
    with pytest.raises(RuntimeError, match="(?s)the rate step failed in .*TypeError"):
        call_elsewhere("mlipopt.study.spec:neighbour_rate", {"lr": 1e-2}, what="the rate step")
    with pytest.raises(ValueError, match="only mlipopt's own functions"):
        call_elsewhere("os:system", {"command": "true"})
