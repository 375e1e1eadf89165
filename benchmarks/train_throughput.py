"""Training throughput: mlipopt's trainer versus ``nequip-train``, and optimizer cost in a whole step.

    python benchmarks/train_throughput.py            # ~5 min on 2 cores
    python benchmarks/train_throughput.py --epochs 2 --repeats 1   # quick look

Part 1 — frames per second of ``mlipopt train`` and ``nequip-train`` on the same NequIP model
(``nequip-small`` hyperparameters), the same 200 ethanol frames (../shared/data, or EMT-generated
ones when it is absent), batch size 5, AdamW, λ_E:λ_F = 1:10, no validation. Each tool is run as a
subprocess for 1 and for 1+E epochs and the difference of the wall times is divided into E·200
frames, so start-up (imports, data loading, neighbour lists) cancels. Runs alternate between the tools.

Part 2 — whole training step (forward, force backward, optimizer step) with SOAP, Muon and SOAP-Muon
relative to AdamW on the same model and data, in one process, optimizers interleaved per round.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "ethanol"
N_TRAIN = 200
MODEL = dict(
    r_max=4.5, num_layers=3, l_max=1, num_features=16, num_bessels=8, radial_mlp_depth=2, radial_mlp_width=32
)

NEQUIP_CONFIG = """
run: [train]
seed: 42
cutoff_radius: {r_max}
model_type_names: [H, C, O]
chemical_species: ${{model_type_names}}
dataloader: {{_target_: torch.utils.data.DataLoader, batch_size: 5}}
data:
  _target_: nequip.data.datamodule.NequIPDataModule
  seed: ${{seed}}
  split_dataset:
    dataset:
      _target_: nequip.data.dataset.ASEDataset
      file_path: {xyz}
      transforms:
        - _target_: nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper
          model_type_names: ${{model_type_names}}
          chemical_species_to_atom_type_map: ${{list_to_identity_dict:${{chemical_species}}}}
        - _target_: nequip.data.transforms.NeighborListTransform
          r_max: ${{cutoff_radius}}
    train: {n_train}
    val: 5
  train_dataloader: {{_target_: torch.utils.data.DataLoader, batch_size: 5, shuffle: true}}
  val_dataloader: ${{dataloader}}
  stats_manager:
    _target_: nequip.data.CommonDataStatisticsManager
    type_names: ${{model_type_names}}
trainer:
  _target_: lightning.Trainer
  max_epochs: 1
  check_val_every_n_epoch: 100000
  num_sanity_val_steps: 0
  enable_progress_bar: false
  logger: false
  enable_checkpointing: false
training_module:
  _target_: nequip.train.NequIPLightningModule
  loss:
    _target_: nequip.train.EnergyForceLoss
    per_atom_energy: true
    coeffs: {{total_energy: 1.0, forces: 10.0}}
  val_metrics:
    _target_: nequip.train.EnergyForceMetrics
    coeffs: {{total_energy_mae: 1.0, forces_mae: 1.0}}
  optimizer: {{_target_: torch.optim.AdamW, lr: 0.005}}
  model:
    _target_: nequip.model.NequIPGNNModel
    seed: ${{seed}}
    model_dtype: float32
    type_names: ${{model_type_names}}
    r_max: ${{cutoff_radius}}
    l_max: {l_max}
    parity: true
    num_layers: {num_layers}
    num_features: {num_features}
    num_bessels: {num_bessels}
    radial_mlp_depth: {radial_mlp_depth}
    radial_mlp_width: {radial_mlp_width}
    avg_num_neighbors: ${{training_data_stats:num_neighbors_mean}}
    per_type_energy_shifts: ${{training_data_stats:per_atom_energy_mean}}
    per_type_energy_scales: ${{training_data_stats:forces_rms}}
"""

MLIPOPT_CONFIG = """
seed: 42
data: {{train: {xyz}, split: [{n_train}, 0, 0], batch_size: 5, force_fraction: 1.0}}
model: {{preset: nequip-small, dtype: float32}}
optimizer: {{name: adamw, lr: 5.0e-3}}
loss: {{energy_weight: 1.0, force_weight: 10.0}}
training: {{max_epochs: 1, progress: false, checkpoint_every: 1}}
"""


def write_data(folder: Path) -> Path:
    import ase.io

    xyz = folder / "ethanol.xyz"
    if (SHARED / "train.xyz").is_file():
        frames = ase.io.read(SHARED / "train.xyz", index=f":{N_TRAIN + 5}")
        print(f"data: {len(frames)} rMD17 ethanol frames from {SHARED}")
    else:
        from mlipopt.data import generate_frames

        frames = generate_frames("ethanol", N_TRAIN + 5).atoms
        print("data: ../shared absent, EMT-generated ethanol frames")
    ase.io.write(xyz, frames, format="extxyz")
    return xyz


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return elapsed


def throughput(epochs: int, repeats: int, folder: Path) -> None:
    xyz = write_data(folder)
    (folder / "nequip.yaml").write_text(NEQUIP_CONFIG.format(xyz=xyz, n_train=N_TRAIN, **MODEL))
    (folder / "mlipopt.yaml").write_text(MLIPOPT_CONFIG.format(xyz=xyz, n_train=N_TRAIN))
    nequip_exe = shutil.which("nequip-train") or str(Path(sys.executable).parent / "nequip-train")
    mlipopt_exe = shutil.which("mlipopt") or str(Path(sys.executable).parent / "mlipopt")

    def nequip(n: int, i: int) -> float:
        run = folder / f"nequip-{n}-{i}"
        return timed(
            [
                nequip_exe,
                "-cp",
                str(folder),
                "-cn",
                "nequip",
                f"hydra.run.dir={run}",
                f"trainer.max_epochs={n}",
            ],
            folder,
        )

    def mlipopt(n: int, i: int) -> float:
        run = folder / f"mlipopt-{n}-{i}"
        return timed(
            [
                mlipopt_exe,
                "train",
                str(folder / "mlipopt.yaml"),
                f"training.max_epochs={n}",
                "--run-dir",
                str(run),
            ],
            folder,
        )

    rates: dict[str, list[float]] = {"mlipopt": [], "nequip-train": []}
    for i in range(repeats):
        for name, fn in (("mlipopt", mlipopt), ("nequip-train", nequip)):
            short, long = fn(1, i), fn(1 + epochs, i)
            rates[name].append(epochs * N_TRAIN / (long - short))
            print(
                f"  {name:<13} run {i + 1}: 1 epoch {short:6.1f} s, {1 + epochs} epochs {long:6.1f} s "
                f"-> {rates[name][-1]:6.1f} frames/s",
                flush=True,
            )
    ours, theirs = statistics.median(rates["mlipopt"]), statistics.median(rates["nequip-train"])
    print(
        f"\nframes/s (median of {repeats}): mlipopt {ours:.1f}, nequip-train {theirs:.1f}; "
        f"ratio {ours / theirs:.2f}x (target >= 1.0)"
    )


def step_costs(rounds: int, folder: Path) -> None:
    from mlipopt.train import Trainer, load_config

    trainers = {}
    for name, lr in (("adamw", 5e-3), ("soap", 5e-3), ("muon", 5e-3), ("soap_muon", 5e-4)):
        config = load_config(
            folder / "mlipopt.yaml",
            [f"optimizer.name={name}", f"optimizer.lr={lr}", f"run_dir={folder / name}"],
        )
        trainers[name] = Trainer(config, log=lambda _: None)
        trainers[name].train_epoch()  # warm-up: SOAP's first eigenbases, allocator
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(rounds):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            trainer.train_epoch()
            times[name].append(time.perf_counter() - start)
    steps = -(-N_TRAIN // 5)
    base = statistics.median(times["adamw"])
    print(
        f"\nwhole training step (forward + force backward + optimizer), {steps} steps per epoch, "
        f"median of {rounds} interleaved epochs:"
    )
    for name, t in times.items():
        med = statistics.median(t)
        print(f"  {name:<10} {1e3 * med / steps:7.1f} ms/step   {med / base:5.2f}x AdamW")
    print("target: SOAP <= 1.15x AdamW")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=4, help="epochs timed beyond the first")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved epochs per optimizer in part 2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print("part 1: training throughput, same NequIP model/data/optimizer (AdamW)")
        throughput(args.epochs, args.repeats, folder)
        print("\npart 2: optimizer cost inside the whole training step")
        step_costs(args.rounds, folder)


if __name__ == "__main__":
    main()
