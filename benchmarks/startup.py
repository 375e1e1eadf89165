"""Start-up of the command line against `python -c "import torch"`: `mlipopt --help` and a one-line config
error (a misspelt optimizer name), each run as a whole process, interleaved with the yardstick so a
machine whose speed drifts shifts both alike. Issue 22's target: each within 0.5 s of importing torch.

    python benchmarks/startup.py --rounds 7

Prints per command the median wall-clock seconds, and the median over rounds of (command − import torch)
measured in the same round.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = """seed: 1
data: {generate: {system: ethanol, n_frames: 8}, split: [4, 2, 2]}
model: {preset: nequip-tiny}
optimizer: {name: soapp, lr: 1.0e-3}
"""


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (one warm-up round first)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    (folder / "typo.yaml").write_text(CONFIG)
    commands = {
        "import torch": [sys.executable, "-c", "import torch"],
        "mlipopt --help": [sys.executable, "-m", "mlipopt.cli", "--help"],
        "mlipopt train typo.yaml": [sys.executable, "-m", "mlipopt.cli", "train", str(folder / "typo.yaml")],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(args.rounds + 1):
        for name, command in commands.items():
            seconds = wall(command)
            if round_:  # the first round warms the page cache
                times[name].append(seconds)
    base = times["import torch"]
    print(f"{args.rounds} interleaved rounds, {sys.executable}")
    print("| command | median s | median (command − import torch) s |")
    print("|---|---|---|")
    for name, values in times.items():
        delta = statistics.median(v - b for v, b in zip(values, base))
        print(f"| {name} | {statistics.median(values):.3f} | {delta:+.3f} |")


if __name__ == "__main__":
    main()
