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


def test_a_model_python_in_a_refining_yaml_is_taken_from_the_yaml_folder(tmp_path, monkeypatch):
    """docs/architectures.md: `python:` is relative to the study file, not to where the command runs."""
    import os
    import sys

    from mlipopt.cli import _study_spec

    (tmp_path / "env" / "bin").mkdir(parents=True)
    os.symlink(sys.executable, tmp_path / "env" / "bin" / "python")
    extra = tmp_path / "more.yaml"
    extra.write_text("models:\n  extra: {model: {preset: nequip-tiny}, python: env/bin/python}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = _study_spec(str(extra), "architectures-3bpa", [])
    assert spec.models["extra"].python == str(tmp_path / "env" / "bin" / "python")


def test_a_mace_model_in_an_environment_without_mace_says_how_to_build_one(tmp_path, capsys):
    import importlib.util

    import pytest

    if importlib.util.find_spec("mace") is not None:
        pytest.skip("MACE is installed in this environment")
    (tmp_path / "c.yaml").write_text(CONFIG.replace("nequip-tiny", "mace-small"))
    assert main(["train", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert ".venv-mace/bin/pip install torch==2.13.0 -e '.[mace,study]'" in err


def _actions(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield from ((f"{name} {a}", x) for a, x in _actions(subparser))
        elif not isinstance(action, argparse._HelpAction):
            yield (action.dest, action)


def test_every_subcommand_and_option_is_described_and_defaults_print_once():
    """Issue 22: options without help, 'report' without a description, defaults printed twice."""
    import argparse

    from mlipopt.cli import build_parser

    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {c.dest: c.help for c in commands._choices_actions}
    for name, subparser in commands.choices.items():
        assert helps.get(name), f"subcommand {name} has no summary"
        assert subparser.description, f"subcommand {name} has no description"
        text = subparser.format_help()
        for line in text.splitlines():
            assert line.count("(default") <= 1, f"{name}: default printed twice: {line}"
        assert "(default: None)" not in text
    for where, action in _actions(parser):
        assert action.help, f"{where}: option without help"


def test_optional_positionals_are_not_called_required(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["train"])
    [error] = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert error.endswith("the following arguments are required: config")


def test_names_a_user_types_get_a_did_you_mean(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(CONFIG.replace("name: adamw", "name: soapp"))
    assert main(["train", str(tmp_path / "c.yaml")]) == 2
    assert "did you mean 'soap'?" in capsys.readouterr().err
    assert main(["study", "--preset", "benchmark-3bap"]) == 2
    assert "did you mean 'benchmark-3bpa'?" in capsys.readouterr().err


def test_help_and_a_config_error_load_neither_the_database_nor_the_model_packages(tmp_path):
    """What start-up imports decides its time (issue 22: 5.5 s for --help, 12-30 s for a one-line error;
    benchmarks/startup.py times it): --help loads no torch; a config error loads no SQLAlchemy, e3nn,
    nequip or ASE reader, so `mlipopt train` works with only the [nequip] extra installed."""
    import subprocess
    import sys

    (tmp_path / "c.yaml").write_text(CONFIG.replace("name: adamw", "name: soapp"))
    probe = (
        "import sys\nfrom mlipopt.cli import main\ntry:\n    code = main(sys.argv[1:])\n"
        "except SystemExit as e:\n    code = e.code\n"
        "heavy = ('torch', 'sqlalchemy', 'e3nn', 'nequip', 'ase.io', 'matplotlib', 'ray')\n"
        "print('LOADED', ','.join(m for m in heavy if m in sys.modules), 'CODE', code, file=sys.stderr)\n"
    )
    help_run = subprocess.run([sys.executable, "-c", probe, "--help"], capture_output=True, text=True)
    assert "LOADED  CODE 0" in help_run.stderr
    typo = subprocess.run([sys.executable, "-c", probe, "train", str(tmp_path / "c.yaml")],
                          capture_output=True, text=True)  # fmt: skip
    assert "did you mean 'soap'?" in typo.stderr and "CODE 2" in typo.stderr
    assert "LOADED torch CODE 2" in typo.stderr  # the config schema needs torch's dtypes, nothing more


def test_doctor_prints_versions_extras_threads_and_cpu(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for needle in ("mlipopt ", "torch ", "intra-op thread", "cpu ", "[nequip]", "[study]", "mace:"):
        assert needle in out


def test_python_dash_m_runs_the_same_command_line():
    """``python -m mlipopt`` works where the ``mlipopt`` script is not on PATH."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "mlipopt", "--version"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("mlipopt ")
