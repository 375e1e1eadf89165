"""Inference cost (µs/atom/step, energy + forces) of the model presets, timed twice in one run. The second
median should fall inside the first's reported spread, the range of its block medians (issue 14's
"timed twice agrees within its reported spread"). The table also shows whether it falls inside the
first's interquartile range of single calls. A timing check belongs here, not in the test suite.

    python benchmarks/inference_cost.py                                    # ~3 min on 2 cores
    python benchmarks/inference_cost.py --presets nequip-small,sevennet-0 --batches 1
"""

from __future__ import annotations

import argparse

import torch

from mlipopt.models.cost import inference_cost, machine


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", default="cartesian-small,nequip-small,allegro-small")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--blocks", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = tuple(int(b) for b in args.batches.split(","))
    print(f"measured on {machine()}\n")
    print("| model | structure | batch | first: median µs/atom/step | IQR of calls | range of block medians "
          "| second: median | inside IQR | inside block range |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    inside = in_iqr = total = 0
    for preset in args.presets.split(","):
        first = inference_cost({"preset": preset}, batches, repeats=args.repeats, blocks=args.blocks)
        second = inference_cost({"preset": preset}, batches, repeats=args.repeats, blocks=args.blocks)
        for a, b in zip(first, second):
            iqr = a["q25_us"] <= b["median_us"] <= a["q75_us"]
            ok = a["low_us"] <= b["median_us"] <= a["high_us"]
            inside += ok
            in_iqr += iqr
            total += 1
            print(
                f"| {preset} | {a['structure']} | {a['batch']} | {a['median_us']:.1f} | {a['q25_us']:.1f}–"
                f"{a['q75_us']:.1f} | {a['low_us']:.1f}–{a['high_us']:.1f} | {b['median_us']:.1f} | "
                f"{'yes' if iqr else 'no'} | {'yes' if ok else 'no'} |",
                flush=True,
            )
    print(f"\n{inside} of {total} second medians inside the first's range of block medians "
          f"({in_iqr} inside its interquartile range of calls)")  # fmt: skip


if __name__ == "__main__":
    main()
