import json

from mlipopt.cli import main

CONFIG = """
seed: 1
data:
  generate: {system: ethanol, n_frames: 12}
  split: [8, 2, 2]
  batch_size: 4
model: {preset: nequip-tiny}
optimizer: {name: adamw, lr: 1.0e-3}
training: {max_epochs: 1, progress: false}
"""


def test_train_with_overrides(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(CONFIG)
    run = tmp_path / "run"
    code = main(
        [
            "train",
            str(tmp_path / "c.yaml"),
            "optimizer.name=soap",
            "training.max_epochs=2",
            "--run-dir",
            str(run),
        ]
    )
    assert code == 0
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["optimizer"] == "soap" and final["epochs"] == 2
    assert "optimizer:\n  name: soap" in (run / "config.yaml").read_text()
    # same command again: the finished run is resumed, not retrained
    assert (
        main(
            [
                "train",
                str(tmp_path / "c.yaml"),
                "optimizer.name=soap",
                "training.max_epochs=2",
                "--run-dir",
                str(run),
            ]
        )
        == 0
    )
    assert "resumed from" in capsys.readouterr().out


def test_train_reports_config_errors_without_traceback(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(CONFIG)
    assert main(["train", str(tmp_path / "c.yaml"), "optimizer.lr=fast"]) == 2
    assert "error: optimizer.lr: expected a number, got 'fast'" in capsys.readouterr().err


def test_train_reports_data_errors(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(
        CONFIG.replace("generate: {system: ethanol, n_frames: 12}", "train: data.xyz")
    )
    (tmp_path / "data.xyz").write_text(
        '1\nProperties=species:S:1:pos:R:3:forces:R:3 pbc="F F F"\nH 0 0 0 0 0 0\n'
    )
    assert main(["train", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run")]) == 2
    assert "data.xyz: frame 0: no energy under key 'energy'" in capsys.readouterr().err


def test_preset_flag_takes_key_value_overrides():
    from mlipopt.cli import _study_spec

    spec = _study_spec("seeds=[1,2]", "finetune-ethanol", ["base.training.max_epochs=2"])
    assert spec.name == "finetune-ethanol" and spec.seeds == [1, 2]
    assert spec.base["training"]["max_epochs"] == 2


def test_a_yaml_refining_a_preset_adds_its_models_to_the_presets(tmp_path):
    from mlipopt.cli import _study_spec
    from mlipopt.study.presets import STUDY_PRESETS

    extra = tmp_path / "more.yaml"
    extra.write_text(
        "seeds: [1]\nmodels:\n  extra: {model: {preset: cartesian-tiny}}\n"
        "  nequip-small: {model: {preset: nequip-tiny}}\n"
    )
    spec = _study_spec(str(extra), "architectures-3bpa", [])
    assert list(spec.models) == [*STUDY_PRESETS["architectures-3bpa"]["models"], "extra"]
    assert spec.models["nequip-small"].model == {"preset": "nequip-tiny"}  # the same label: replaced
    assert spec.seeds == [1] and spec.name == "architectures-3bpa"
