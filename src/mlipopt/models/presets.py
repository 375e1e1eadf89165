"""Named architectures of every family: NequIP/Allegro at Harari et al. table 3 sizes, small and tiny
CPU models, MACE, and the pretrained SevenNet-0 (each entry names its ``family``).

Harari et al. table 3 trains the per-type energy shifts; here that is ``model.energy_shifts: trainable``
(the default, ``refit``, fits them in closed form instead: :mod:`mlipopt.models.energy_shifts`).
"""

from __future__ import annotations

from typing import Any

#: NequIP on water (Harari et al. table 3b) and Allegro on CDP (table 3a), plus tiny CPU variants.
PRESETS: dict[str, dict[str, Any]] = {
    "nequip-seed001": dict(
        family="nequip",
        r_max=4.5,
        num_layers=4,
        l_max=2,
        parity=True,
        num_features=32,
        num_bessels=8,
        bessel_trainable=False,
        polynomial_cutoff_p=6,
        radial_mlp_depth=3,
        radial_mlp_width=64,
        per_type_energy_scales_trainable=True,
    ),
    "allegro-seed001": dict(
        family="allegro",
        r_max=7.0,
        num_layers=2,
        l_max=2,
        parity=True,
        num_scalar_features=32,
        num_tensor_features=32,
        radial_chemical_embed={
            "_target_": "allegro.nn.TwoBodyBesselScalarEmbed",
            "num_bessels": 8,
            "bessel_trainable": False,
        },
        radial_chemical_embed_dim=32,
        scalar_embed_mlp_hidden_layers_depth=2,
        scalar_embed_mlp_hidden_layers_width=128,
        allegro_mlp_hidden_layers_depth=2,
        allegro_mlp_hidden_layers_width=128,
        tp_path_channel_coupling=False,
        readout_mlp_hidden_layers_depth=1,
        readout_mlp_hidden_layers_width=32,
        readout_mlp_nonlinearity=None,
        per_type_energy_scales_trainable=True,
    ),
    "nequip-tiny": dict(
        family="nequip",
        r_max=4.0,
        num_layers=2,
        l_max=1,
        num_features=8,
        radial_mlp_depth=2,
        radial_mlp_width=16,
    ),
    "nequip-small": dict(
        family="nequip",
        r_max=4.5,
        num_layers=3,
        l_max=1,
        parity=True,
        num_features=16,
        num_bessels=8,
        radial_mlp_depth=2,
        radial_mlp_width=32,
    ),
    "allegro-small": dict(
        family="allegro",
        r_max=5.0,
        num_layers=2,
        l_max=1,
        num_scalar_features=16,
        num_tensor_features=8,
        radial_chemical_embed={"_target_": "allegro.nn.TwoBodyBesselScalarEmbed", "num_bessels": 8},
        allegro_mlp_hidden_layers_depth=1,
        allegro_mlp_hidden_layers_width=32,
    ),
    # unconstrained (not equivariant) message passing on Cartesian neighbour vectors (models/cartesian.py)
    "cartesian-small": dict(family="cartesian", r_max=5.0, hidden=64, num_basis=8, layers=2),
    "cartesian-tiny": dict(family="cartesian", r_max=4.0, hidden=16, num_basis=6, layers=1),
    # the same with multi-head attention over neighbours instead of their sum
    "cartesian-attention-small": dict(
        family="cartesian", r_max=5.0, hidden=64, num_basis=8, layers=2, attention_heads=4
    ),
    "cartesian-attention-tiny": dict(
        family="cartesian", r_max=4.0, hidden=16, num_basis=6, layers=1, attention_heads=2
    ),
    # MACE (its own environment: `pip install 'mlipopt[mace]'`), ScaleShiftMACE trained from scratch
    "mace-small": dict(
        family="mace",
        r_max=5.0,
        hidden_irreps="16x0e+16x1o",
        MLP_irreps="16x0e",
        num_interactions=2,
        max_ell=2,
        correlation=3,
        radial_MLP=[32, 32],
    ),
    "mace-tiny": dict(
        family="mace",
        r_max=4.0,
        hidden_irreps="8x0e+8x1o",
        MLP_irreps="8x0e",
        num_interactions=2,
        max_ell=1,
        correlation=2,
        radial_MLP=[16, 16],
    ),
    # a MACE model file (model.file): fine-tuned; its cutoff and elements come from the file
    "mace-file": dict(family="mace", r_max=0.0),
    # the pretrained foundation model shipped in the sevenn wheel (842,623 parameters, 5 layers, l_max 2)
    "sevennet-0": dict(family="sevennet", r_max=5.0, checkpoint="7net-0"),
    "allegro-tiny": dict(
        family="allegro",
        r_max=4.0,
        num_layers=2,
        l_max=1,
        num_scalar_features=8,
        num_tensor_features=4,
        radial_chemical_embed={"_target_": "allegro.nn.TwoBodyBesselScalarEmbed", "num_bessels": 8},
        allegro_mlp_hidden_layers_depth=1,
        allegro_mlp_hidden_layers_width=16,
    ),
}
