"""Registry endpoints and credentials come from the site, never from a run (issue 12,
findings 4 and 7), over real HTTP: a logging server on 127.0.0.1 stands in for an S3
endpoint, moto_server for a real one."""

from __future__ import annotations

from pathlib import Path

import pytest

from secmlops.errors import InputError, ToolError
from secmlops.registry.models import ModelRegistry
from secmlops.registry.stores import LocalRegistry, S3Registry, open_site_registry
from secmlops.site import RegistrySource, Sources, select
from tests.conftest import RequestLog

SITE_KEY_ID = "AKIASITEPROFILE00001"
AMBIENT_KEY_ID = "AKIAAMBIENTWORKER001"
AMBIENT_TOKEN = "ambient-session-token-of-the-worker"


@pytest.fixture
def worker_aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The worker's AWS setup: ambient credentials in the environment (with a session token)
    and, in its AWS config, a profile ``registry-writer`` the site gives the registry."""
    config = tmp_path / "aws-config"
    config.write_text("[profile registry-writer]\nregion = eu-central-1\n")
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(
        f"[registry-writer]\naws_access_key_id = {SITE_KEY_ID}\n"
        "aws_secret_access_key = site-profile-secret\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AMBIENT_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ambient-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", AMBIENT_TOKEN)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # nothing beyond 127.0.0.1
    return "registry-writer"


def _authorizations(log: RequestLog) -> list[str]:
    return [headers.get("Authorization", "") for _, _, headers in log.requests]


@pytest.mark.parametrize(
    "named",
    [
        "attacker",  # a name the site does not list
        "http://127.0.0.1:{port}",  # the logger itself, as a RegistryTarget's endpoint was
        "s3://stolen-bucket/creds",  # a URI instead of a name
        "/tmp/anywhere-writable",  # finding 7: any writable directory on the worker
    ],
)
def test_a_run_cannot_name_a_registry_endpoint(
    request_logger: RequestLog, worker_aws: str, named: str, tmp_path: Path
) -> None:
    """Issue 12 finding 4: a RegistryTarget whose endpoint was a server on 127.0.0.1 received
    requests signed with the worker's ambient AWS credentials, session token included; and
    finding 7: a registry URI could be any writable directory. A run now only names a site
    entry: anything else is refused before a registry is opened, and no request is sent."""
    port = request_logger.url.rsplit(":", 1)[1]
    named = named.format(port=port)
    site = Sources(
        registries={
            "prod": RegistrySource(
                uri="s3://ml-models/churn",
                s3_endpoint_url="https://s3.eu-central-1.amazonaws.com",
                aws_profile=worker_aws,
            )
        }
    )
    with pytest.raises(InputError, match="is not one the site allows") as err:
        select(site.registries, named, "registry")
    assert "allowed: prod" in str(err.value.diagnostics())
    assert request_logger.requests == []
    assert not Path("/tmp/anywhere-writable").exists()


def test_a_site_profile_sends_its_key_and_not_the_workers_ambient_one(
    request_logger: RequestLog, worker_aws: str
) -> None:
    """The site entry's aws_profile is what signs requests to the entry's endpoint: never the
    ambient AWS_ACCESS_KEY_ID, never its session token."""
    entry = RegistrySource(
        uri="s3://site-bucket/churn",
        s3_endpoint_url=request_logger.url,
        aws_profile=worker_aws,
        region="eu-central-1",
    )
    registry = open_site_registry(entry, default_uri="/unused", env_endpoint=None)
    assert isinstance(registry, S3Registry)
    with pytest.raises(ToolError):  # the logger answers 500
        registry.get("churn/versions/v1/version.json")
    assert request_logger.requests, "the registry never called its endpoint"
    for auth in _authorizations(request_logger):
        assert f"Credential={SITE_KEY_ID}/" in auth and "/eu-central-1/s3/" in auth, auth
        assert AMBIENT_KEY_ID not in auth
    for _, _, headers in request_logger.requests:
        assert "X-Amz-Security-Token" not in headers
        assert AMBIENT_TOKEN not in str(headers)


def test_without_a_profile_the_entry_uses_the_default_chain(
    request_logger: RequestLog, worker_aws: str
) -> None:
    """What a site gets when it names no profile: the worker's ambient credentials, which is
    why only the site, never a run, may name the endpoint they are sent to."""
    entry = RegistrySource(uri="s3://site-bucket/churn", s3_endpoint_url=request_logger.url)
    with pytest.raises(ToolError):
        open_site_registry(entry, default_uri="/unused", env_endpoint=None).get("x.json")
    assert all(f"Credential={AMBIENT_KEY_ID}/" in a for a in _authorizations(request_logger))


def test_the_entrys_endpoint_wins_over_the_workers_setting(
    request_logger: RequestLog, s3_bucket: str, s3_endpoint: str, worker_aws: str
) -> None:
    """SECMLOPS_S3_ENDPOINT_URL is a worker default: an entry naming its endpoint never
    sends a request elsewhere. (moto_server on 127.0.0.1 accepts any key.)"""
    entry = RegistrySource(
        uri=f"s3://{s3_bucket}/site", s3_endpoint_url=s3_endpoint, aws_profile=worker_aws
    )
    registry = open_site_registry(entry, default_uri="/unused", env_endpoint=request_logger.url)
    registry.put("a.json", b"{}")
    assert registry.read("a.json") == b"{}"
    assert request_logger.requests == []


def test_a_site_s3_registry_on_moto(s3_bucket: str, s3_endpoint: str, worker_aws: str) -> None:
    """The happy path: an S3 entry with its endpoint and profile holds versions."""
    entry = RegistrySource(
        uri=f"s3://{s3_bucket}/models",
        s3_endpoint_url=s3_endpoint,
        aws_profile=worker_aws,
        region="eu-central-1",
    )
    models = ModelRegistry(
        open_site_registry(entry, default_uri="/unused", env_endpoint=None), "churn"
    )
    assert models.store.uri == f"s3://{s3_bucket}/models"
    assert models.allocate_version({"run": "r1"}) == "v1"
    assert models.versions() == ["v1"]


def test_an_empty_uri_opens_the_workers_default(tmp_path: Path) -> None:
    registry = open_site_registry(
        RegistrySource(), default_uri=str(tmp_path / "reg"), env_endpoint="http://127.0.0.1:9"
    )
    assert isinstance(registry, LocalRegistry)
    assert registry.root == (tmp_path / "reg").resolve()


def test_an_unknown_profile_is_bad_input(request_logger: RequestLog, worker_aws: str) -> None:
    entry = RegistrySource(
        uri="s3://site-bucket/churn", s3_endpoint_url=request_logger.url, aws_profile="nobody"
    )
    with pytest.raises(InputError, match="'nobody'"):
        open_site_registry(entry, default_uri="/unused", env_endpoint=None)
    assert request_logger.requests == []


def test_s3_options_on_a_local_entry_are_bad_input(tmp_path: Path) -> None:
    entry = RegistrySource(uri=str(tmp_path / "reg"), aws_profile="registry-writer")
    with pytest.raises(InputError, match="local directory"):
        open_site_registry(entry, default_uri="/unused", env_endpoint=None)
