"""`.env.example` documents every setting of `config.py` with its default."""

from __future__ import annotations

from dotenv import dotenv_values

from config import Settings
from tests.support.servers import ROOT


def test_env_example_names_every_setting() -> None:
    documented = set(dotenv_values(ROOT / ".env.example"))
    expected = {name.upper() for name in Settings.model_fields}
    assert documented == expected


def test_env_example_values_are_the_defaults() -> None:
    from_example = Settings(_env_file=ROOT / ".env.example")
    defaults = Settings(_env_file=None)
    assert from_example.model_dump() == defaults.model_dump()
