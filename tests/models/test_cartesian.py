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


def _model(preset="cartesian-tiny", **options):
    torch.manual_seed(0)
    return build_model(preset, type_names=TYPES, model_dtype="float64", **options).eval()


def _data(backend, atoms):
    return backend.collate([backend.graph(atoms)])


@pytest.mark.parametrize("preset", ["cartesian-tiny", "cartesian-attention-tiny"])
def test_conservative_forces_are_minus_the_energy_gradient(preset):
    model, backend = _model(preset), CartesianBackend(TYPES, 4.0, torch.float64)
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


@pytest.mark.parametrize("preset", ["cartesian-tiny", "cartesian-attention-tiny"])
def test_every_weight_matrix_is_on_the_matrix_role(preset):
    model = _model(preset)
    groups = {g["role"]: g for g in param_groups(model)}
    matrix = set(groups["matrix"]["param_names"])
    linear = {
        n for n, p in model.named_parameters() if n.endswith("weight") and p.ndim == 2 and "embed" not in n
    }
    readout_out = {n for n in linear if n.startswith("readout.") and model.get_parameter(n).shape[0] == 1}
    assert linear - readout_out <= matrix and "embed.weight" not in matrix
    assert ("queries.0.weight" in matrix) == (preset == "cartesian-attention-tiny")


def test_attention_fades_a_lone_neighbour_out_smoothly_at_the_cutoff():
    model, backend = _model("cartesian-attention-tiny"), CartesianBackend(TYPES, 4.0, torch.float64)
    assert model.attention_heads == 2

    def energy_and_force(r):
        dimer = molecule("CO")
        dimer.positions[1] = dimer.positions[0] + [0.0, 0.0, r]
        energy, forces = backend.predict(model, _data(backend, dimer), True)
        return float(energy.detach()), float(forces.detach().abs().max())

    alone, _ = energy_and_force(4.5)  # beyond the cutoff: two isolated atoms
    for gap in (1e-2, 1e-3):
        energy, force = energy_and_force(4.0 - gap)
        assert abs(energy - alone) < 50 * gap**3 and force < 50 * gap**2  # the p = 6 envelope vanishes fast
    with pytest.raises(ValueError, match="attention_heads"):
        _model(attention_heads=3)  # 16 channels do not split into 3 heads


@pytest.mark.parametrize(
    "optimizer, direct, preset",
    [(o, d, "cartesian-tiny") for o in ("adamw", "muon", "soap", "soap_muon") for d in (False, True)]
    + [("soap", False, "cartesian-attention-tiny")],
)
def test_it_trains_with_the_matrix_optimizers(tmp_path, optimizer, direct, preset):
    config = tiny_config(
        tmp_path, model={"preset": preset, "options": {"direct_forces": direct}},
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


def test_stress_is_the_strain_derivative_of_the_energy_and_a_direct_head_has_none():
    from ase.calculators.calculator import PropertyNotImplementedError
    from ase.calculators.fd import calculate_numerical_stress

    from mlipopt.models.cartesian import CartesianCalculator

    crystal = bulk("C", "diamond", a=3.57).repeat((2, 1, 1))
    crystal.rattle(0.05, seed=1)
    crystal.set_cell(crystal.cell.array @ (np.eye(3) + 0.02 * np.random.default_rng(2).normal(size=(3, 3))),
                     scale_atoms=True)  # fmt: skip
    calc = CartesianCalculator(_model(), CartesianBackend(TYPES, 4.0, torch.float64))
    crystal.calc = calc
    stress = crystal.get_stress()
    assert np.abs(stress).max() > 1e-4  # a random model: the check below is not of zeros
    numeric = calculate_numerical_stress(crystal, eps=1e-5)
    assert np.abs(stress - numeric).max() < 1e-7 * max(1.0, np.abs(stress).max())
    forces = crystal.get_forces()
    plain = crystal.copy()
    plain.calc = CartesianCalculator(_model(), CartesianBackend(TYPES, 4.0, torch.float64))
    assert np.allclose(plain.get_forces(), forces, atol=1e-12)  # the strain path gives the same forces
    direct = crystal.copy()
    direct.calc = CartesianCalculator(_model(direct_forces=True), CartesianBackend(TYPES, 4.0, torch.float64))
    with pytest.raises(PropertyNotImplementedError):
        direct.get_stress()


def test_elastic_constants_of_a_conservative_cartesian_model_are_an_energy_hessian():
    """σ = (1/V) ∂E/∂ε makes ∂σ_i/∂ε_j = (1/V) ∂²E/∂ε_i∂ε_j − σ_i ∂lnV/∂ε_j: once the pre-stress term is
    added back, the tensor is symmetric, which a stress not derived from the energy would not be."""
    from ase import units

    from mlipopt.fidelity.observables import elastic_constants
    from mlipopt.models.cartesian import CartesianCalculator

    crystal = bulk("C", "fcc", a=3.2)  # monatomic Bravais lattice: no internal relaxation
    crystal.calc = CartesianCalculator(_model(), CartesianBackend(TYPES, 4.0, torch.float64))
    C = elastic_constants(crystal, strain=1e-4)
    prestress = crystal.get_stress() / units.GPa
    hessian = C.copy()
    hessian[:, :3] += prestress[:, None]  # ∂lnV/∂ε_j = 1 for the three normal strains, 0 for shears
    assert np.abs(C).max() > 0.05 and np.abs(prestress).max() > 0.05  # GPa: not a test of zeros
    assert np.abs(hessian - hessian.T).max() < 1e-5 * np.abs(C).max()
