import dataclasses
from pathlib import Path

from mlipopt.train.config import ExtraTestConfig, RunConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_every_config_key_is_documented():
    text = DOC.read_text()
    missing = []
    defaults = RunConfig()
    for section in dataclasses.fields(RunConfig):
        value = getattr(defaults, section.name)
        if dataclasses.is_dataclass(value):
            assert f"## `{section.name}`" in text, section.name
            missing += [
                f"{section.name}.{k.name}" for k in dataclasses.fields(value) if f"`{k.name}`" not in text
            ]
        elif f"`{section.name}`" not in text:
            missing.append(section.name)
    missing += [
        f"data.extra_tests.*.{k.name}"
        for k in dataclasses.fields(ExtraTestConfig)
        if f"`{k.name}`" not in text
    ]
    assert not missing, f"undocumented config keys: {missing}"
