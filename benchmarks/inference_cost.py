"""Inference cost (µs/atom/step, energy + forces) of the model presets, measured twice in one run. The
second median should fall inside the first's reported spread, the 5th–95th percentiles of its samples
(issue 14's "timed twice agrees within its reported spread"). Each measurement times all models
interleaved in independent blocks, each block in a fresh process (mlipopt.models.cost.inference_costs),
as an architectures study does. The table also shows whether the second median falls inside the
first's interquartile range of samples and inside the range of its block medians (the spread quoted
before). A timing check belongs here, not in the test suite.

    python benchmarks/inference_cost.py                                    # ~7 min on 2 cores
    python benchmarks/inference_cost.py --presets nequip-small,sevennet-0 --batches 1
"""

from __future__ import annotations

import argparse
import time

import torch

from mlipopt.models.cost import inference_costs, machine


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", default="cartesian-small,nequip-small,allegro-small")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--min-sample-s", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sections = {preset: {"preset": preset} for preset in args.presets.split(",")}
    options = dict(
        batch_sizes=tuple(int(b) for b in args.batches.split(",")),
        repeats=args.repeats,
        blocks=args.blocks,
        min_sample_s=args.min_sample_s,
    )
    print(f"measured on {machine()}; {args.blocks} interleaved blocks of {args.repeats} samples "
          f"of at least {args.min_sample_s * 1e3:g} ms\n")  # fmt: skip
    start = time.perf_counter()
    first = inference_costs(sections, **options)
    second = inference_costs(sections, **options)
    print("| model | structure | batch | first: median µs/atom/step | 5–95 % of samples | IQR of samples "
          "| range of block medians | second: median | inside 5–95 % | inside IQR "
          "| inside block range |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    inside = in_iqr = in_blocks = total = 0
    worst = 0.0
    for preset in sections:
        for a, b in zip(first[preset], second[preset]):
            iqr = a["q25_us"] <= b["median_us"] <= a["q75_us"]
            blocks = a["low_us"] <= b["median_us"] <= a["high_us"]
            ok = a["p05_us"] <= b["median_us"] <= a["p95_us"]
            inside += ok
            in_iqr += iqr
            in_blocks += blocks
            total += 1
            worst = max(worst, abs(b["median_us"] / a["median_us"] - 1))
            print(
                f"| {preset} | {a['structure']} | {a['batch']} | {a['median_us']:.1f} | {a['p05_us']:.1f}–"
                f"{a['p95_us']:.1f} | {a['q25_us']:.1f}–{a['q75_us']:.1f} | {a['low_us']:.1f}–"
                f"{a['high_us']:.1f} | {b['median_us']:.1f} | {_yes(ok)} | {_yes(iqr)} | {_yes(blocks)} |",
                flush=True,
            )
    print(f"\n{inside} of {total} second medians inside the first's 5th–95th percentiles of samples "
          f"({in_iqr} inside its interquartile range, {in_blocks} inside its range of block medians); "
          f"the medians differ by at most "
          f"{100 * worst:.1f} %; {time.perf_counter() - start:.0f} s")  # fmt: skip


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


if __name__ == "__main__":
    main()
