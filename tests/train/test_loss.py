import numpy as np
import pytest
import torch

from mlipopt.data import GraphSet, force_mask, generate_frames
from mlipopt.models.nequip import NequIPBackend
from mlipopt.train import ErrorMetrics, eq11_loss, validation_metric


@pytest.fixture(scope="module")
def graphs():
    frames = generate_frames("ethanol", 8, seed=1)
    return GraphSet(
        frames, NequIPBackend(["H", "C", "O"], 4.0), ["H", "C", "O"], force_mask=force_mask(8, 0.5, seed=0)
    )


def predictions(graphs, seed=0):
    g = torch.Generator().manual_seed(seed)
    energy = graphs.energy + torch.randn(len(graphs), generator=g, dtype=torch.float64)
    forces = [torch.randn(len(a), 3, generator=g, dtype=torch.float64) for a in graphs.frames.atoms]
    return energy, forces


def eq11_by_hand(graphs, energy, forces, lam_e, lam_f):
    """Seed 001 eq. 11 (energy per atom), written out over the whole split."""
    n = np.array([len(a) for a in graphs.frames.atoms])
    m = graphs.force_mask.numpy()
    e_term = np.mean(((energy.numpy() - graphs.frames.energy) / n) ** 2)
    sq = [np.sum((f.numpy() - np.asarray(t)) ** 2) for f, t in zip(forces, graphs.frames.forces)]
    f_term = np.sum(m * np.array(sq)) / (3 * np.sum(m * n))
    return lam_e * e_term + lam_f * f_term


def test_full_batch_is_eq11(graphs):
    energy, forces = predictions(graphs)
    batch = graphs.batch(range(len(graphs)))
    loss = eq11_loss(energy, torch.cat(forces), batch, 1.0, 10.0, graphs.mean_force_components())
    assert float(loss.total) == pytest.approx(eq11_by_hand(graphs, energy, forces, 1.0, 10.0), rel=1e-12)


def test_minibatch_average_is_eq11(graphs):
    """Equal-size batches partitioning the split average to eq. 11 exactly (unbiased estimator)."""
    energy, forces = predictions(graphs, seed=1)
    c = graphs.mean_force_components()
    losses = []
    for idx in ([0, 5], [1, 2], [3, 7], [4, 6]):
        batch = graphs.batch(idx)
        losses.append(
            float(eq11_loss(energy[idx], torch.cat([forces[i] for i in idx]), batch, 2.0, 3.0, c).total)
        )
    assert np.mean(losses) == pytest.approx(eq11_by_hand(graphs, energy, forces, 2.0, 3.0), rel=1e-12)


def test_unlabelled_batch_has_no_force_term(graphs):
    energy, forces = predictions(graphs)
    unlabelled = [i for i in range(len(graphs)) if not graphs.force_mask[i]]
    batch = graphs.batch(unlabelled)
    loss = eq11_loss(energy[unlabelled], torch.cat([forces[i] for i in unlabelled]), batch, 1.0, 1.0, 5.0)
    assert float(loss.forces) == 0.0
    assert float(loss.total) == float(loss.energy)


def test_error_metrics(graphs):
    energy, forces = predictions(graphs, seed=2)
    metrics = ErrorMetrics()
    for idx in ([0, 1, 2], [3, 4, 5, 6, 7]):
        metrics.update(energy[idx], torch.cat([forces[i] for i in idx]), graphs.batch(idx))
    out = metrics.result()
    n = np.array([len(a) for a in graphs.frames.atoms])
    de = (energy.numpy() - graphs.frames.energy) / n
    labelled = [i for i in range(8) if graphs.force_mask[i]]
    df = np.concatenate([forces[i].numpy() - graphs.frames.forces[i] for i in labelled]).ravel()
    assert out["e_mae"] == pytest.approx(1e3 * np.abs(de).mean())
    assert out["e_rmse"] == pytest.approx(1e3 * np.sqrt((de**2).mean()))
    assert out["f_mae"] == pytest.approx(1e3 * np.abs(df).mean())
    assert out["f_rmse"] == pytest.approx(1e3 * np.sqrt((df**2).mean()))
    assert validation_metric(out) == pytest.approx(10 * out["e_mae"] + out["f_mae"])
    assert validation_metric({**out, "f_mae": None}) == pytest.approx(10 * out["e_mae"])
