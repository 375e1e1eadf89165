import pytest
import torch

from mlipopt.optim import SOAP, Muon, SOAPMuon
from mlipopt.structure import describe, discover, param_groups

from .models import tiny_allegro, tiny_nequip, water_batch


def _check_partition(model, groups):
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)), "a parameter appears twice"
    assert set(ids) == {id(p) for p in model.parameters()}, "a parameter is missing"
    for g in groups:
        assert len(g["param_names"]) == len(g["params"])
        if g["role"] == "matrix":
            assert len(g["blocks"]) == len(g["params"]) == len(g["layouts"])
            for blocks in g["blocks"]:
                for start, stop, shape in blocks:  # primitives only: checkpoint friendly
                    assert isinstance(start, int) and isinstance(stop, int)
                    assert all(isinstance(s, int) for s in shape)


@pytest.mark.parametrize("tp_blocks", ["adam", "flatten", "tensor"])
def test_nequip_every_parameter_exactly_once(tp_blocks):
    model = tiny_nequip()
    _check_partition(model, param_groups(model, tp_blocks=tp_blocks))


def test_nequip_roles_follow_seed_001_table_2():
    model = tiny_nequip()
    infos = {i.name: i for i in discover(model, tp_blocks="adam")}  # seed 001's policy (default: flatten)
    role = {name.split("model.func.")[-1]: i.role for name, i in infos.items()}
    assert role["type_embed.embed_module.weight"] == "adam"
    assert role["per_atom_energy_readout.mlp_module.mlp.0.weight"] == "adam"  # (features, 1)
    assert role["layer0_convnet.conv.edge_mlp.mlp.0.weight"] == "matrix"
    assert role["layer0_convnet.conv.linear_1.weight"] == "matrix"
    assert role["layer1_convnet.conv.sc.weight"] == "adam"  # tensor product, tp_blocks="adam"
    assert all(i.kind != "other" for i in infos.values() if i.role == "matrix")


def test_e3nn_linear_blocks_are_its_instruction_weights():
    """Our blocks view exactly the weights e3nn uses for each instruction."""
    model = tiny_nequip(l_max=2)
    modules = dict(model.named_modules())
    checked = 0
    for info in discover(model):
        if info.kind != "e3nn-linear":
            continue
        module = modules[info.name.rpartition(".")[0]]
        weight = module.weight
        instructions = [ins for ins in module.instructions if ins.i_in != -1]
        assert len(info.blocks) == len(instructions)
        for k, (start, stop, shape) in enumerate(info.blocks):
            expected = module.weight_view_for_instruction(k, weight)
            assert tuple(expected.shape) == shape
            assert torch.equal(weight[start:stop].view(shape), expected)
            checked += 1
    assert checked >= 6


@pytest.mark.parametrize("tp_blocks,ndim", [("flatten", 2), ("tensor", 3)])
def test_tensor_product_blocks(tp_blocks, ndim):
    model = tiny_nequip()
    modules = dict(model.named_modules())
    tps = [i for i in discover(model, tp_blocks=tp_blocks) if i.kind == "e3nn-tp"]
    assert tps and all(i.role == "matrix" for i in tps)
    for info in tps:
        module = modules[info.name.rpartition(".")[0]]
        weighted = [k for k, ins in enumerate(module.instructions) if ins.has_weight]
        for (start, stop, shape), k in zip(info.blocks, weighted):
            assert len(shape) == ndim
            view = module.weight_view_for_instruction(k, module.weight)
            assert torch.equal(module.weight[start:stop].view(view.shape), view)


def test_allegro_roles():
    model = tiny_allegro()
    groups = param_groups(model)
    _check_partition(model, groups)
    role = {i.name.split("model.func.")[-1]: i.role for i in discover(model)}
    assert role["allegro.tps.0.weights"] == "adam"  # tensor-product path weights (channels, paths)
    assert role["edge_readout.mlp_module.mlp.2.weight"] == "adam"  # readout (features, 1)
    assert role["radial_chemical_embed.type_embed.center_embed.weight"] == "adam"
    assert role["allegro.latents.0.mlp.0.weight"] == "matrix"
    assert role["allegro.first_layer_env_embed_projection.mlp.0.weight"] == "matrix"
    assert role["scalar_embed_mlp.mlp_module.mlp.0.weight"] == "matrix"


def test_torch_linear_readout_and_override():
    model = torch.nn.Sequential(torch.nn.Embedding(4, 8), torch.nn.Linear(8, 16), torch.nn.Linear(16, 1))
    infos = {i.name: i for i in discover(model)}
    assert infos["0.weight"].role == "adam"
    assert infos["1.weight"].role == "matrix" and infos["1.weight"].fan == "out_in"
    assert infos["1.bias"].role == "adam"
    assert infos["2.weight"].role == "adam"
    forced = {i.name: i.role for i in discover(model, adam_names=[r"^1\."])}
    assert forced["1.weight"] == "adam"
    with pytest.raises(ValueError, match="tp_blocks"):
        discover(model, tp_blocks="matrix")


def test_group_options_and_role_overrides():
    model = tiny_nequip()
    groups = param_groups(model, weight_decay=1e-5, adam={"lr": 1e-3}, matrix={"betas": (0.95, 0.98)})
    by_role = {g["role"]: g for g in groups}
    assert by_role["adam"]["lr"] == 1e-3 and by_role["adam"]["weight_decay"] == 1e-5
    assert by_role["matrix"]["betas"] == (0.95, 0.98)


def test_describe_lists_every_parameter_and_counts():
    model = tiny_nequip()
    text = describe(model, tp_blocks="flatten")
    for name, _ in model.named_parameters():
        assert name in text
    total = sum(p.numel() for p in model.parameters())
    assert f"total: {total} parameters" in text
    assert "matrix:" in text and "adam:" in text


@pytest.mark.parametrize(
    "factory",
    [
        lambda g: SOAP(g, lr=1e-2),
        lambda g: SOAPMuon(g, lr=3e-3),
        lambda g: Muon(g, lr=1e-2),
    ],
    ids=["soap", "soap_muon", "muon"],
)
@pytest.mark.parametrize("tp_blocks", ["adam", "flatten", "tensor"])
def test_optimizers_train_a_real_nequip_model(factory, tp_blocks):
    """Energy+force loss on one ethanol frame falls when the structure groups drive the optimizer."""
    model = tiny_nequip()
    data = water_batch()
    target_f = torch.zeros_like(data["pos"])
    opt = factory(param_groups(model, tp_blocks=tp_blocks))

    def loss_fn():
        out = model(dict(data))
        return (out["total_energy"] + 1.0).pow(2).sum() + (out["forces"] - target_f).pow(2).mean()

    first = float(loss_fn().detach())
    for _ in range(20):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert float(loss_fn().detach()) < 0.5 * first


def test_e3nn_fully_connected_layers_readouts_and_onehot_embeddings():
    """SevenNet-style pieces: e3nn FullyConnectedNet radial MLPs are matrices, a Linear to one scalar is
    a readout, and a Linear on one-hot species is an embedding (both Adam)."""
    from e3nn import o3
    from e3nn.nn import FullyConnectedNet

    from mlipopt.structure import discover

    model = torch.nn.Module()
    model.weight_nn = FullyConnectedNet([8, 16, 1])
    model.onehot_to_feature = o3.Linear("5x0e", "16x0e")
    model.reduce_to_energy = o3.Linear("16x0e", "1x0e")
    model.mix = o3.Linear("16x0e+4x1o", "16x0e+4x1o")
    roles = {i.name: (i.kind, i.role, i.blocks) for i in discover(model)}
    assert roles["weight_nn.layer0.weight"] == ("linear", "matrix", ((0, 128, (8, 16)),))
    assert roles["weight_nn.layer1.weight"][:2] == ("readout", "adam")
    assert roles["onehot_to_feature.weight"][:2] == ("embedding", "adam")
    assert roles["reduce_to_energy.weight"][:2] == ("readout", "adam")
    assert roles["mix.weight"][1] == "matrix" and len(roles["mix.weight"][2]) == 2
