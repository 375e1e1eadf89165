import dataclasses
from pathlib import Path

from mlipopt.train.config import RunConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_every_config_key_is_documented():
    text = DOC.read_text()
    missing = []
    for section in dataclasses.fields(RunConfig):
        if dataclasses.is_dataclass(section.type) or section.name in {
            "data",
            "model",
            "optimizer",
            "scheduler",
            "loss",
            "training",
        }:
            assert f"## `{section.name}`" in text, section.name
            for key in dataclasses.fields(getattr(RunConfig(), section.name)):
                if f"`{key.name}`" not in text:
                    missing.append(f"{section.name}.{key.name}")
        elif f"`{section.name}`" not in text:
            missing.append(section.name)
    assert not missing, f"undocumented config keys: {missing}"
