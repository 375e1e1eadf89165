"""The unconstrained Cartesian model family: forces, augmentation, structure, training (issue 14)."""

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from mlipopt.models import build_model
from mlipopt.models.cartesian import CartesianBackend
from mlipopt.structure import param_groups
from mlipopt.train import train

from ..train.helpers import tiny_config

TYPES = ["H", "C", "O"]


def _model(**options):
    torch.manual_seed(0)
    return build_model("cartesian-tiny", type_names=TYPES, model_dtype="float64", **options).eval()


def _data(backend, atoms):
    return backend.collate([backend.graph(atoms)])


def test_conservative_forces_are_minus_the_energy_gradient():
    model, backend = _model(), CartesianBackend(TYPES, 4.0, torch.float64)
    atoms = molecule("CH3CH2OH")
    _, forces = backend.predict(model, _data(backend, atoms), True)
    h, numeric = 1e-5, np.zeros((len(atoms), 3))
    for a in range(len(atoms)):
        for k in range(3):
            energies = []
            for step in (h, -h):
                moved = atoms.copy()
                moved.positions[a, k] += step
                energies.append(float(backend.predict(model, _data(backend, moved), False)[0].detach()))
            numeric[a, k] = -(energies[0] - energies[1]) / (2 * h)
    assert np.abs(forces.detach().numpy() - numeric).max() < 1e-7


def test_the_model_is_not_rotation_invariant_and_periodic_images_count():
    model, backend = _model(), CartesianBackend(TYPES, 4.0, torch.float64)
    atoms = molecule("CH3CH2OH")
    turned = atoms.copy()
    turned.rotate(40, "x")
    e = [float(backend.predict(model, _data(backend, a), False)[0]) for a in (atoms, turned)]
    assert abs(e[0] - e[1]) > 1e-6  # unconstrained: orientation matters
    crystal = bulk("C", "diamond", a=3.57)  # 2 atoms, neighbours only through the cell
    graph = backend.graph(crystal)
    # shells at 1.55, 2.52, 2.96, 3.57 and 3.89 Å: 4 + 12 + 12 + 6 + 12 neighbours per atom within 4 Å
    assert graph["edge_index"].shape[1] == 2 * 46
    vectors = graph["edge_index"]
    lengths = (graph["pos"][vectors[1]] - graph["pos"][vectors[0]] + graph["shift"]).norm(dim=-1)
    assert float(lengths.min()) == pytest.approx(3.57 * 3**0.5 / 4, rel=1e-9)


def test_rotation_augmentation_is_rotating_the_frame_and_its_labels():
    model = _model(direct_forces=True, augment_rotations=True)
    backend = CartesianBackend(TYPES, 4.0, torch.float64)
    frames = [molecule("CH3CH2OH"), molecule("CH3OH")]
    model.train()
    torch.manual_seed(5)
    energy, forces = model(backend.collate([backend.graph(a) for a in frames]))
    torch.manual_seed(5)
    from mlipopt.models.cartesian import random_rotations

    rotations = random_rotations(2, torch.float64, torch.device("cpu")).numpy()
    model.eval()
    offset = 0
    for k, atoms in enumerate(frames):
        turned = atoms.copy()
        turned.positions = atoms.positions @ rotations[k].T
        e, f = model(_data(backend, turned))
        assert float(e[0]) == pytest.approx(float(energy[k]), rel=1e-12)
        back = f.detach().numpy() @ rotations[k]  # the lab frame of the unrotated labels
        assert np.allclose(back, forces[offset : offset + len(atoms)].detach().numpy(), atol=1e-12)
        offset += len(atoms)


def test_every_weight_matrix_is_on_the_matrix_role():
    model = _model()
    groups = {g["role"]: g for g in param_groups(model)}
    matrix = set(groups["matrix"]["param_names"])
    linear = {
        n for n, p in model.named_parameters() if n.endswith("weight") and p.ndim == 2 and "embed" not in n
    }
    readout_out = {n for n in linear if n.startswith("readout.") and model.get_parameter(n).shape[0] == 1}
    assert linear - readout_out <= matrix and "embed.weight" not in matrix


@pytest.mark.parametrize("optimizer", ["adamw", "muon", "soap", "soap_muon"])
@pytest.mark.parametrize("direct", [False, True])
def test_it_trains_with_the_matrix_optimizers(tmp_path, optimizer, direct):
    config = tiny_config(
        tmp_path, model={"preset": "cartesian-tiny", "options": {"direct_forces": direct}},
        optimizer={"name": optimizer, "lr": 3e-3}, training={"max_epochs": 3},
    )  # fmt: skip
    final = train(config, log=lambda _: None)
    first = final["constant_energy_mae"]["test"]
    assert np.isfinite(final["test"]["f_mae"]) and final["test"]["e_mae"] < 3 * first
    assert final["best_epoch"] >= 2  # it improved after the first epoch


def test_a_trained_run_gives_an_ase_calculator(tmp_path):
    from mlipopt.calculator import load

    config = tiny_config(tmp_path, model={"preset": "cartesian-tiny"}, training={"max_epochs": 1})
    train(config, log=lambda _: None)
    atoms = molecule("CH3CH2OH")
    atoms.calc = load(tmp_path)
    assert np.isfinite(atoms.get_potential_energy()) and atoms.get_forces().shape == (9, 3)
