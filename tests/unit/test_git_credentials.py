"""Git credentials for a private data registry: scoped to the site's repo host, never a URL."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from secmlops.controls.data import _git_auth_env, pull_dataset
from secmlops.errors import InputError


def test_credentials_are_sent_to_the_repos_own_https_host_only() -> None:
    env = _git_auth_env("https://git.example.com:8443/data/reg.git", ("oauth2", "s3cr3t"))
    assert env["GIT_CONFIG_COUNT"] == "1"
    # git applies an http.<url>.extraHeader only to requests under that URL: this host.
    assert env["GIT_CONFIG_KEY_0"] == "http.https://git.example.com:8443/.extraHeader"
    header = env["GIT_CONFIG_VALUE_0"]
    assert header.startswith("Authorization: Basic ")
    assert base64.b64decode(header.split()[-1]) == b"oauth2:s3cr3t"
    assert _git_auth_env("https://git.example.com/x.git", None) == {}


@pytest.mark.parametrize(
    "repo", ["ssh://git@git.example.com/reg.git", "git@git.example.com:reg.git", "/srv/reg"]
)
def test_credentials_for_a_repo_that_is_not_https_are_refused(repo: str) -> None:
    with pytest.raises(InputError, match="HTTPS"):
        _git_auth_env(repo, ("u", "t"))


def test_a_token_in_the_repo_url_is_refused_without_echoing_it(tmp_path: Path) -> None:
    """Issue 12 finding 5: use the credentials block, never user:token@ in the URL."""
    with pytest.raises(InputError) as info:
        pull_dataset(
            "https://bob:tok3n-XYZ@git.example.com/reg.git",
            "data/churn.csv",
            "v1.0",
            tmp_path,
            allowed_remotes=[],
        )
    assert "tok3n-XYZ" not in str(info.value) and "tok3n-XYZ" not in repr(info.value.details)
