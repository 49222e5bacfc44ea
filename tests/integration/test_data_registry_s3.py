"""The DVC data registry with its remote on S3 (issue 11): moto_server over HTTP on 127.0.0.1.

Real ``dvc push`` to a bucket through dvc-s3 at the site's endpoint, then the pinned pull
(:func:`pull_dataset`) with the values of a ``sources.datasets`` entry: by tag, by full
commit sha, a Parquet dataset, and each failure with its exit code and one sentence:

    tampered remote object   ControlRefused (1)  the bytes do not match git's md5
    missing remote object    ToolError (3)       the site's storage lost it: nothing to refuse,
                                                 nothing pulled, an operator restores it
    wrong/no credentials     ToolError (3)       names the remote, never the secret
    unreachable endpoint     ToolError (3)       within seconds (bounded timeouts, retries)

One bucket and two registries (CSV, two versions; Parquet, one) are built once per module;
each failure case works on its own copy (a clone whose committed remote is its own prefix).
Nothing leaves 127.0.0.1: the instance-metadata lookup is off and every endpoint is local.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from secmlops._internal.toolrun import resolve_binary
from secmlops.controls.data import (
    DataPullRefusal,
    DatasetPull,
    data_pull_statement,
    pull_dataset,
)
from secmlops.demo.data_registry import (
    DEMO_PARQUET_PATH,
    S3DataRegistry,
    churn_csv_bytes,
    create_s3_data_registry,
    generate_churn_dataset,
)
from secmlops.errors import ControlRefused, InputError, SecMLOpsError, ToolError
from secmlops.site import DatasetSource, Sources, select
from tests.conftest import free_port, write_site_policy

pytestmark = pytest.mark.integration

SECMLOPS = Path(sys.executable).parent / "secmlops"
ROWS = 300
WRONG_SECRET = "wrong-secret-DO-NOT-ECHO-1234"
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never ask 169.254.169.254 for credentials
}


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        [str(resolve_binary("git")), "-C", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
        env={"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "PATH": "/usr/bin:/bin"},
    )
    return out.stdout.strip()


@dataclass(frozen=True)
class S3World:
    endpoint: str
    bucket: str
    csv: S3DataRegistry
    parquet: S3DataRegistry

    def s3(self, **credentials: str) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, **credentials)


@pytest.fixture(scope="module")
def world(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3World]:
    """One bucket, a CSV registry (v1.0, v1.1) and a Parquet registry (v1.0) pushed to it."""
    import boto3

    with pytest.MonkeyPatch.context() as patch:
        for name, value in AWS_TEST_ENV.items():
            patch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            patch.delenv(name, raising=False)
        bucket = f"dvcs3-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
        root = tmp_path_factory.mktemp("dvc-s3")
        started = time.monotonic()
        csv = create_s3_data_registry(
            root / "csv", f"s3://{bucket}/registry/churn", s3_endpoint_url=s3_endpoint, rows=ROWS
        )
        parquet = create_s3_data_registry(
            root / "parquet",
            f"s3://{bucket}/registry/churn-parquet",
            s3_endpoint_url=s3_endpoint,
            versions=("v1.0",),
            rows=ROWS,
            dataset_format="parquet",
        )
        print(f"\ntwo S3 data registries built and pushed in {time.monotonic() - started:.1f} s")
        yield S3World(s3_endpoint, bucket, csv, parquet)


@pytest.fixture(autouse=True)
def _aws(world: S3World, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


def entry_of(registry: S3DataRegistry, **changes: Any) -> DatasetSource:
    """The registry as the site's dataset entry, parsed as the policy file's would be."""
    sources = Sources.model_validate(
        {"datasets": {"churn-s3": {**registry.dataset_entry(), **changes}}}
    )
    return select(sources.datasets, "churn-s3", "dataset")[1]


def site_pull(entry: DatasetSource, rev: str, dest: Path, **options: Any) -> DatasetPull:
    """What the flow's pull-data stage does with a site entry."""
    return pull_dataset(
        entry.repo,
        entry.path,
        rev,
        dest,
        allowed_remotes=entry.dvc_remotes,
        s3_endpoint_url=entry.s3_endpoint_url,
        **options,
    )


def object_key(registry: S3DataRegistry, rev: str, remote_url: str | None = None) -> str:
    """The bucket key DVC 3 keeps the dataset's bytes under at ``rev``."""
    md5 = git(registry.repo, "show", f"{rev}:{registry.path}.dvc").split("md5: ")[1].split()[0]
    prefix = (remote_url or registry.remote_url).removeprefix("s3://").partition("/")[2]
    return f"{prefix}/files/md5/{md5[:2]}/{md5[2:]}"


@dataclass(frozen=True)
class Case:
    """A registry of its own for one failure case: a clone committing its own S3 prefix."""

    entry: DatasetSource
    tag: str
    key: str


def case_copy(world: S3World, tmp_path: Path, name: str) -> Case:
    """Clone the CSV registry, point its committed remote at ``cases/<name>``, copy the
    objects there, and tag the commit ``case-<name>``: a case may damage its copy only."""
    registry = world.csv
    repo = tmp_path / f"case-{name}"
    subprocess.run(
        [str(resolve_binary("git")), "clone", "-q", str(registry.repo), str(repo)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    remote_url = f"s3://{world.bucket}/cases/{name}-{uuid.uuid4().hex[:8]}"
    config = repo / ".dvc" / "config"
    config.write_text(config.read_text().replace(registry.remote_url, remote_url))
    git(repo, "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qam", name)
    tag = f"case-{name}"
    git(repo, "tag", tag)
    s3 = world.s3()
    head = registry.tags[-1]  # the case's commit tracks the same data as the latest tag
    source, target = object_key(registry, head), object_key(registry, head, remote_url)
    s3.copy_object(
        Bucket=world.bucket, Key=target, CopySource={"Bucket": world.bucket, "Key": source}
    )
    entry = entry_of(registry, repo=str(repo), dvc_remotes=[remote_url])
    return Case(entry=entry, tag=tag, key=target)


def assert_one_sentence(error: SecMLOpsError, *fragments: str) -> None:
    assert "\n" not in error.message and "Traceback" not in error.message
    assert "Having any troubles" not in error.message  # DVC's banner is not the reason
    for fragment in fragments:
        assert fragment in error.message, error.message


# --- the good path ------------------------------------------------------------------------


def test_pull_by_tag_and_by_commit_through_the_site_policy(world: S3World, tmp_path: Path) -> None:
    """Issue 11: the registry's remote on S3; the site's policy entry names repo, remote and
    endpoint, and the pull by tag and by full commit gets exactly the pushed versions."""
    from secmlops.policy import load_gate_policy

    policy = write_site_policy(
        tmp_path / "policy.yaml", datasets={"churn-s3": world.csv.dataset_entry()}
    )
    sources = load_gate_policy(policy).sources
    name, entry = select(sources.datasets, "churn-s3", "dataset")
    assert (name, entry.dvc_remotes) == ("churn-s3", (world.csv.remote_url,))

    by_tag = site_pull(entry, "v1.0", tmp_path / "tag")
    expected = churn_csv_bytes(generate_churn_dataset("v1.0", ROWS))
    assert by_tag.local_path.read_bytes() == expected
    assert by_tag.sha256 == hashlib.sha256(expected).hexdigest()
    assert by_tag.commit == git(world.csv.repo, "rev-parse", "v1.0")

    commit = git(world.csv.repo, "rev-parse", "v1.1")
    by_commit = site_pull(entry, commit, tmp_path / "commit")
    assert by_commit.commit == commit and by_commit.rev == commit
    assert by_commit.local_path.read_bytes() == churn_csv_bytes(
        generate_churn_dataset("v1.1", ROWS)
    )
    statement = data_pull_statement(by_commit)
    assert statement["subject"][0]["digest"]["sha256"] == by_commit.sha256
    assert statement["predicate"]["commit"] == commit


def test_registry_commits_no_endpoint_and_keeps_no_cache(world: S3World) -> None:
    """The endpoint and credentials are the site's: the committed config names only the
    bucket/prefix, and no DVC cache hides what the bucket holds."""
    committed = git(world.csv.repo, "show", "v1.1:.dvc/config")
    assert world.csv.remote_url in committed
    assert "endpointurl" not in committed and world.endpoint not in committed
    assert not (world.csv.repo / ".dvc" / "cache").exists()
    assert not (world.csv.repo / ".dvc" / "config.local").exists()
    keys = [o["Key"] for o in world.s3().list_objects_v2(Bucket=world.bucket)["Contents"]]
    assert object_key(world.csv, "v1.0") in keys and object_key(world.csv, "v1.1") in keys


def test_parquet_dataset_pulls_as_is_with_its_digest_recorded(
    world: S3World, tmp_path: Path
) -> None:
    """Issue 11: a Parquet dataset tracked in the S3 registry pulls byte for byte, and its
    sha256 is the statement's subject (validation is the validate step's)."""
    import pyarrow.parquet as pq

    entry = entry_of(world.parquet)
    assert entry.path == DEMO_PARQUET_PATH
    pull = site_pull(entry, "v1.0", tmp_path / "data")
    stored = world.s3().get_object(Bucket=world.bucket, Key=object_key(world.parquet, "v1.0"))
    body = stored["Body"].read()
    assert pull.local_path.name == "churn.parquet"
    assert pull.local_path.read_bytes() == body and body[:4] == b"PAR1"
    assert pull.sha256 == hashlib.sha256(body).hexdigest()
    assert pull.size_bytes == len(body)
    table = pq.read_table(io.BytesIO(body))
    assert table.num_rows == ROWS
    assert "customer_id" in table.column_names
    assert data_pull_statement(pull)["subject"] == [
        {"name": DEMO_PARQUET_PATH, "digest": {"sha256": pull.sha256}}
    ]


# --- the remote's content -----------------------------------------------------------------


@pytest.mark.parametrize("size", ["same-size", "other-size"])
def test_tampered_remote_object_is_refused(world: S3World, tmp_path: Path, size: str) -> None:
    """Issue 11: someone with write access to the bucket overwrites the dataset's object;
    DVC does not re-hash what it downloads, the pull does and refuses (exit 1)."""
    case = case_copy(world, tmp_path, f"tamper-{size}")
    s3 = world.s3()
    body = s3.get_object(Bucket=world.bucket, Key=case.key)["Body"].read()
    forged = bytes(b ^ 0x01 for b in body) if size == "same-size" else body + b"C9,1,1.0\n"
    s3.put_object(Bucket=world.bucket, Key=case.key, Body=forged)
    dest = tmp_path / "data"
    with pytest.raises(ControlRefused) as info:
        site_pull(case.entry, case.tag, dest)
    assert info.value.reason is DataPullRefusal.CONTENT_MISMATCH
    assert info.value.exit_code == 1
    assert_one_sentence(
        info.value,
        f"data/churn.csv at {case.tag}",
        "does not match the md5 recorded in git",
        case.entry.dvc_remotes[0],
    )
    assert info.value.details["actual_size"] == len(forged)
    assert not any(dest.iterdir())  # nothing half-written, not even the staged file


def test_missing_remote_object_is_a_tool_failure(world: S3World, tmp_path: Path) -> None:
    """Issue 11: the object was deleted from the site's own bucket. Nothing wrong was
    accepted and there is nothing to refuse: an infrastructure fault (exit 3) naming what
    to restore, and nothing is pulled."""
    case = case_copy(world, tmp_path, "missing")
    world.s3().delete_object(Bucket=world.bucket, Key=case.key)
    dest = tmp_path / "data"
    with pytest.raises(ToolError) as info:
        site_pull(case.entry, case.tag, dest)
    assert info.value.exit_code == 3
    _, head, tail = case.key.rsplit("/", 2)
    assert_one_sentence(
        info.value,
        case.entry.dvc_remotes[0],
        f"has no object for data/churn.csv at {case.tag}",
        f"md5 {head}{tail}",
    )
    assert "dvc push" in (info.value.fix or "")
    assert not any(dest.iterdir())


# --- credentials and the endpoint ---------------------------------------------------------


@contextmanager
def moto_auth(endpoint: str) -> Iterator[dict[str, str]]:
    """Make moto_server check credentials (as S3 does) for the block; yields a working
    access key of an IAM user allowed to read S3. The server is shared: auth is off again
    after the block, whatever happens in it."""
    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint)
    user = f"dvc-reader-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(
        UserName=user,
        PolicyName="read-data",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key(UserName=user)["AccessKey"]

    def set_auth(count: str) -> None:
        request = urllib.request.Request(  # noqa: S310 - moto_server on 127.0.0.1
            f"{endpoint}/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            assert response.status == 200

    set_auth("0")
    try:
        yield {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }
    finally:
        set_auth("inf")


def test_wrong_or_missing_credentials_name_the_remote_never_the_secret(
    world: S3World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11: the bucket refuses the worker's credentials (a wrong secret, an unknown key,
    none at all): exit 3, one sentence naming the remote and saying to check the site's
    credentials, and no secret in the message or the kept tool output. The right key,
    against the same checking server, pulls (so the refusals are the credentials')."""
    entry = entry_of(world.csv)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.aws of the machine
    with moto_auth(world.endpoint) as good:
        for name, value in good.items():
            monkeypatch.setenv(name, value)
        assert site_pull(entry, "v1.0", tmp_path / "ok").sha256

        cases = {
            "wrong-secret": {**good, "AWS_SECRET_ACCESS_KEY": WRONG_SECRET},
            "unknown-key": {
                "AWS_ACCESS_KEY_ID": "AKIAUNKNOWN0DVCS3",
                "AWS_SECRET_ACCESS_KEY": WRONG_SECRET,
            },
            "none": {},
        }
        for label, credentials in cases.items():
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                monkeypatch.delenv(name, raising=False)
            for name, value in credentials.items():
                monkeypatch.setenv(name, value)
            dest = tmp_path / label
            with pytest.raises(ToolError) as info:
                site_pull(entry, "v1.0", dest)
            error = info.value
            assert error.exit_code == 3, label
            assert_one_sentence(
                error, world.csv.remote_url, "check the site's credentials", world.endpoint
            )
            kept = json.dumps([error.message, error.where, error.fix, error.details])
            assert WRONG_SECRET not in kept and good["AWS_SECRET_ACCESS_KEY"] not in kept
            assert not dest.exists() or not any(dest.iterdir())


def test_site_aws_profile_decides_the_credentials(
    world: S3World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the site's aws_profile the pull uses that profile of the worker's AWS config,
    not whatever credentials are ambient in the worker's environment."""
    entry = entry_of(world.csv)
    with moto_auth(world.endpoint) as good:
        credentials = tmp_path / "credentials"
        credentials.write_text(
            "[data-reader]\n"
            f"aws_access_key_id = {good['AWS_ACCESS_KEY_ID']}\n"
            f"aws_secret_access_key = {good['AWS_SECRET_ACCESS_KEY']}\n"
        )
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", WRONG_SECRET)  # ambient, wrong
        with pytest.raises(ToolError, match="check the site's credentials"):
            site_pull(entry, "v1.0", tmp_path / "ambient")
        pull = site_pull(entry, "v1.0", tmp_path / "profile", aws_profile="data-reader")
        assert (
            pull.sha256
            == hashlib.sha256(churn_csv_bytes(generate_churn_dataset("v1.0", ROWS))).hexdigest()
        )
    with pytest.raises(InputError, match="not an AWS profile name"):
        site_pull(entry, "v1.0", tmp_path / "bad", aws_profile="x\n[evil]")


def test_unreachable_endpoint_fails_in_seconds(world: S3World, tmp_path: Path) -> None:
    """Issue 11: the site's S3 endpoint does not answer (a closed port on 127.0.0.1): exit 3
    within seconds (bounded connect timeout and retries), one sentence naming the remote and
    the endpoint."""
    closed = f"http://127.0.0.1:{free_port()}"
    entry = entry_of(world.csv, s3_endpoint_url=closed)
    started = time.monotonic()
    with pytest.raises(ToolError) as info:
        site_pull(entry, "v1.0", tmp_path / "data")
    elapsed = time.monotonic() - started
    assert info.value.exit_code == 3
    assert_one_sentence(info.value, world.csv.remote_url, f"could not be reached at {closed}")
    assert elapsed < 30, f"took {elapsed:.1f} s"  # ~2 s here; the default botocore took 10+


# --- the CLI ------------------------------------------------------------------------------


def test_cli_run_refuses_a_tampered_s3_dataset(
    world: S3World, tmp_path: Path, s3_endpoint: str
) -> None:
    """Issue 11, through `secmlops run`: the site's policy names an S3-backed dataset whose
    object was overwritten; the run stops at pull-data with exit 1 and one line, no
    traceback, and nothing is registered."""
    case = case_copy(world, tmp_path, "cli")
    s3 = world.s3()
    body = s3.get_object(Bucket=world.bucket, Key=case.key)["Body"].read()
    s3.put_object(Bucket=world.bucket, Key=case.key, Body=body.replace(b"C", b"X", 1))
    entry = json.loads(case.entry.model_dump_json(by_alias=True, exclude_none=True))
    entry["rev"] = case.tag
    policy = write_site_policy(tmp_path / "policy.yaml", datasets={"churn-s3": entry})
    env = {
        **os.environ,
        **AWS_TEST_ENV,
        "SECMLOPS_HOME": str(tmp_path / "home"),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "SECMLOPS_POLICY": str(policy),
        "SECMLOPS_REGISTRY": str(tmp_path / "registry"),
    }
    proc = subprocess.run(
        [str(SECMLOPS), "run", "--approve-as", "demo-approver", "--dataset", "churn-s3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    refused = [line for line in proc.stderr.splitlines() if line.startswith("refused: ")]
    assert len(refused) == 1, proc.stderr[-3000:]
    assert f"data/churn.csv at {case.tag}" in refused[0]
    assert "does not match the md5 recorded in git" in refused[0]
    assert not (tmp_path / "registry" / "churn-classifier" / "versions").exists()
