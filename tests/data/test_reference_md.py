"""The resumable reference MD (mlipopt.data.reference_md): interrupted and resumed is the uninterrupted
run (to rounding: a resumed calculator builds its neighbour list afresh and sums in another order; a
thermostat whose random state were not restored would differ by the size of its kicks), a frame written
after the last restart point is recorded once, and other settings in the same folder are refused."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from mlipopt.data.io import DataError
from mlipopt.data.reference_md import FRAMES, ReferenceMD, run_reference_md

SETTINGS = ReferenceMD(system="copper", temperature_K=600.0, timestep_fs=2.0, frame_every=5, seed=3)


def _copper():
    return bulk("Cu", cubic=True).repeat(2)


def _run(folder, steps, settings=SETTINGS):
    return run_reference_md(folder, settings, steps, calculator=EMT, atoms=_copper(), progress=lambda _: None)


def test_an_interrupted_reference_md_resumes_bitwise(tmp_path):
    assert _run(tmp_path / "whole", 40) == 40
    _run(tmp_path / "parts", 15)
    _run(tmp_path / "parts", 30)
    _run(tmp_path / "parts", 40)
    whole = (tmp_path / "whole" / FRAMES).read_text()
    frames, parts = (ase.io.read(tmp_path / f / FRAMES, ":") for f in ("whole", "parts"))
    assert len(frames) == len(parts)
    for a, b in zip(frames, parts, strict=True):
        assert a.info == b.info
        for got, want in ((a.positions, b.positions), (a.get_momenta(), b.get_momenta())):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), rtol=0, atol=1e-8)
    assert [f.info["step"] for f in frames] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert all(f.get_stress().shape == (6,) and np.isfinite(f.get_forces()).all() for f in frames)
    assert not np.allclose(frames[0].positions, frames[-1].positions)  # it moved
    assert _run(tmp_path / "whole", 40) == 40 and (tmp_path / "whole" / FRAMES).read_text() == whole


def test_a_frame_written_after_the_last_restart_point_is_recorded_once(tmp_path):
    _run(tmp_path / "whole", 20)
    _run(tmp_path / "killed", 10)
    path = tmp_path / "killed" / FRAMES
    text = path.read_text()
    last = text.splitlines(keepends=True)
    n = int(last[0]) + 2
    path.write_text(text + "".join(last[-n:]))  # died after appending a frame, before its restart point
    _run(tmp_path / "killed", 20)
    steps = [f.info["step"] for f in ase.io.read(path, ":")]
    assert steps == [f.info["step"] for f in ase.io.read(tmp_path / "whole" / FRAMES, ":")] == [5, 10, 15, 20]


def test_other_settings_in_the_same_folder_are_refused(tmp_path):
    _run(tmp_path, 10)
    hotter = ReferenceMD(**{**SETTINGS.__dict__, "temperature_K": 900.0})
    with pytest.raises(DataError, match=r"other settings \(temperature_K: 600.0 -> 900.0\)"):
        _run(tmp_path, 20, hotter)
