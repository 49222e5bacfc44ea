"""The project's own Prefect state: PREFECT_HOME per checkout unless a server is configured."""

from __future__ import annotations

from pathlib import Path

import pytest

from secmlops.local_prefect import (
    STARTUP_TIMEOUT_SECONDS,
    configure_prefect_home,
    configured_api_url,
)

_VARS = (
    "PREFECT_API_URL",
    "PREFECT_HOME",
    "PREFECT_PROFILE",
    "PREFECT_PROFILES_PATH",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in _VARS:
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "user-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_checkout_gets_its_own_prefect_home(clean_env: Path, tmp_path: Path) -> None:
    import os

    configure_prefect_home(tmp_path / ".secmlops")
    assert os.environ["PREFECT_HOME"] == str(tmp_path / ".secmlops" / "prefect")
    assert (tmp_path / ".secmlops" / "prefect").is_dir()
    assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == str(
        STARTUP_TIMEOUT_SECONDS
    )


def test_explicit_settings_are_kept(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "mine"))
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "42")
    configure_prefect_home(tmp_path / ".secmlops")
    assert os.environ["PREFECT_HOME"] == str(tmp_path / "mine")
    assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "42"


def test_configured_server_in_environment_is_used(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    configure_prefect_home(tmp_path / ".secmlops")
    assert configured_api_url() == "http://127.0.0.1:4200/api"
    assert "PREFECT_HOME" not in os.environ
    assert not (tmp_path / ".secmlops").exists()


def test_configured_server_in_active_profile_is_used(clean_env: Path, tmp_path: Path) -> None:
    import os

    (clean_env / ".prefect").mkdir()
    (clean_env / ".prefect" / "profiles.toml").write_text(
        'active = "site"\n'
        "[profiles.ephemeral]\n"
        "[profiles.site]\n"
        'PREFECT_API_URL = "http://127.0.0.1:4201/api"\n'
    )
    assert configured_api_url() == "http://127.0.0.1:4201/api"
    configure_prefect_home(tmp_path / ".secmlops")
    assert "PREFECT_HOME" not in os.environ


def test_profile_without_server_and_broken_profiles_mean_embedded(
    clean_env: Path, tmp_path: Path
) -> None:
    (clean_env / ".prefect").mkdir()
    profiles = clean_env / ".prefect" / "profiles.toml"
    profiles.write_text('active = "ephemeral"\n[profiles.ephemeral]\n')
    assert configured_api_url() is None
    profiles.write_text("not [ toml")
    assert configured_api_url() is None
