import numpy as np
import pytest

pytest.importorskip("tblite")

from mlipopt.data import (
    read_frames,  # noqa: E402
    xtb,  # noqa: E402
)


def test_generates_labelled_md_frames_and_caches_them(tmp_path, monkeypatch):
    monkeypatch.setenv("MLIPOPT_CACHE", str(tmp_path))
    spec = xtb.XTBDatasetSpec(
        temperatures=[300.0, 1200.0], frames_per_temperature=3, steps_between_frames=2, equilibration_steps=2
    )
    files = xtb.dataset_files(spec, progress=lambda _: None)
    train, test = read_frames(files["train"]), read_frames(files["test"])
    assert len(train) == 3 and len(test) == 3
    assert train.atoms[0].get_chemical_formula() == "C12H12N2O"
    assert np.all(np.abs(train.energy + 1130) < 20)  # GFN2-xTB total energy of 3BPA, eV
    assert train.forces[0].shape == (27, 3)
    assert not np.allclose(train.atoms[0].positions, train.atoms[1].positions)

    monkeypatch.setattr(xtb, "generate", lambda *a, **k: pytest.fail("regenerated a cached dataset"))
    assert xtb.dataset_files(spec, progress=lambda _: None) == files
    other = xtb.XTBDatasetSpec(**{**spec.__dict__, "seed": 1})
    assert other.key() != spec.key()


def test_unknown_system():
    with pytest.raises(ValueError, match="unknown built-in system"):
        xtb.initial_structure("benzene")
