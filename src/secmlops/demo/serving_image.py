"""Build the demo's serving image without Docker: a deterministic docker-archive tar.

The image has two layers: a Debian 12 (bookworm) base layer (``/etc/os-release``,
``/var/lib/dpkg/status`` with patched bookworm package versions) and an app layer holding a
``*.dist-info/METADATA`` for every *runtime* package locked in ``uv.lock``. It carries no
binaries: it exists so the scan control has a real image whose package inventory matches
the project's lock file, scanned by the real Trivy, with no Docker daemon and no network.

The archive is deterministic (fixed mtimes and owners, sorted entries, canonical JSON), so
the same lock file gives the same image digest (the sha256 of the config blob, the image ID).

Example::

    image = build_serving_image(Path("build/serving.tar"), lock_file=Path("uv.lock"))
    print(image.tag, image.image_digest)
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.markers import InvalidMarker, Marker

from secmlops._internal.atomic import write_atomic
from secmlops._internal.digests import sha256_bytes, sha256_file
from secmlops.errors import InputError

DEFAULT_TAG = "secmlops/serving:demo"
#: Fixed timestamp for every entry and the config (Debian 12's release day): reproducible builds.
IMAGE_EPOCH = dt.datetime(2023, 6, 10, tzinfo=dt.UTC)
SITE_PACKAGES = "usr/local/lib/python3.11/site-packages"

#: The platform the image targets; uv.lock markers are evaluated against it.
MARKER_ENVIRONMENT: dict[str, str] = {
    "implementation_name": "cpython",
    "implementation_version": "3.11.9",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_system": "Linux",
    "platform_version": "",
    "python_full_version": "3.11.9",
    "python_version": "3.11",
    "sys_platform": "linux",
}


@dataclass(frozen=True)
class DpkgPackage:
    """One installed Debian package as ``/var/lib/dpkg/status`` lists it."""

    name: str
    version: str
    source: str | None = None  # source package name, when it differs from ``name``
    source_version: str | None = None  # when the binary was rebuilt (binNMU, "+b1")
    architecture: str = "amd64"
    section: str = "libs"

    def status_stanza(self) -> str:
        lines = [
            f"Package: {self.name}",
            "Status: install ok installed",
            "Priority: optional",
            f"Section: {self.section}",
            "Maintainer: Debian Developers <debian-devel@lists.debian.org>",
            f"Architecture: {self.architecture}",
        ]
        if self.source:
            suffix = f" ({self.source_version})" if self.source_version else ""
            lines.append(f"Source: {self.source}{suffix}")
        lines += [f"Version: {self.version}", f"Description: {self.name} (secmlops demo image)"]
        return "\n".join(lines) + "\n"


def _pkg(name: str, version: str, source: str | None = None, **kw: Any) -> DpkgPackage:
    return DpkgPackage(name=name, version=version, source=source, **kw)


#: A python:3.11-slim-bookworm-like base at patched bookworm versions (point release 12.7).
#: glibc, tar and coreutils carry advisories Debian will not fix (LOW): the demo report
#: shows findings below the policy threshold.
BOOKWORM_BASE: tuple[DpkgPackage, ...] = (
    _pkg("base-files", "12.4+deb12u7", section="admin", architecture="amd64"),
    _pkg("bash", "5.2.15-2+b2", "bash", source_version="5.2.15-2", section="shells"),
    _pkg("ca-certificates", "20230311", section="misc", architecture="all"),
    _pkg("coreutils", "9.1-1", section="utils"),
    _pkg("curl", "7.88.1-10+deb12u7", section="web"),
    _pkg("dash", "0.5.12-2", section="shells"),
    _pkg("debian-archive-keyring", "2023.3+deb12u1", section="misc", architecture="all"),
    _pkg("debianutils", "5.7-0.5~deb12u1", section="utils"),
    _pkg("diffutils", "1:3.8-4", section="utils"),
    _pkg("findutils", "4.9.0-4", section="utils"),
    _pkg("gcc-12-base", "12.2.0-14", "gcc-12"),
    _pkg("grep", "3.8-5", section="utils"),
    _pkg("gzip", "1.12-1", section="utils"),
    _pkg("hostname", "3.23+nmu1", section="admin"),
    _pkg("libbz2-1.0", "1.0.8-5+b1", "bzip2", source_version="1.0.8-5"),
    _pkg("libc-bin", "2.36-9+deb12u7", "glibc", section="libs"),
    _pkg("libc6", "2.36-9+deb12u7", "glibc"),
    _pkg("libcrypt1", "1:4.4.33-2", "libxcrypt"),
    _pkg("libcurl4", "7.88.1-10+deb12u7", "curl"),
    _pkg("libexpat1", "2.5.0-1+deb12u1", "expat"),
    _pkg("libffi8", "3.4.4-1", "libffi"),
    _pkg("libgcc-s1", "12.2.0-14", "gcc-12"),
    _pkg("liblzma5", "5.4.1-0.2", "xz-utils"),
    _pkg("libncursesw6", "6.4-4", "ncurses"),
    _pkg("libpcre2-8-0", "10.42-1", "pcre2"),
    _pkg("libreadline8", "8.2-1.3", "readline"),
    _pkg("libsqlite3-0", "3.40.1-2+deb12u1", "sqlite3"),
    _pkg("libssl3", "3.0.13-1~deb12u1", "openssl"),
    _pkg("libstdc++6", "12.2.0-14", "gcc-12"),
    _pkg("libzstd1", "1.5.4+dfsg2-5", "libzstd"),
    _pkg("mawk", "1.3.4.20200120-3.1", section="interpreters"),
    _pkg("ncurses-base", "6.4-4", "ncurses", section="misc", architecture="all"),
    _pkg("openssl", "3.0.13-1~deb12u1", section="utils"),
    _pkg("perl-base", "5.36.0-7+deb12u1", "perl", section="perl"),
    _pkg("sed", "4.9-1", section="utils"),
    _pkg("tar", "1.34+dfsg-1.2+deb12u1", section="utils"),
    _pkg("tzdata", "2024a-0+deb12u1", section="localization", architecture="all"),
    _pkg("zlib1g", "1:1.2.13.dfsg-1", "zlib"),
)

OS_RELEASE = """PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
SUPPORT_URL="https://www.debian.org/support"
BUG_REPORT_URL="https://bugs.debian.org/"
"""
DEBIAN_VERSION = "12.7\n"


@dataclass(frozen=True)
class ServingImage:
    """A built docker-archive: where, its tag, image ID (config sha256) and layer digests."""

    path: Path
    tag: str
    image_digest: str  # sha256 hex of the config blob: the image ID
    layer_digests: tuple[str, ...]  # sha256 hex of each uncompressed layer tar (diff_ids)
    archive_sha256: str
    python_packages: Mapping[str, str] = field(default_factory=dict)
    dpkg_packages: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "tag": self.tag,
            "imageDigest": self.image_digest,
            "layerDigests": list(self.layer_digests),
            "archiveSha256": self.archive_sha256,
            "pythonPackages": dict(self.python_packages),
            "dpkgPackages": dict(self.dpkg_packages),
        }


# --- uv.lock -------------------------------------------------------------------------------

_NAME_SEPARATORS = re.compile(r"[-_.]+")


def _normalize(name: str) -> str:
    return _NAME_SEPARATORS.sub("-", name).lower()


def _marker_applies(marker: str | None, where: str) -> bool:
    if not marker:
        return True
    try:
        return Marker(marker).evaluate(dict(MARKER_ENVIRONMENT))
    except InvalidMarker as exc:
        raise InputError(f"invalid marker {marker!r}: {exc}", where=where) from exc


def locked_runtime_packages(lock_file: Path) -> dict[str, str]:
    """``{name: version}`` of the packages the project needs at run time (no dev group).

    Walks the lock's dependency graph from the project's own entry, following extras and
    evaluating markers for Linux x86_64 CPython 3.11 (the image's platform).
    """
    where = str(lock_file)
    try:
        lock = tomllib.loads(lock_file.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"cannot read lock file {lock_file}: {exc}", where=where) from exc
    packages = lock.get("package")
    if not isinstance(packages, list):
        raise InputError(f"{lock_file} has no [[package]] entries", where=where)
    by_name: dict[str, list[dict[str, Any]]] = {}
    root: dict[str, Any] | None = None
    for pkg in packages:
        by_name.setdefault(_normalize(pkg["name"]), []).append(pkg)
        source = pkg.get("source", {})
        if "." in (source.get("editable"), source.get("virtual")):
            root = pkg
    if root is None:
        raise InputError(
            f"{lock_file} has no editable/virtual project entry to start from",
            where=where,
            fix="pass the project's own uv.lock",
        )

    def resolve(dep: Mapping[str, Any]) -> dict[str, Any]:
        candidates = by_name.get(_normalize(dep["name"]), [])
        if "version" in dep:
            candidates = [c for c in candidates if c.get("version") == dep["version"]]
        if len(candidates) != 1:
            raise InputError(
                f"{lock_file}: cannot resolve dependency {dep['name']!r} "
                f"({len(candidates)} candidates)",
                where=where,
            )
        return candidates[0]

    result: dict[str, str] = {}
    seen: set[tuple[str, str, str]] = set()
    queue: list[tuple[dict[str, Any], tuple[str, ...]]] = [(root, ())]
    while queue:
        pkg, extras = queue.pop()
        deps = list(pkg.get("dependencies", []))
        optional = pkg.get("optional-dependencies", {})
        for extra in extras:
            deps += optional.get(extra, [])
        for dep in deps:
            if not _marker_applies(dep.get("marker"), where):
                continue
            target = resolve(dep)
            dep_extras = tuple(dep.get("extra", ()))
            key = (_normalize(target["name"]), str(target.get("version")), ",".join(dep_extras))
            if key in seen:
                continue
            seen.add(key)
            if "version" not in target:
                raise InputError(f"{lock_file}: {target['name']} has no version", where=where)
            result[_normalize(target["name"])] = str(target["version"])
            queue.append((target, dep_extras))
    result.pop(_normalize(root["name"]), None)
    return dict(sorted(result.items()))


# --- tar building --------------------------------------------------------------------------


def _mtime() -> int:
    return int(IMAGE_EPOCH.timestamp())


def _layer_tar(files: Mapping[str, bytes]) -> bytes:
    """A deterministic layer tar: parent directories, sorted paths, root-owned, fixed mtime."""
    dirs: set[str] = set()
    for path in files:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    entries: list[tuple[str, bytes | None]] = [(d, None) for d in dirs]
    entries += list(files.items())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in sorted(entries, key=lambda e: e[0]):
            info = tarfile.TarInfo(path)
            info.mtime = _mtime()
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.mode = 0o644
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _dist_info_metadata(name: str, version: str) -> bytes:
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()


def _dist_info_dir(name: str, version: str) -> str:
    return f"{SITE_PACKAGES}/{_normalize(name).replace('-', '_')}-{version}.dist-info"


def build_serving_image(
    out_path: Path,
    *,
    lock_file: Path,
    tag: str = DEFAULT_TAG,
    extra_python_packages: Mapping[str, str] | None = None,
    extra_dpkg: Iterable[DpkgPackage] = (),
    extra_files: Mapping[str, bytes] | None = None,
) -> ServingImage:
    """Write the serving image as a docker-archive tar at ``out_path`` (temp file + rename).

    ``extra_python_packages`` adds or replaces ``{name: version}`` over the locked set and
    ``extra_dpkg`` adds or replaces Debian packages by name, ``extra_files``
    (``{"relative/path": bytes}``) adds a third layer: tests use them to build a
    deliberately vulnerable image (old packages, a leaked key) from the same code.
    """
    if ":" not in tag.rsplit("/", 1)[-1]:
        raise InputError(f"image tag {tag!r} has no ':<tag>' part", where="build_serving_image")
    python = locked_runtime_packages(lock_file)
    for name, version in (extra_python_packages or {}).items():
        python[_normalize(name)] = version
    dpkg = {p.name: p for p in BOOKWORM_BASE}
    for pkg in extra_dpkg:
        dpkg[pkg.name] = pkg

    status = "\n".join(dpkg[name].status_stanza() for name in sorted(dpkg))
    base_layer = _layer_tar(
        {
            "etc/os-release": OS_RELEASE.encode(),
            "etc/debian_version": DEBIAN_VERSION.encode(),
            "var/lib/dpkg/status": status.encode(),
        }
    )
    app_layer = _layer_tar(
        {
            f"{_dist_info_dir(n, v)}/METADATA": _dist_info_metadata(n, v)
            for n, v in sorted(python.items())
        }
    )
    layers = [base_layer, app_layer]
    if extra_files:
        for path in extra_files:
            if path.startswith("/") or ".." in path.split("/"):
                raise InputError(f"extra file path {path!r} must be relative, without '..'")
        layers.append(_layer_tar(extra_files))
    steps = ["secmlops: debian 12 (bookworm) base", "secmlops: python packages from uv.lock"]
    steps += ["secmlops: extra files"] * (len(layers) - len(steps))
    diff_ids = [sha256_bytes(layer) for layer in layers]
    created = IMAGE_EPOCH.strftime("%Y-%m-%dT%H:%M:%SZ")
    config = _canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {
                "Env": [
                    "PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "LANG=C.UTF-8",
                    "PYTHONDONTWRITEBYTECODE=1",
                ],
                "User": "10001:10001",
                "WorkingDir": "/srv",
                "Cmd": ["python3", "-m", "serving"],
                "Labels": {
                    "org.opencontainers.image.title": "secmlops serving image (demo)",
                    "dev.secmlops.lock-sha256": sha256_file(lock_file),
                },
            },
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
            "history": [{"created": created, "created_by": step} for step in steps],
        }
    )
    image_digest = sha256_bytes(config)
    blobs = {f"blobs/sha256/{d}": layer for d, layer in zip(diff_ids, layers, strict=True)}
    blobs[f"blobs/sha256/{image_digest}"] = config
    manifest = [
        {
            "Config": f"blobs/sha256/{image_digest}",
            "RepoTags": [tag],
            "Layers": [f"blobs/sha256/{d}" for d in diff_ids],
        }
    ]
    archive = _archive_tar({**blobs, "manifest.json": _canonical_json(manifest)})

    write_atomic(out_path, archive)
    return ServingImage(
        path=out_path,
        tag=tag,
        image_digest=image_digest,
        layer_digests=tuple(diff_ids),
        archive_sha256=sha256_bytes(archive),
        python_packages=python,
        dpkg_packages={name: dpkg[name].version for name in sorted(dpkg)},
    )


def _archive_tar(files: Mapping[str, bytes]) -> bytes:
    """The outer docker-archive: blobs then manifest.json, deterministic."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in ["blobs", "blobs/sha256"]:
            info = tarfile.TarInfo(path)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, _mtime()
            tar.addfile(info)
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.mode, info.mtime, info.size = 0o644, _mtime(), len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


#: Media types of the OCI image the layout holds (layers stay uncompressed tars).
OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"


@dataclass(frozen=True)
class OciImage:
    """A docker-archive's image as an OCI image manifest, with its blobs.

    ``manifest_digest`` is the sha256 of the manifest bytes: the digest a registry serves the
    image under (``repo@sha256:...``) when these exact bytes and blobs are pushed, which
    tools that copy an OCI layout as it is do (``oras cp --from-oci-layout``, ``crane push``,
    ``skopeo copy --preserve-digests oci:...``). A tool that recompresses the layers on push
    (``docker push``, ``skopeo copy`` without ``--preserve-digests``) writes another manifest
    with another digest, which nothing signed here names. ``config_digest`` is the image ID
    (:attr:`ServingImage.image_digest`).
    """

    manifest: bytes
    config: bytes
    layers: tuple[bytes, ...]
    tag: str | None = None  # the archive's first RepoTag (``name:tag``), if any

    @property
    def manifest_digest(self) -> str:
        return sha256_bytes(self.manifest)

    @property
    def config_digest(self) -> str:
        return sha256_bytes(self.config)

    def blobs(self) -> dict[str, bytes]:
        """``{sha256 hex: bytes}`` of the manifest, the config and every layer."""
        return {sha256_bytes(b): b for b in (self.manifest, self.config, *self.layers)}


def oci_image_manifest(config: bytes, layers: Iterable[bytes]) -> bytes:
    """The canonical OCI image manifest (uncompressed layers) for a config and layers."""
    return _canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": OCI_CONFIG_MEDIA_TYPE,
                "digest": f"sha256:{sha256_bytes(config)}",
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": OCI_LAYER_MEDIA_TYPE,
                    "digest": f"sha256:{sha256_bytes(layer)}",
                    "size": len(layer),
                }
                for layer in layers
            ],
        }
    )


def oci_image_from_archive(archive: Path) -> OciImage:
    """Read a docker-archive (``docker save``, :func:`build_serving_image`) as an OCI image.

    ``InputError`` if it is not a readable single-image docker-archive.
    """
    where = str(archive)
    try:
        with tarfile.open(archive) as tar:
            manifests = json.loads(_member(tar, "manifest.json"))
            if not isinstance(manifests, list) or len(manifests) != 1:
                raise InputError(
                    f"{archive} holds {len(manifests) if isinstance(manifests, list) else 0} "
                    "images, not one",
                    where=where,
                    fix="save one image per archive",
                )
            entry = manifests[0]
            config = _member(tar, entry["Config"])
            layers = tuple(_member(tar, name) for name in entry["Layers"])
    except (OSError, tarfile.TarError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"cannot read the image archive {archive}: {exc}", where=where) from exc
    tags = entry.get("RepoTags") or []
    return OciImage(
        manifest=oci_image_manifest(config, layers),
        config=config,
        layers=layers,
        tag=str(tags[0]) if tags else None,
    )


def image_manifest_digest(image: ServingImage | Path) -> str:
    """The sha256 hex of the OCI manifest of a built image (see :class:`OciImage`): what
    :func:`write_oci_layout` writes and a registry serves when that layout is pushed as is."""
    path = image.path if isinstance(image, ServingImage) else image
    return oci_image_from_archive(path).manifest_digest


def write_oci_layout(image: ServingImage, out_dir: Path) -> Path:
    """Write ``image`` (a docker-archive built above) as an OCI image layout directory.

    Trivy reads an OCI layout as a directory (``--input dir``). The config and layer blobs
    are the same bytes, so the image ID (config digest) is unchanged; the manifest is
    :func:`oci_image_manifest`, its digest :func:`image_manifest_digest`.
    """
    if out_dir.exists():
        raise InputError(f"{out_dir} already exists", where=str(out_dir), fix="remove it first")
    oci = oci_image_from_archive(image.path)
    oci_manifest, config, layers = oci.manifest, oci.config, oci.layers
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": OCI_MANIFEST_MEDIA_TYPE,
                "digest": f"sha256:{oci.manifest_digest}",
                "size": len(oci_manifest),
                "annotations": {"org.opencontainers.image.ref.name": image.tag.rsplit(":", 1)[1]},
            }
        ],
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        blobs = tmp / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        for blob in [config, oci_manifest, *layers]:
            (blobs / sha256_bytes(blob)).write_bytes(blob)
        (tmp / "oci-layout").write_bytes(_canonical_json({"imageLayoutVersion": "1.0.0"}))
        (tmp / "index.json").write_bytes(_canonical_json(index))
        tmp.chmod(0o755)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    fh = tar.extractfile(name)
    if fh is None:
        raise InputError(f"{name} missing from the image archive", where=name)
    return fh.read()
