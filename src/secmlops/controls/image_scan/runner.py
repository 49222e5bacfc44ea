"""Run the real Trivy, fully offline, against one image and return what it found.

``scan_image`` runs ``trivy image`` through the one subprocess helper
(:mod:`secmlops._internal.toolrun`: argument list, allow-listed environment, timeout) against
a docker-archive tar or an OCI layout directory (``--input``, resolved to an absolute path),
with the air-gapped flags and the DB from ``cache_dir``. It binds the report to the image it
meant to scan (the config digest of the archive or layout) and to the DB it used (unchanged
during the scan).

Network: with the offline flags Trivy still contacts the registry of any image *reference*
it is given (``127.0.0.1:8080/x:y`` makes it call ``https://127.0.0.1:8080/v2/``), so a
target that is not an existing local archive or layout is refused (``InputError``) before
Trivy runs, unless the site entry sets ``registry_access`` (then ``--image-src remote``: the
registry only, no local daemon sockets). Trivy never sees proxy variables or AWS
credentials, and without registry access not the worker's ``HOME`` either (its
``~/.docker/config.json`` credential helpers).

Example::

    inv = trivy_invocation(Path("build/serving.tar"), cache_dir=cache, policy=ScanPolicy())
    print(" ".join(inv.argv))
    result = scan_image(Path("build/serving.tar"), cache_dir=cache, policy=ScanPolicy())

Fail closed: a missing DB, a Trivy that fails, times out or prints anything but a valid
report raises ``ToolError`` (exit 3), never a pass. The decision never uses Trivy's exit code.
"""

from __future__ import annotations

import json
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from secmlops._internal.digests import sha256_bytes, sha256_file
from secmlops._internal.toolrun import resolve_binary, run_tool
from secmlops.controls.image_scan.binary import binary_refusal, trivy_binary_sha256
from secmlops.controls.image_scan.db import read_trivy_db_info
from secmlops.controls.image_scan.findings import ImageScanResult
from secmlops.controls.image_scan.policy import ScanPolicy
from secmlops.controls.image_scan.report import (
    parse_findings,
    report_image_digest,
    report_trivy_version,
    unusable_report,
)
from secmlops.controls.image_scan.verdict import scan_fixes
from secmlops.errors import ControlRefused, InputError, ToolError
from secmlops.evidence.statements import utc_now

#: Flags that keep Trivy 0.76 from touching the network for anything but an image reference
#: (DB, Java DB, checks bundle and VEX repo downloads, version check, telemetry, and the API
#: lookups some language analyzers make to identify dependencies).
OFFLINE_FLAGS: tuple[str, ...] = (
    "--skip-db-update",
    "--skip-java-db-update",
    "--skip-check-update",
    "--skip-vex-repo-update",
    "--skip-version-check",
    "--disable-telemetry",
    "--offline-scan",
)
#: Env var that points the control at a specific trivy binary.
TRIVY_BINARY_ENV = "SECMLOPS_TRIVY"
#: Trivy's exit code is not the decision, but we still expect it to succeed.
_TIMEOUT_GRACE_SECONDS = 30


@dataclass(frozen=True)
class TrivyInvocation:
    """Exactly how ``scan_image`` runs Trivy (the argv and the env it may see)."""

    argv: tuple[str, ...]
    env_allow: tuple[str, ...] = ()
    extra_env: Mapping[str, str] = field(default_factory=dict)
    archive: Path | None = None
    #: Run Trivy with HOME set to its empty working dir (no registry access).
    isolated_home: bool = True


def _target_args(target: str | Path, registry_access: bool) -> tuple[list[str], Path | None]:
    """``--input`` for a tar or OCI layout dir; an image reference only with registry access."""
    path = Path(target)
    if isinstance(target, Path) or path.exists():
        if path.is_file():
            if not tarfile.is_tarfile(path):
                raise InputError(
                    f"{path} is not a tar archive",
                    where=str(path),
                    fix="pass a docker-archive tar (`docker save`), an OCI layout dir or a ref",
                )
            # Trivy runs in an empty temporary cwd: hand it absolute paths.
            return ["--input", str(path.resolve())], path
        if path.is_dir():
            if not (path / "oci-layout").is_file() or not (path / "index.json").is_file():
                raise InputError(
                    f"{path} is a directory but not an OCI image layout (no oci-layout/index.json)",
                    where=str(path),
                    fix="pass an OCI layout directory or a docker-archive tar",
                )
            return ["--input", str(path.resolve())], None
        raise InputError(f"image archive {path} does not exist", where=str(path))
    ref = str(target)
    if not ref or ref.startswith("-") or any(c.isspace() for c in ref):
        raise InputError(f"{ref!r} is not an image reference", where="scan_image target")
    if not registry_access:
        # Trivy would contact the reference's registry despite every offline flag.
        raise InputError(
            f"image {ref!r} is not an existing local docker-archive tar or OCI layout "
            "directory, and registry access is off",
            where="scan_image target",
            fix="give the path of a local archive (`docker save`) or OCI layout; to let Trivy "
            "pull from a registry the site trusts, set registry_access: true on that image's "
            "entry in sources.images of the policy file",
        )
    # Only the registry: never a docker/containerd/podman socket on the worker.
    return ["--image-src", "remote", ref], None


def trivy_invocation(
    target: str | Path, *, cache_dir: Path, policy: ScanPolicy, registry_access: bool = False
) -> TrivyInvocation:
    """Build the Trivy command for ``target`` (used by ``scan_image``; shown in docs/tests).

    ``InputError`` for a target that is not a local archive or layout, unless
    ``registry_access`` (the site entry's) lets Trivy pull it from its registry.
    """
    target_args, archive = _target_args(target, registry_access)
    cache_dir = cache_dir.resolve()  # Trivy runs in an empty temporary cwd
    trivy = resolve_binary("trivy", TRIVY_BINARY_ENV)
    argv = [
        str(trivy),
        "image",
        "--format",
        "json",
        "--quiet",
        "--no-progress",
        "--cache-dir",
        str(cache_dir),
        # Fanal's layer cache would be written under cache_dir; the DB dir may be read-only.
        "--cache-backend",
        "memory",
        "--scanners",
        ",".join(policy.scanners),
        "--timeout",
        f"{policy.timeout_seconds}s",
        # We decide from the JSON: report every severity and every status.
        "--exit-code",
        "0",
    ]
    if policy.offline:
        argv += OFFLINE_FLAGS
    argv += target_args
    # No env_allow: Trivy gets only the base allow-list (no AWS_*, no TRIVY_* overrides, no
    # *_PROXY). Without registry access it does not get the worker's HOME either
    # (scan_image points HOME at the empty working dir): no ~/.docker credential helpers.
    return TrivyInvocation(argv=tuple(argv), archive=archive, isolated_home=not registry_access)


def _docker_archive_config_digest(archive: Path) -> str:
    """sha256 of the config blob a docker-archive's manifest.json names (the image ID)."""
    try:
        with tarfile.open(archive) as tar:
            manifest_member = tar.extractfile("manifest.json")
            if manifest_member is None:
                raise KeyError("manifest.json")
            manifest = json.loads(manifest_member.read())
            if not isinstance(manifest, list) or len(manifest) != 1:
                raise InputError(
                    f"{archive} holds {len(manifest) if isinstance(manifest, list) else 0} "
                    "images; scan one image per archive",
                    where=str(archive),
                )
            config = tar.extractfile(str(manifest[0]["Config"]))
            if config is None:
                raise KeyError(manifest[0]["Config"])
            return sha256_bytes(config.read())
    except (KeyError, TypeError, ValueError, tarfile.TarError) as exc:
        raise InputError(
            f"{archive} is not a docker-archive (manifest.json/config unreadable: {exc})",
            where=str(archive),
            fix="create it with `docker save` or secmlops.demo.serving_image.build_serving_image",
        ) from exc


def _oci_layout_config_digest(layout: Path) -> str:
    """sha256 of the config blob of the single image in an OCI layout (the image ID)."""
    try:
        index = json.loads((layout / "index.json").read_text(encoding="utf-8"))
        manifests = index["manifests"]
        if len(manifests) != 1:
            raise InputError(
                f"{layout} holds {len(manifests)} images; scan one image per layout",
                where=str(layout),
            )
        manifest_hex = str(manifests[0]["digest"]).removeprefix("sha256:")
        manifest = json.loads((layout / "blobs" / "sha256" / manifest_hex).read_bytes())
        config_hex = str(manifest["config"]["digest"]).removeprefix("sha256:")
        return sha256_file(layout / "blobs" / "sha256" / config_hex)
    except (OSError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise InputError(
            f"{layout} is not a readable OCI image layout ({exc})", where=str(layout)
        ) from exc


def _trivy_version(trivy: str, timeout: float) -> str:
    proc = run_tool(
        [trivy, "--version", "--format", "json"], timeout=timeout, what="trivy --version"
    )
    try:
        version = json.loads(proc.stdout)["Version"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ToolError("`trivy --version --format json` returned garbage", where=trivy) from exc
    return str(version)


def scan_image(
    target: str | Path,
    *,
    cache_dir: Path,
    policy: ScanPolicy,
    registry_access: bool = False,
) -> ImageScanResult:
    """Scan an image with the real Trivy and the DB in ``cache_dir``; return what it found.

    ``target``: a docker-archive tar or OCI layout directory (a ``Path`` or an existing
    path, relative ones resolved first), or, only with ``registry_access`` (the site
    entry's), an image reference Trivy pulls from its registry. Raises ``ToolError`` for a
    missing DB, a failing or timed-out Trivy, or a report that is not valid; ``InputError``
    for a target that is not an image or a reference without registry access (before Trivy
    runs). Which DB counts and whether this is the served image are decided afterwards
    (:func:`~secmlops.controls.image_scan.verdict.enforce_scan_policy`,
    :func:`~secmlops.controls.image_scan.served.enforce_served_image`).
    """
    invocation = trivy_invocation(
        target, cache_dir=cache_dir, policy=policy, registry_access=registry_access
    )
    # Which program runs, by the bytes of the file executed (never by what it says it is):
    # an unpinned binary is refused before it runs, so its report never counts.
    trivy_path = Path(invocation.argv[0]).resolve()
    trivy_sha256 = trivy_binary_sha256(trivy_path)
    problem = binary_refusal(trivy_sha256, policy=policy)
    if problem is not None:
        reason, message = problem
        raise ControlRefused(
            message,
            where=str(trivy_path),
            fix=" ".join(scan_fixes([reason])),
            reason=reason,
            details={"trivyPath": str(trivy_path), "trivySha256": trivy_sha256},
        )
    db_before = read_trivy_db_info(cache_dir) if policy.offline else None
    archive_digest = archive_config = None
    if invocation.archive is not None:
        archive_digest = sha256_file(invocation.archive)
        archive_config = _docker_archive_config_digest(invocation.archive)
    elif isinstance(target, Path) or Path(target).is_dir():
        archive_config = _oci_layout_config_digest(Path(target))

    started = utc_now()
    # An empty working dir: Trivy reads .trivyignore and trivy.yaml from its cwd, and a
    # stray one there could silently drop findings.
    with tempfile.TemporaryDirectory(prefix="secmlops-trivy-") as workdir:
        extra_env = dict(invocation.extra_env)
        if invocation.isolated_home:
            extra_env["HOME"] = workdir
        proc = run_tool(
            invocation.argv,
            timeout=policy.timeout_seconds + _TIMEOUT_GRACE_SECONDS,
            env_allow=invocation.env_allow,
            extra_env=extra_env,
            cwd=workdir,
            what="trivy image",
        )
    finished = utc_now()

    report = proc.stdout.encode()
    try:
        raw = json.loads(report)
    except ValueError as exc:
        raise unusable_report(f"not JSON ({exc})", {"stdout_head": proc.stdout[:500]}) from exc
    if not isinstance(raw, dict) or raw.get("SchemaVersion") != 2:
        raise unusable_report("not a Trivy JSON report with SchemaVersion 2")
    if not isinstance(raw.get("ArtifactName"), str):
        raise unusable_report("ArtifactName is missing")
    results = raw.get("Results") or []
    if not isinstance(results, list):
        raise unusable_report("Results is not a list")
    findings, packages = parse_findings(results)
    image_digest = report_image_digest(raw)
    if archive_config is not None and archive_config != image_digest:
        raise ToolError(
            f"trivy scanned image {image_digest[:12]} but the archive's config is "
            f"{archive_config[:12]}",
            where=str(invocation.archive),
            fix="the archive changed during the scan or is malformed; rebuild and rescan",
        )
    db = read_trivy_db_info(cache_dir)
    if db_before is not None and db_before.sha256 != db.sha256:
        raise ToolError("the Trivy DB changed during the scan", where=str(db.path))

    metadata = raw.get("Metadata") or {}
    os_info = metadata.get("OS") or {}
    return ImageScanResult(
        target=str(target),
        artifact_name=str(raw["ArtifactName"]),
        artifact_type=str(raw.get("ArtifactType", "")),
        image_digest=image_digest,
        archive_sha256=archive_digest,
        repo_tags=tuple(str(t) for t in metadata.get("RepoTags") or []),
        os_family=str(os_info.get("Family", "")),
        os_name=str(os_info.get("Name", "")),
        os_eosl=bool(os_info.get("EOSL", False)),
        packages_scanned=packages,
        trivy_version=report_trivy_version(raw) or _trivy_version(invocation.argv[0], 60),
        db=db,
        scanners=policy.scanners,
        findings=tuple(findings),
        report_sha256=sha256_bytes(report),
        scan_started_at=started,
        scan_finished_at=finished,
        raw_report=report,
        trivy_sha256=trivy_sha256,
        trivy_path=str(trivy_path),
    )
