"""The data pull's trust boundary (issue 12): the site decides where data and credentials go.

Real git and DVC repos in tmp dirs, a logging HTTP server on 127.0.0.1 standing in for an
endpoint an attacker named, moto_server for an S3 remote the site allows, and a ``dvc``
wrapper that records the environment the real ``dvc`` binary was started with.
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from secmlops._internal.toolrun import resolve_binary
from secmlops.controls.data import DataPullRefusal, pull_dataset, remote_allowed
from secmlops.demo.data_registry import DataRegistry, create_demo_data_registry
from secmlops.errors import ControlRefused, InputError
from tests.conftest import RequestLog

pytestmark = pytest.mark.integration

SECRET = "AKIASECRETDONOTSEND"


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


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> DataRegistry:
    return create_demo_data_registry(tmp_path_factory.mktemp("trust") / "registry")


@pytest.fixture
def fork(registry: DataRegistry, tmp_path: Path) -> Path:
    """A data repo the run-starter controls: a clone of the demo registry they may commit to."""
    repo = tmp_path / "fork"
    subprocess.run(
        [str(resolve_binary("git")), "clone", "-q", str(registry.repo), str(repo)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    git(repo, "config", "user.name", "attacker")
    git(repo, "config", "user.email", "attacker@localhost")
    return repo


def commit_tag(
    repo: Path, tag: str, files: dict[str, str], *, symlinks: dict[str, str] | None = None
) -> str:
    symlinks = symlinks or {}
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    for name, target in symlinks.items():
        (repo / name).unlink(missing_ok=True)
        (repo / name).symlink_to(target)
    git(repo, "add", "-f", *files, *symlinks)
    git(repo, "commit", "-q", "-m", f"attack {tag}")
    git(repo, "tag", tag)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's ambient AWS credentials (including a session token)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-key-do-not-send")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-do-not-send")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def dvc_spy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run the real dvc through a wrapper that appends its environment to a file."""
    real = resolve_binary("dvc")
    log = tmp_path / "dvc-env.log"
    script = tmp_path / "dvc-spy"
    script.write_text(
        "#!/bin/sh\n"
        f"env >> {shlex.quote(str(log))}\n"
        f"echo ---- >> {shlex.quote(str(log))}\n"
        f'exec {shlex.quote(str(real))} "$@"\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("SECMLOPS_DVC", str(script))
    resolve_binary.cache_clear()
    yield log
    monkeypatch.delenv("SECMLOPS_DVC")
    resolve_binary.cache_clear()


def demo_remote(registry: DataRegistry) -> list[str]:
    return [str(registry.remote)]


def assert_refused_unseen(
    info: pytest.ExceptionInfo[ControlRefused],
    reason: DataPullRefusal,
    logger: RequestLog,
    dvc_log: Path,
    dest: Path,
) -> None:
    assert info.value.reason is reason
    assert "no request was made" in info.value.message
    assert logger.requests == []
    assert not dvc_log.exists()  # dvc never ran, so it had nothing to send anywhere
    assert not dest.exists() or not any(dest.iterdir())


# --- the remote a pulled repo names -------------------------------------------------------


def test_remote_not_in_allow_list_is_refused_before_any_request(
    registry: DataRegistry,
    fork: Path,
    tmp_path: Path,
    request_logger: RequestLog,
    aws_credentials: None,
    dvc_spy: Path,
) -> None:
    """Issue 12 finding 4: a DVC remote named in the pulled repo's .dvc/config got requests
    (with the worker's credentials). Now refused before any request; dvc never starts."""
    commit_tag(
        fork,
        "v9.0",
        {
            ".dvc/config": (
                "[core]\n    remote = evil\n['remote \"evil\"']\n"
                f"    url = {request_logger.url}/store\n"
            )
        },
    )
    dest = tmp_path / "dest"
    with pytest.raises(ControlRefused) as info:
        pull_dataset(str(fork), registry.path, "v9.0", dest, allowed_remotes=demo_remote(registry))
    assert_refused_unseen(info, DataPullRefusal.REMOTE_NOT_ALLOWED, request_logger, dvc_spy, dest)
    assert f"{request_logger.url}/store" in info.value.message  # names what it refused


@pytest.mark.parametrize(
    ("config", "dvc_file_extra", "reason"),
    [
        # The .dvc file's own `remote:` beats core.remote.
        ('[core]\n    remote = demo\n[\'remote "demo"\']\n    url = {allowed}\n'
         '[\'remote "evil"\']\n    url = {logger}/x\n', "  remote: evil\n",
         DataPullRefusal.REMOTE_NOT_ALLOWED),
        # configobj interpolation, as DVC reads it.
        ('[core]\n    remote = demo\n[\'remote "demo"\']\n    base = {logger}\n'
         '    url = %(base)s/store\n', "", DataPullRefusal.REMOTE_NOT_ALLOWED),
        # A sibling directory sharing the allowed prefix, and a way out of it.
        ('[core]\n    remote = demo\n[\'remote "demo"\']\n    url = {allowed}-evil\n', "",
         DataPullRefusal.REMOTE_NOT_ALLOWED),
        ('[core]\n    remote = demo\n[\'remote "demo"\']\n    url = {allowed}/../../x\n', "",
         DataPullRefusal.REMOTE_NOT_ALLOWED),
        # Relative to wherever DVC puts its clone.
        ('[core]\n    remote = demo\n[\'remote "demo"\']\n    url = ../remote\n', "",
         DataPullRefusal.REMOTE_NOT_ALLOWED),
        # No default remote at all.
        ('[core]\n    autostage = true\n', "", DataPullRefusal.REMOTE_NOT_ALLOWED),
        # An allowed URL, but an option that is the site's to decide.
        ('[core]\n    remote = demo\n[\'remote "demo"\']\n    url = {allowed}\n'
         '    credentialpath = /root/.aws/credentials\n', "",
         DataPullRefusal.REMOTE_OPTION_NOT_ALLOWED),
        ('[core]\n    remote = demo\n    site_cache_dir = /tmp/anywhere\n'
         '[\'remote "demo"\']\n    url = {allowed}\n', "",
         DataPullRefusal.REMOTE_OPTION_NOT_ALLOWED),
    ],
    ids=["output-remote", "interpolated", "sibling-prefix", "dotdot", "relative", "no-remote",
         "credentialpath", "site-cache-dir"],
)  # fmt: skip
def test_remote_tricks_are_refused(
    registry: DataRegistry,
    fork: Path,
    tmp_path: Path,
    request_logger: RequestLog,
    dvc_spy: Path,
    config: str,
    dvc_file_extra: str,
    reason: DataPullRefusal,
) -> None:
    dvc_file = (fork / "data" / "churn.csv.dvc").read_text() + dvc_file_extra
    commit_tag(
        fork,
        "v9.1",
        {
            ".dvc/config": config.format(allowed=registry.remote, logger=request_logger.url),
            "data/churn.csv.dvc": dvc_file,
        },
    )
    dest = tmp_path / "dest"
    with pytest.raises(ControlRefused) as info:
        pull_dataset(str(fork), registry.path, "v9.1", dest, allowed_remotes=demo_remote(registry))
    assert_refused_unseen(info, reason, request_logger, dvc_spy, dest)


def test_dvc_import_from_elsewhere_is_refused(
    registry: DataRegistry, fork: Path, tmp_path: Path, request_logger: RequestLog, dvc_spy: Path
) -> None:
    """A .dvc file that imports from another repo or URL would make DVC fetch from there."""
    dvc_file = (fork / "data" / "churn.csv.dvc").read_text()
    dvc_file += f"deps:\n- path: churn.csv\n  repo:\n    url: {request_logger.url}/other.git\n"
    commit_tag(fork, "v9.2", {"data/churn.csv.dvc": dvc_file})
    dest = tmp_path / "dest"
    with pytest.raises(ControlRefused) as info:
        pull_dataset(str(fork), registry.path, "v9.2", dest, allowed_remotes=demo_remote(registry))
    assert "import" in info.value.message
    assert info.value.reason is DataPullRefusal.REMOTE_NOT_ALLOWED
    assert request_logger.requests == [] and not dvc_spy.exists()


def test_symlinked_config_is_refused(
    registry: DataRegistry, fork: Path, tmp_path: Path, dvc_spy: Path
) -> None:
    """git would check out a link to a file on the worker, not the text that was checked."""
    commit_tag(fork, "v9.3", {}, symlinks={".dvc/config": "/etc/hostname"})
    with pytest.raises(ControlRefused, match="not a regular file") as info:
        pull_dataset(
            str(fork), registry.path, "v9.3", tmp_path / "d", allowed_remotes=demo_remote(registry)
        )
    assert info.value.reason is DataPullRefusal.REMOTE_NOT_ALLOWED
    assert not dvc_spy.exists()


def test_committed_local_config_is_never_used(
    registry: DataRegistry,
    fork: Path,
    tmp_path: Path,
    request_logger: RequestLog,
    aws_credentials: None,
    dvc_spy: Path,
) -> None:
    """A committed .dvc/config.local (which DVC layers over .dvc/config in a checkout) is not
    what DVC gets: it sees only the checked remote, and the pull succeeds from it."""
    commit_tag(
        fork,
        "v9.4",
        {".dvc/config.local": f"['remote \"demo\"']\n    url = {request_logger.url}/store\n"},
    )
    pull = pull_dataset(
        str(fork), registry.path, "v9.4", tmp_path / "d", allowed_remotes=demo_remote(registry)
    )
    assert pull.local_path.is_file()
    assert request_logger.requests == []
    # The local remote is not S3: no AWS variable reached the dvc process.
    env = dvc_spy.read_text()
    assert "AWS_" not in env and SECRET not in env and "session-token" not in env


# --- S3 remotes: credentials only to the site's endpoint ----------------------------------


def _s3_config(bucket: str, extra: str = "") -> str:
    return (
        f"[core]\n    remote = store\n['remote \"store\"']\n    url = s3://{bucket}/data\n{extra}"
    )


def test_repo_endpointurl_is_refused_and_gets_no_credentials(
    registry: DataRegistry,
    fork: Path,
    tmp_path: Path,
    request_logger: RequestLog,
    aws_credentials: None,
    dvc_spy: Path,
) -> None:
    """Issue 12 finding 4: an S3 remote whose endpointurl (in the pulled repo's config) is a
    server on 127.0.0.1 received requests signed with the worker's credentials."""
    config = _s3_config("ml-data", f"    endpointurl = {request_logger.url}\n")
    commit_tag(fork, "v9.5", {".dvc/config": config})
    for site_endpoint in (None, "https://s3.eu-central-1.amazonaws.com"):
        dest = tmp_path / f"dest-{bool(site_endpoint)}"
        with pytest.raises(ControlRefused) as info:
            pull_dataset(
                str(fork),
                registry.path,
                "v9.5",
                dest,
                allowed_remotes=["s3://ml-data/data"],
                s3_endpoint_url=site_endpoint,
            )
        assert "endpointurl" in info.value.message
        assert_refused_unseen(
            info, DataPullRefusal.REMOTE_OPTION_NOT_ALLOWED, request_logger, dvc_spy, dest
        )


def test_allowed_s3_remote_uses_the_site_endpoint_with_credentials(
    registry: DataRegistry,
    fork: Path,
    tmp_path: Path,
    s3_endpoint: str,
    aws_env: None,
    request_logger: RequestLog,
    monkeypatch: pytest.MonkeyPatch,
    dvc_spy: Path,
) -> None:
    """The good path: an allowed S3 remote gets the worker's credentials, at the site's
    endpoint only (an AWS_ENDPOINT_URL in the environment does not redirect them)."""
    import boto3

    bucket = f"trust-{hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    md5 = git(registry.repo, "show", "v1.0:data/churn.csv.dvc").split("md5: ")[1].split()[0]
    body = (registry.remote / "files" / "md5" / md5[:2] / md5[2:]).read_bytes()
    s3.put_object(Bucket=bucket, Key=f"data/files/md5/{md5[:2]}/{md5[2:]}", Body=body)
    git(fork, "checkout", "-q", "v1.0")
    commit_tag(fork, "v9.6", {".dvc/config": _s3_config(bucket)})
    monkeypatch.setenv("AWS_ENDPOINT_URL", request_logger.url)

    pull = pull_dataset(
        str(fork),
        registry.path,
        "v9.6",
        tmp_path / "dest",
        allowed_remotes=[f"s3://{bucket}/data"],
        s3_endpoint_url=s3_endpoint,
    )
    assert pull.local_path.read_bytes() == body
    assert pull.dvc_md5 == md5
    assert request_logger.requests == []
    assert "AWS_ACCESS_KEY_ID=testing" in dvc_spy.read_text()


# --- repo URL and rev ---------------------------------------------------------------------


def test_branch_rev_is_refused(registry: DataRegistry, fork: Path, tmp_path: Path) -> None:
    """Issue 12 finding 2: a branch was accepted as the pinned rev; it moves."""
    git(fork, "branch", "feature")
    with pytest.raises(InputError, match="a branch is refused"):
        pull_dataset(
            str(fork),
            registry.path,
            "feature",
            tmp_path / "d",
            allowed_remotes=demo_remote(registry),
        )


@pytest.mark.parametrize(
    "url",
    [
        "https://oauth2:tok-3f9a1c77e2@git.example.com/data/registry.git",
        "https://tok-3f9a1c77e2@git.example.com/data/registry.git",
        "ssh://git:tok-3f9a1c77e2@git.example.com/data/registry.git",
    ],
)
def test_token_in_repo_url_is_refused_without_echoing_it(
    url: str, tmp_path: Path, registry: DataRegistry, request_logger: RequestLog
) -> None:
    """Issue 12 finding 5: a repo URL with user:token@ ended up in parameters, logs and
    evidence. Refused up front, and the error itself does not carry the token."""
    with pytest.raises(InputError) as info:
        pull_dataset(url, registry.path, "v1.0", tmp_path / "d", allowed_remotes=["s3://x"])
    error = info.value
    for text in (str(error), error.diagnostics(), repr(error.details), repr(error.args)):
        assert "tok-3f9a1c77e2" not in text
    assert "***@git.example.com" in error.message


@pytest.mark.parametrize(
    "url",
    [
        "file:///srv/registry",
        "http://127.0.0.1:9/registry.git",
        "git://git.example.com/registry.git",
        "ext::sh -c touch% /tmp/pwned",
        "relative/registry",
        "~/registry",
    ],
)
def test_other_repo_url_forms_are_refused(url: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not an https://"):
        pull_dataset(url, "data/churn.csv", "v1.0", tmp_path / "d", allowed_remotes=[])


def test_remote_allowed_prefix_rules() -> None:
    allowed = ["s3://ml-data/churn", "/srv/dvc/remote/", "https://dvc.example.com/store"]
    assert remote_allowed("s3://ml-data/churn", allowed)
    assert remote_allowed("s3://ml-data/churn/v2/", allowed)
    assert remote_allowed("S3://ml-data/churn/x", allowed)
    assert remote_allowed("/srv/dvc/remote", allowed)
    assert remote_allowed("/srv/dvc/remote/sub", allowed)
    assert remote_allowed("https://dvc.example.com/store/a", allowed)
    for url in (
        "s3://ml-data/churn-other",
        "s3://ml-data",
        "s3://ml-data/churn/../other",
        "s3://other/churn",
        "/srv/dvc/remote-2",
        "/srv/dvc/remote/../../etc",
        "remote/relative",
        "~/remote",
        "https://dvc.example.com.evil/store",
        "https://dvc.example.com/store?x=1",
        "http://dvc.example.com/store",
    ):
        assert not remote_allowed(url, allowed), url
    assert not remote_allowed("s3://ml-data/churn", [])


def test_the_demo_entry_pulls_with_its_own_remote(registry: DataRegistry, tmp_path: Path) -> None:
    """What the flow passes for the demo entry: the committed config names the registry's
    final remote path, which is the one allowed."""
    pull = pull_dataset(
        registry.url, registry.path, "v1.1", tmp_path / "d", allowed_remotes=[str(registry.remote)]
    )
    assert pull.local_path.is_file()
    with pytest.raises(ControlRefused) as info:
        pull_dataset(registry.url, registry.path, "v1.1", tmp_path / "e", allowed_remotes=[])
    assert info.value.reason is DataPullRefusal.REMOTE_NOT_ALLOWED
