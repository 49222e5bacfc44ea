"""Credentials for a private DVC data registry on a git host (HTTPS), kept as a secret.

A repo URL never carries a token (``https://user:token@host`` is refused: it would end up in
flow-run parameters, logs and signed evidence). Save the token in this block instead and
name the block in the site's dataset entry (``sources.datasets.NAME.git_credentials``); the
worker hands it to git for that entry's repo host only, never to a host a run names.
"""

from __future__ import annotations

from pydantic import Field, SecretStr

from blocks._schema import SecMLOpsBlock


class GitCredentials(SecMLOpsBlock):
    """A username and token (or password) for one git host, sent only to that host."""

    _block_type_name = "SecMLOps Git Credentials"
    _description = "Username and token for a private git host holding a DVC data registry."
    _form_required = ("token",)

    username: str = Field(
        default="oauth2",
        description="Git user name (many hosts accept any name with a token, e.g. oauth2).",
    )
    token: SecretStr = Field(description="Access token or password (stored as a secret).")
