"""Data-parallel training on 2 CPU processes (gloo): the same gradients and parameters as one process on
the union batch, sharded optimizer work equal to unsharded, identical ranks, exact resume (issue 13)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from mlipopt.optim._layout import Bucket
from mlipopt.optim._sharding import assign_rows, block_cost
from mlipopt.train import ConfigError, Trainer, load_config, train
from mlipopt.train.distributed import Ranks

from . import distributed_worker as worker

RUNS = [("adamw", False), ("soap", False), ("muon", False), ("soap", True), ("muon", True),
        ("soap_muon", False), ("soap_muon", True)]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FITS = ["adamw", "muon", "soap"]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One spawn of 2 ranks computes everything the tests below compare, once for the module."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker.train_runs, args=(2, _free_port(), str(out), RUNS, FITS), nprocs=2, join=True)
    return out


def _emulated_epoch(run_dir: Path, optimizer: str) -> dict[str, torch.Tensor]:
    """One process doing the 2 ranks' arithmetic: each global batch's two shares, their gradients added.
    On one thread, as each rank computes (more threads sum in another order: other bits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _emulate(run_dir, optimizer)
    finally:
        torch.set_num_threads(threads)


def _emulate(run_dir: Path, optimizer: str) -> dict[str, torch.Tensor]:
    trainer = Trainer(worker.config(run_dir, optimizer), log=lambda _: None)
    train, config = trainer.sets["train"], trainer.config
    trainer.model.train()
    for indices in train.batch_indices(config.data.batch_size, shuffle_seed=[config.seed, 0]):
        trainer.optimizer.zero_grad(set_to_none=True)
        for rank in (0, 1):
            share = Ranks(rank, 2).share(indices)
            if len(share):
                trainer.batch_loss(train.batch(share), len(indices)).total.backward()
        trainer.optimizer.step()
    return worker.parameters(trainer.model)


def _close(a: dict, b: dict, tol: float) -> float:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= tol, worst
    return worst


def test_a_frame_of_every_global_batch_goes_to_exactly_one_rank():
    for n in (1, 3, 7, 8):
        indices = np.random.default_rng(n).permutation(20)[:n]
        shares = [Ranks(r, 3).share(indices) for r in range(3)]
        assert sorted(np.concatenate(shares).tolist()) == sorted(indices.tolist())
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_shards_gradients_sum_to_the_union_batch_gradient(two_ranks, tmp_path):
    single = Trainer(worker.config(tmp_path, "adamw"), log=lambda _: None)
    train = single.sets["train"]
    single.batch_loss(train.batch(list(range(7)))).total.backward()
    expected = {n: p.grad for n, p in single.model.named_parameters() if p.grad is not None}
    for rank in (0, 1):
        got = torch.load(two_ranks / f"grads_rank{rank}.pt", weights_only=True)
        _close(got, expected, 1e-12)


@pytest.mark.parametrize("optimizer", ["adamw", "soap", "muon", "soap_muon"])
def test_an_epoch_on_two_ranks_is_bitwise_the_arithmetic_of_their_shards(two_ranks, tmp_path, optimizer):
    """Nothing but the shards' gradients enters: the 2-rank epoch (5 steps, the last with an empty shard)
    equals one process adding the same two shares' gradients, bit for bit."""
    expected = _emulated_epoch(tmp_path, optimizer)
    got = torch.load(two_ranks / f"{optimizer}-plain_rank0.pt", weights_only=True)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("optimizer", FITS)
def test_two_ranks_train_like_one_process_on_the_union_batches(two_ranks, tmp_path, optimizer):
    """A full epoch (5 steps, energy-shift refit, validation) on 2 ranks against one process on the union
    batches: gradients differ by summation order only (1e-12 above), and so do AdamW's and Muon's
    parameters (1e-10). SOAP's Adam in the eigenbasis divides coordinates whose gradient is rounding
    noise (~1e-15, the null directions of a rank-3 block) by √v + ε, ε = 1e-8: a 1e-18 perturbation of
    a gradient moves its update by ~1e-9 in one process too (docs/distributed.md), so SOAP is held to 1e-8
    with ``null_tolerance=1e-8`` (1.2e-5 apart with the default tolerance, measured)."""
    options = {"null_tolerance": 1e-8} if optimizer == "soap" else None
    trainer = Trainer(
        worker.config(tmp_path, optimizer, options=options, training={"max_epochs": 1}), log=lambda _: None
    )
    final = trainer.fit()
    expected = worker.parameters(trainer.model)
    got = torch.load(two_ranks / f"fit-{optimizer}_rank0.pt", weights_only=True)
    _close(got, expected, 1e-8 if optimizer == "soap" else 1e-10)
    metrics = torch.load(two_ranks / f"fit-{optimizer}_metrics_rank1.pt", weights_only=True)
    assert metrics["val"] == pytest.approx(trainer.history[-1]["val_metric"], rel=1e-6)
    assert metrics["test"]["f_mae"] == pytest.approx(final["test"]["f_mae"], rel=1e-6)


@pytest.mark.parametrize("optimizer", ["soap", "muon", "soap_muon"])
def test_sharded_block_work_gives_the_unsharded_parameters_and_state(two_ranks, optimizer):
    plain = torch.load(two_ranks / f"{optimizer}-plain_rank0.pt", weights_only=True)
    sharded = torch.load(two_ranks / f"{optimizer}-sharded_rank0.pt", weights_only=True)
    _close(sharded, plain, 1e-12)
    state = [
        torch.load(two_ranks / f"{optimizer}-sharded_optstate_rank{r}.pt", weights_only=True) for r in (0, 1)
    ]
    plain_state = torch.load(two_ranks / f"{optimizer}-plain_optstate_rank0.pt", weights_only=True)
    # the gathered state of a sharded run is the full state, on both ranks
    for pid, entry in plain_state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(state[0]["state"][pid][key], state[1]["state"][pid][key])
                assert torch.allclose(state[0]["state"][pid][key].double(), value.double(), atol=1e-10)


@pytest.mark.parametrize("name", [f"{o}-{'sharded' if s else 'plain'}" for o, s in RUNS])
def test_ranks_hold_bitwise_identical_parameters(two_ranks, name):
    a = torch.load(two_ranks / f"{name}_rank0.pt", weights_only=True)
    b = torch.load(two_ranks / f"{name}_rank1.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_row_assignment_covers_every_block_once_and_balances_cost():
    buckets = [Bucket((8, 8), True, "in_out", [(i, 0) for i in range(n)]) for n in (5, 1, 1, 2)]
    buckets.append(Bucket((32, 16), True, "in_out", [(0, 0)]))
    owners = assign_rows(buckets, 2)
    loads = [0.0, 0.0]
    for bucket, ranges in zip(buckets, owners):
        covered = sorted(i for _, lo, hi in ranges for i in range(lo, hi))
        assert covered == list(range(bucket.count))
        for rank, lo, hi in ranges:
            loads[rank] += (hi - lo) * block_cost(bucket.shape)
    biggest = max(block_cost(b.shape) for b in buckets)
    assert abs(loads[0] - loads[1]) <= biggest  # no better than one block apart in the worst case


# ---------------------------------------------------------------------------------------- torchrun
def _torchrun(config_path: Path, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "mlipopt.cli", "train", str(config_path), *extra,
    ]  # fmt: skip
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _write_config(tmp_path: Path, name: str, epochs: int) -> Path:
    import yaml

    config = worker.config(tmp_path / name, "soap", shard=True, training={"max_epochs": epochs})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    return path


def _ranks_of(launcher: subprocess.Popen) -> list:
    import psutil

    return [
        p
        for p in psutil.Process(launcher.pid).children(recursive=True)
        if "mlipopt.cli" in " ".join(p.cmdline())
    ]


def test_a_killed_rank_and_resume_reproduce_the_uninterrupted_run_bitwise(tmp_path):
    straight = _torchrun(_write_config(tmp_path, "straight", 4))
    output, _ = straight.communicate(timeout=600)
    assert straight.returncode == 0, output
    assert sum(line.startswith("epoch") for line in output.splitlines()) == 4  # rank 0 alone logs

    config = _write_config(tmp_path, "killed", 4)
    run = _torchrun(config)
    metrics = tmp_path / "killed" / "metrics.csv"
    deadline = time.time() + 600
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)  # two epochs checkpointed
    victims = _ranks_of(run)
    assert len(victims) == 2
    victims[-1].kill()  # one rank dies; torchrun stops the other
    output, _ = run.communicate(timeout=300)
    assert run.returncode != 0
    resumed = _torchrun(config)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert "resumed from" in output
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    rows = (tmp_path / "killed" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]  # each epoch recorded once
    assert a["world_size"] == b["world_size"] == 2


def test_train_leaves_the_group_it_joined_and_keeps_the_callers(tmp_path):
    mp.spawn(worker.train_leaves_its_group, args=(2, _free_port(), _free_port(), str(tmp_path)), nprocs=2,
             join=True)  # fmt: skip
    for rank in (0, 1):  # after its own group: left; after the caller's: still joined
        assert (tmp_path / f"rank{rank}.txt").read_text() == "False True"


def test_resuming_on_another_world_size_is_refused_unless_allowed(tmp_path):
    config = _write_config(tmp_path, "two", 1)
    run = _torchrun(config)
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output
    more = load_config(config, ["training.max_epochs=2"])
    with pytest.raises(ConfigError, match="written by a run on 2 process"):
        train(more, log=lambda _: None)
    allowed = load_config(config, ["training.max_epochs=2", "distributed.allow_world_size_change=true"])
    assert train(allowed, log=lambda _: None)["epochs"] == 2


def test_srun_and_torchrun_variables_give_the_process_its_place(monkeypatch):
    import os

    from mlipopt.train.distributed import _environment, launched_rank

    launcher = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        launcher.pop(key, None)
    monkeypatch.setattr(os, "environ", launcher)  # a private copy: nothing leaks into other tests
    assert _environment() is None and launched_rank() == 0
    launcher.update(SLURM_NTASKS="8", SLURM_PROCID="5", SLURM_LOCALID="1")
    assert _environment() is None  # srun without MASTER_ADDR: not a data-parallel launch
    launcher["MASTER_ADDR"] = "node1"
    assert _environment() == (5, 8, 1) and launched_rank() == 5
    assert (launcher["RANK"], launcher["WORLD_SIZE"], launcher["MASTER_PORT"]) == ("5", "8", "29500")
    launcher.update(WORLD_SIZE="1", RANK="0")  # torchrun's variables win; one process is no group
    assert _environment() is None


def test_soap_refuses_a_null_tolerance_outside_zero_to_one():
    from mlipopt.optim import SOAP

    p = torch.nn.Parameter(torch.zeros(3, 3))
    for bad in (-1e-8, 1.0):
        with pytest.raises(ValueError, match="null_tolerance"):
            SOAP([p], null_tolerance=bad)
    SOAP([p], null_tolerance=1e-8)
