"""Inference cost: models measured interleaved in rounds, each sample long enough to time."""

from __future__ import annotations

import time

import pytest

import mlipopt.models.cost as cost


def test_models_are_timed_in_rounds_with_a_rotating_order(monkeypatch):
    built = []
    real = cost.build_model

    def recording(preset, *args, **kwargs):
        built.append(preset)
        return real(preset, *args, **kwargs)

    monkeypatch.setattr(cost, "build_model", recording)
    sections = {"a": {"preset": "cartesian-tiny"}, "b": {"preset": "nequip-tiny"}}
    rows = cost.inference_costs(
        sections, batch_sizes=(1,), warmup=1, repeats=3, blocks=3, min_sample_s=0.0, isolate=False
    )
    # every round builds every model afresh; the first model of a round rotates
    assert built == ["cartesian-tiny", "nequip-tiny", "nequip-tiny", "cartesian-tiny"] + [
        "cartesian-tiny",
        "nequip-tiny",
    ]
    for label in sections:
        assert {r["structure"] for r in rows[label]} == {"3bpa", "water-96", "diamond-256"}
        for r in rows[label]:
            assert r["blocks"] == 3 and r["repeats"] == 3
            # the median of equal blocks lies between the smallest and the largest block median
            assert r["low_us"] <= r["median_us"] <= r["high_us"]
            assert r["p05_us"] <= r["q25_us"] <= r["median_us"] <= r["q75_us"] <= r["p95_us"]


def test_a_sample_averages_enough_calls_to_last_the_minimum_time():
    calls = []

    def call():
        calls.append(1)

    times = cost.timed_samples(call, warmup=2, repeats=4, min_sample_s=0.001)
    assert len(times) == 4
    assert len(calls) > 2 + 4  # an almost free call is repeated within each sample
    calls.clear()
    assert len(cost.timed_samples(call, warmup=1, repeats=3, min_sample_s=0.0)) == 3
    assert len(calls) == cost.MIN_WARMUP + 3  # no minimum: one call per sample, after the warm-up floor


def test_a_call_that_compiles_on_its_first_calls_is_timed_after_them():
    # planted: the first two calls are slow (a JIT profiling and optimizing), later ones fast
    durations = iter([0.05, 0.02] + [0.0] * 1000)

    def call():
        time.sleep(next(durations))

    times = cost.timed_samples(call, warmup=1, repeats=3, min_sample_s=0.0)
    assert max(times) < 0.01  # no sample holds a compiling call


def test_isolated_blocks_run_in_fresh_processes_and_a_failing_block_says_why():
    rows = cost.inference_costs(
        {"tiny": {"preset": "cartesian-tiny"}},
        batch_sizes=(1, 2),
        warmup=1,
        repeats=2,
        blocks=2,
        min_sample_s=0.0,
    )["tiny"]
    assert len(rows) == 3 * 2 and all(r["blocks"] == 2 and r["low_us"] > 0 for r in rows)
    with pytest.raises(RuntimeError, match="own process"):
        cost.inference_costs({"bad": {"preset": "cartesian-tiny", "options": {"hidden": -1}}}, blocks=1)


def test_the_quoted_spread_holds_both_speeds_of_a_call_that_switches_between_blocks():
    # planted: 6 blocks of 5 samples, two blocks at a slow speed (300 µs), four at a fast one (200 µs)
    fast, slow = [200.0, 201.0, 202.0, 203.0, 204.0], [300.0, 301.0, 302.0, 303.0, 304.0]
    blocks = [fast, slow, fast, fast, slow, fast]
    (row,) = cost._summary({("diamond-256", 8): blocks}, {"diamond-256": 256}, repeats=5, blocks=6)
    assert row["median_us"] == 203.0  # 30 samples: the 15th and 16th are both 203
    assert (row["low_us"], row["high_us"]) == (202.0, 302.0)
    # the pooled 5th-95th percentiles reach into both speeds, beyond either block's median
    assert 200.0 <= row["p05_us"] < 202.0 and 302.0 < row["p95_us"] <= 304.0
    assert row["q25_us"] == pytest.approx(201.0) and row["q75_us"] == pytest.approx(301.0)
