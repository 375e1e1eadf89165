"""Bad inputs get one clear line naming the key, file or frame — never a traceback.

Every case runs the command line in-process (``mlipopt.cli.main``) and checks the exit code, that no
traceback was printed, and the message.
"""

import errno

import ase.io
import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.emt import EMT

from mlipopt.cli import main

from ..test_cli import CONFIG  # one small valid run, shared with the CLI tests


def _frames(n, seed=0, species="CH3CH2OH"):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = molecule(species)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_forces()
        out.append(atoms)
    return out


def _run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.out, captured.err


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    return path


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.clip_grad_norm=-1", "training.clip_grad_norm must be > 0, got -1.0"),
        ("model.r_max=-1", "model.r_max must be > 0, got -1.0"),
        ("optimizer.lr=-1e-3", "optimizer.lr must be ≥ 0"),
        ("optimizer.weight_decay=-0.1", "optimizer.weight_decay must be ≥ 0"),
        ("optimizer.options.betas=[0.9,1.5]", "optimizer (adamw): Invalid beta parameter at index 1"),
        ("data.split=[100,5,5]", "data.split: split sizes [100.0, 5.0, 5.0] ask for 110 frames but only 12"),
        ("data.split=[-1,2,2]", "data.split sizes must be ≥ 0"),
        ("training.device=cuda", "training.device is 'cuda' but this torch"),
        ("optimizer.options.foo=1", "AdamW got unknown argument(s) 'foo'"),
        ("optimizer.options.betaz=[0.9,0.9]", "did you mean 'betas'"),
        ("model.options.num_featurez=4", "unknown key 'num_featurez' (did you mean 'num_features'?)"),
        ("data.extra_tests.x.file=absent.xyz", "absent.xyz: no such file"),
        ("training.max_epochs=0", "training.max_epochs must be ≥ 1"),
        ("scheduler.factor=2", "scheduler.factor must be > 0 and < 1"),
        ("optimizr.name=soap", "did you mean 'optimizer'"),
        ("loss.energy_weight=0", None),  # with force_weight 1 this is fine: not an error
    ],
)
def test_bad_config_values(capsys, config, tmp_path, override, message):
    code, out, err = _run(capsys, "train", config, override, "--run-dir", tmp_path / "run")
    if message is None:
        assert code == 0
        return
    assert code == 2 and message in err, err


def test_missing_config_file(capsys, tmp_path):
    code, _, err = _run(capsys, "train", tmp_path / "absent.yaml")
    assert code == 2 and "absent.yaml: no such config file" in err


def test_read_only_folder_and_full_disk(capsys, config, tmp_path, monkeypatch):
    """Root ignores permissions, so the failing writes are simulated where the checkpoint is written."""
    from mlipopt.train import checkpoint

    def denied(path, write):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(checkpoint, "_atomic_write", denied)
    code, _, err = _run(capsys, "train", config, "--run-dir", tmp_path / "ro")
    assert code == 2 and "permission denied" in err and str(tmp_path / "ro") in err

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "_atomic_write", full)
    code, _, err = _run(capsys, "train", config, "--run-dir", tmp_path / "full")
    assert code == 2 and "no space left on the device" in err and "full" in err


def test_truncated_checkpoint_suggests_restart(capsys, config, tmp_path):
    run = tmp_path / "run"
    assert _run(capsys, "train", config, "--run-dir", run)[0] == 0
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[:100])
    code, _, err = _run(capsys, "train", config, "training.max_epochs=2", "--run-dir", run)
    assert code == 2 and "checkpoint.pt: unreadable" in err and "--restart" in err
    assert _run(capsys, "train", config, "training.max_epochs=2", "--run-dir", run, "--restart")[0] == 0


def test_report_of_a_file_that_is_not_a_database(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("not a database\n" * 100)
    code, _, err = _run(capsys, "report", tmp_path / "notes.txt")
    assert code == 2 and "not an mlipopt results database" in err


def _data_config(tmp_path, train, test=None, **data):
    lines = [f"  train: {train}"] + ([f"  test: {test}"] if test else [])
    lines += [f"  {k}: {v}" for k, v in data.items()]
    text = "seed: 1\ndata:\n" + "\n".join(lines) + "\n  batch_size: 4\n"
    text += "model: {preset: nequip-tiny}\ntraining: {max_epochs: 1, progress: false}\n"
    path = tmp_path / "d.yaml"
    path.write_text(text)
    return path


def test_a_frame_with_the_wrong_atom_count_is_named(capsys, tmp_path):
    ase.io.write(tmp_path / "good.xyz", _frames(6), format="extxyz")
    lines = (tmp_path / "good.xyz").read_text().splitlines()
    per_frame = len(lines) // 6
    lines[3 * per_frame] = "8"  # frame 3 declares 8 atoms but lists 9
    (tmp_path / "bad.xyz").write_text("\n".join(lines) + "\n")
    code, _, err = _run(
        capsys, "train", _data_config(tmp_path, tmp_path / "bad.xyz"), "--run-dir", tmp_path / "r"
    )
    assert code == 2 and "bad.xyz: frame 3 declares 8 atoms but lists more" in err, err


def test_an_absurd_force_is_refused_with_its_frame(capsys, tmp_path):
    frames = _frames(6)
    frames[4].calc.results["forces"][2, 1] = 1e30
    ase.io.write(tmp_path / "f.xyz", frames, format="extxyz")
    code, _, err = _run(
        capsys, "train", _data_config(tmp_path, tmp_path / "f.xyz"), "--run-dir", tmp_path / "r"
    )
    assert code == 2 and "f.xyz: frame 4: force 1e+30 eV/Å on atom 2 is not physical" in err, err


def test_an_element_only_in_the_test_set_is_refused(capsys, tmp_path):
    ase.io.write(tmp_path / "train.xyz", _frames(10), format="extxyz")
    ase.io.write(tmp_path / "test.xyz", _frames(2) + _frames(1, species="NH3"), format="extxyz")
    path = _data_config(tmp_path, tmp_path / "train.xyz", tmp_path / "test.xyz", split="[8, 2, 0]")
    code, _, err = _run(capsys, "train", path, "--run-dir", tmp_path / "r")
    assert code == 2 and "test.xyz: test frame 2 holds N, which no training frame contains" in err, err


def test_test_frames_repeating_training_frames_are_counted(capsys, tmp_path):
    frames = _frames(10)
    ase.io.write(tmp_path / "train.xyz", frames, format="extxyz")
    ase.io.write(tmp_path / "test.xyz", frames[:3] + _frames(2, seed=9), format="extxyz")
    path = _data_config(tmp_path, tmp_path / "train.xyz", tmp_path / "test.xyz", split="[10, 0, 0]")
    code, out, _ = _run(capsys, "train", path, "--run-dir", tmp_path / "r")
    assert code == 0 and "WARNING: 3 of 5 test frames repeat a training structure" in out


def test_divergence_before_any_checkpoint_names_none(capsys, config, tmp_path):
    code, _, err = _run(
        capsys, "train", config, "optimizer.name=sgd", "optimizer.lr=1e12", "--run-dir", tmp_path / "r"
    )
    assert code == 2 and "no checkpoint was written yet" in err and "checkpoint.pt" not in err, err


def test_extra_test_names_cannot_leave_their_folder(capsys, tmp_path):
    ase.io.write(tmp_path / "t.xyz", _frames(12), format="extxyz")
    text = CONFIG.replace(
        "  batch_size: 4\n", f"  batch_size: 4\n  extra_tests:\n    ../../x: {{file: {tmp_path / 't.xyz'}}}\n"
    )
    (tmp_path / "e.yaml").write_text(text)
    code, _, err = _run(capsys, "train", tmp_path / "e.yaml", "--run-dir", tmp_path / "r")
    assert code == 2 and "'../../x' is not a usable name" in err, err


def test_study_names_cannot_leave_their_folder(capsys, tmp_path):
    (tmp_path / "s.yaml").write_text(
        "name: ../../escape\nbase: {data: {generate: {system: ethanol}}}\noptimizers: {adamw: {lr: [1e-3]}}\n"
    )
    code, _, err = _run(capsys, "study", tmp_path / "s.yaml")
    assert code == 2 and "study.name: '../../escape' is not a usable name" in err


def test_overrides_after_options_and_relative_paths_from_the_current_directory(capsys, tmp_path, monkeypatch):
    ase.io.write(tmp_path / "mine.xyz", _frames(12), format="extxyz")
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "c.yaml").write_text(CONFIG)
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(
        capsys,
        "train",
        config_dir / "c.yaml",
        "--run-dir",
        tmp_path / "r",
        "data.train=mine.xyz",
        "data.generate=null",
    )
    assert code == 0, err
    assert str(tmp_path / "mine.xyz") in (tmp_path / "r" / "config.yaml").read_text()


def test_orphan_temporary_files_are_removed_and_outputs_are_readable(capsys, config, tmp_path):
    import stat

    run = tmp_path / "run"
    run.mkdir()
    orphan = run / ".checkpoint.pt.abc123.tmp"
    orphan.write_bytes(b"half a file")
    assert _run(capsys, "train", config, "--run-dir", run)[0] == 0
    assert not orphan.exists()
    mode = (run / "final_metrics.json").stat().st_mode
    assert mode & stat.S_IRGRP and mode & stat.S_IROTH  # as open() would create it (umask 022)
