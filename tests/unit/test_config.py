"""`.env.example` documents every setting of `config.py` with its default."""

from __future__ import annotations

import pytest
from dotenv import dotenv_values

from config import Settings, SettingsError, load_settings
from tests.support.servers import ROOT


def test_env_example_names_every_setting() -> None:
    documented = set(dotenv_values(ROOT / ".env.example"))
    expected = {name.upper() for name in Settings.model_fields}
    assert documented == expected


def test_env_example_values_are_the_defaults() -> None:
    from_example = Settings(_env_file=ROOT / ".env.example")
    defaults = Settings(_env_file=None)
    assert from_example.model_dump() == defaults.model_dump()


def test_bad_settings_are_named_as_the_user_writes_them(tmp_path, monkeypatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("SERVER_PORT=0\nOPENAI_API_KEY=sk-secret\n")
    monkeypatch.setenv("vad_threshold", "2")  # pydantic-settings reads names in any case
    monkeypatch.setenv("DEBUG", "perhaps")
    with pytest.raises(SettingsError) as caught:
        load_settings(str(env_file))
    problems = sorted(caught.value.problems, key=str.upper)
    assert problems == [
        "DEBUG=perhaps (from the environment): input should be a valid boolean, unable to interpret input",
        f"SERVER_PORT=0 (from {env_file}): input should be greater than or equal to 1",
        "vad_threshold=2 (from the environment): input should be less than or equal to 1",
    ]
