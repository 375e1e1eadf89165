"""How far rounding moves SOAP (docs/distributed.md, "SOAP and rounding"). One process, float64
nequip-tiny on generated ethanol (the data-parallel tests' setting), about 1 min:

1. One epoch (5 steps) computed on the union batches against the same epoch with each batch's gradient
   summed from two shards (what 2 data-parallel ranks compute): the largest parameter difference, for
   SOAP with the default null tolerance and with ``null_tolerance=1e-8``, and for AdamW.
2. The first layer's 8 × 8 linear block: two SOAP steps on its real gradients, against the same with
   1e-18 Gaussian noise added to the gradients, for mlipopt's SOAP and for official SOAP
   (``null_space="official"``).

    python benchmarks/soap_rounding.py
"""

from __future__ import annotations

import numpy as np
import torch

from mlipopt.optim import SOAP
from mlipopt.train import Trainer, load_config

BLOCK = "model.func.layer0_convnet.conv.linear_1.weight"


def config(run_dir: str, optimizer: str, options: dict) -> object:
    return load_config({
        "seed": 3, "run_dir": run_dir,
        "data": {"generate": {"system": "ethanol", "n_frames": 25}, "split": [17, 4, 4], "batch_size": 4,
                 "force_fraction": 0.1},
        "model": {"preset": "nequip-tiny", "dtype": "float64"},
        "optimizer": {"name": optimizer, "lr": 5e-3, "options": options},
        "scheduler": {"name": "none"}, "training": {"progress": False},
    })  # fmt: skip


def epoch_gap(optimizer: str, options: dict) -> float:
    """Largest parameter difference after one epoch: union batches against two summed shards."""
    union = Trainer(config("/tmp/soap_rounding/a", optimizer, options), log=lambda _: None)
    shards = Trainer(config("/tmp/soap_rounding/b", optimizer, options), log=lambda _: None)
    train = union.sets["train"]
    for indices in train.batch_indices(4, shuffle_seed=[3, 0]):
        union.optimizer.zero_grad()
        union.batch_loss(train.batch(indices)).total.backward()
        shards.optimizer.zero_grad()
        for rank in (0, 1):
            share = np.asarray(indices)[rank::2]
            if len(share):
                shards.batch_loss(train.batch(share), len(indices)).total.backward()
        union.optimizer.step()
        shards.optimizer.step()
    a, b = dict(union.model.named_parameters()), dict(shards.model.named_parameters())
    return max(float((a[n] - b[n]).detach().abs().max()) for n in a)


def block_sensitivity(null_space: str) -> float:
    """Largest change of a block after two SOAP steps when its gradients carry 1e-18 noise (3 draws)."""
    trainer = Trainer(config("/tmp/soap_rounding/c", "soap", {}), log=lambda _: None)
    train = trainer.sets["train"]
    grads = []
    for k, indices in enumerate(train.batch_indices(4, shuffle_seed=[3, 0])):
        if k == 2:
            break
        trainer.optimizer.zero_grad()
        trainer.batch_loss(train.batch(indices)).total.backward()
        grads.append(dict(trainer.model.named_parameters())[BLOCK].grad.reshape(8, 8).clone())

    def run(noise_seed: int | None) -> torch.Tensor:
        p = torch.nn.Parameter(torch.zeros(8, 8, dtype=torch.float64))
        opt = SOAP([p], lr=5e-3, null_space=null_space)
        generator = torch.Generator().manual_seed(noise_seed or 0)
        for g in grads:
            noise = 1e-18 * torch.randn(8, 8, generator=generator, dtype=torch.float64)
            p.grad = g + (noise if noise_seed is not None else 0)
            opt.step()
        return p.detach().clone()

    base = run(None)
    return max(float((run(seed) - base).abs().max()) for seed in (1, 2, 3))


def main() -> None:
    torch.set_num_threads(1)
    print("| optimizer | union batches against two summed shards, after 5 steps |")
    print("|---|---|")
    cases = [("AdamW", "adamw", {}), ("SOAP", "soap", {}),
             ("SOAP, null_tolerance=1e-8", "soap", {"null_tolerance": 1e-8})]  # fmt: skip
    for name, optimizer, options in cases:
        print(f"| {name} | {epoch_gap(optimizer, options):.2g} |", flush=True)
    print("\n| SOAP | 8 × 8 block after two steps, gradients ± 1e-18 noise |")
    print("|---|---|")
    for rule in ("isotropic", "official"):
        print(f"| null_space={rule} | {block_sensitivity(rule):.2g} |", flush=True)


if __name__ == "__main__":
    main()
