import pytest

from mlipopt.train import ConfigError, load_config

GEN = {"data": {"generate": {}}}


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(
        ConfigError, match=r"unknown config key 'optimizer.learning_rate'.*valid keys here: name, lr"
    ):
        load_config({**GEN, "optimizer": {"learning_rate": 1e-3}})
    with pytest.raises(ConfigError, match=r"'data.batchsize'; did you mean 'batch_size'"):
        load_config({"data": {"generate": {}, "batchsize": 3}})


@pytest.mark.parametrize(
    "section, value, message",
    [
        ({"training": {"max_epochs": 2.5}}, None, r"training.max_epochs: expected an integer, got 2.5"),
        ({"optimizer": {"lr": "fast"}}, None, r"optimizer.lr: expected a number, got 'fast'"),
        ({"training": {"progress": "yes"}}, None, r"training.progress: expected true or false"),
        ({"data": {"generate": {}, "split": 0.8}}, None, r"data.split: expected a list"),
        ({"optimizer": {"name": "adagrad"}}, None, r"unknown optimizer 'adagrad'"),
        ({"model": {"preset": "mace"}}, None, r"model.preset 'mace' unknown"),
        ({"data": {"generate": {}, "force_fraction": 1.5}}, None, "force_fraction must be ≥ 0 and ≤ 1"),
        ({"data": {}}, None, r"exactly one of data.train"),
    ],
)
def test_ill_typed_and_inconsistent_values(section, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config({**GEN, **section})


def test_yaml_file_overrides_and_relative_paths(tmp_path):
    (tmp_path / "cfg").mkdir()
    config_file = tmp_path / "cfg" / "run.yaml"
    config_file.write_text("data:\n  train: ../data/train.xyz\noptimizer:\n  name: SOAP\n  lr: 1e-3\n")
    config = load_config(
        config_file, ["optimizer.lr=3e-3", "data.force_fraction=0.1", "loss.force_weight=10"]
    )
    assert config.data.train == str(tmp_path / "data" / "train.xyz")
    assert config.optimizer.name == "soap"
    assert config.optimizer.lr == 3e-3  # YAML 1.1 reads 1e-3 as a string; the schema converts it
    assert config.data.force_fraction == 0.1
    # two commands that differ in a key do not share the default run folder; continuing keys keep it
    assert config.run_dir.startswith("runs/run-") and load_config(config_file).run_dir == "runs/run"
    assert load_config(config_file, ["training.max_epochs=7"]).run_dir == "runs/run"
    other = load_config(config_file, ["optimizer.lr=1e-2", "data.force_fraction=0.1", "loss.force_weight=10"])
    assert other.run_dir != config.run_dir
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(config_file, ["optimizer.lr"])


def test_bad_yaml(tmp_path):
    (tmp_path / "bad.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")
