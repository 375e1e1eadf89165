import numpy as np
import pytest
import torch
from ase.neighborlist import neighbor_list

from mlipopt.data import GraphSet, force_mask, generate_frames
from mlipopt.models.nequip import NequIPBackend


@pytest.fixture(scope="module")
def frames():
    return generate_frames("copper", 6, seed=3)


def test_neighbour_lists_match_ase(frames):
    graphs = GraphSet(frames, NequIPBackend(["Cu"], 3.0), ["Cu"])
    for atoms, graph in zip(frames.atoms, graphs.graphs):
        i, j = neighbor_list("ij", atoms, 3.0)
        assert graph["edge_index"].shape[1] == len(i)
        assert sorted(zip(i.tolist(), j.tolist())) == sorted(map(tuple, graph["edge_index"].T.tolist()))
    assert graphs.graphs[0]["pos"].dtype == torch.float64


def test_masked_frames_lose_their_force_labels(frames):
    mask = force_mask(len(frames), 0.5, seed=0)
    graphs = GraphSet(frames, NequIPBackend(["Cu"], 3.0), ["Cu"], force_mask=mask)
    assert graphs.n_force_frames == 3
    for keep, f, original in zip(mask, graphs.forces, frames.forces):
        if keep:
            np.testing.assert_array_equal(f.numpy(), original)
        else:
            assert not f.any()
    assert graphs.mean_force_components() == pytest.approx(3 * 32 * 3 / 6)
    batch = graphs.batch([0, 1, 2, 3])
    assert batch.energy.shape == (4,) and batch.forces.shape == (128, 3)
    np.testing.assert_array_equal(batch.atom_mask.numpy(), np.repeat(mask[:4], 32))


def test_batches_cover_the_split_in_seeded_order(frames):
    graphs = GraphSet(frames, NequIPBackend(["Cu"], 3.0), ["Cu"])
    first = [b.energy for b in graphs.batches(4, shuffle_seed=[1, 0])]
    second = [b.energy for b in graphs.batches(4, shuffle_seed=[1, 0])]
    assert [len(e) for e in first] == [4, 2]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert sorted(torch.cat(first).tolist()) == sorted(frames.energy.tolist())


def test_first_graphs_of_a_process_keep_float64_positions():
    """Regression: before nequip's global state was set, from_ase rounded positions to float32."""
    import subprocess
    import sys

    code = (
        "import numpy as np, torch\n"
        "from ase import Atoms\n"
        "from mlipopt.models.nequip import to_graph\n"
        "atoms = Atoms('H2', positions=[[0, 0, 0], [0.1 + 1e-12, 0.7, 0.3]])\n"
        "g = to_graph(atoms, ['H'], 2.0)\n"
        "assert g['pos'].dtype == torch.float64\n"
        "assert np.array_equal(g['pos'].numpy(), atoms.positions), g['pos'].numpy() - atoms.positions\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
