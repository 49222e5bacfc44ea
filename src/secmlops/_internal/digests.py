"""sha256 digests of files, bytes and whole directories (the subjects of every statement)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from secmlops.errors import InputError

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes; ``InputError`` if it is not a readable file."""
    if not path.is_file():
        raise InputError(f"{path} is not a file", where=str(path), fix="check the path")
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_files(root: Path) -> dict[str, str]:
    """Map each regular file below ``root`` (POSIX relative path) to its sha256.

    Symlinks are refused: a signed tree must not point outside itself. The files are hashed
    in the process's one hashing pool (:mod:`secmlops.controls.model_hashing`), in sorted
    order of their path parts (as ``sorted(root.rglob("*"))``).
    """
    from secmlops.controls import model_hashing  # it imports this module

    if not root.is_dir():
        raise InputError(f"{root} is not a directory", where=str(root), fix="check the path")
    tree = model_hashing.walk(root)
    for rel in sorted([*tree.symlinks, *tree.special], key=model_hashing.sort_key)[:1]:
        if rel in tree.symlinks:
            raise InputError(
                f"{rel} is a symlink; signed trees may hold regular files only",
                where=str(root / rel),
                fix="replace the symlink with the file it points at",
            )
        raise InputError(
            f"{rel} is not a regular file (a FIFO, socket or device); signed trees may "
            "hold regular files only",
            where=str(root / rel),
            fix="remove it from the folder",
        )
    try:
        return model_hashing.hash_model(root, tree=tree).files
    except model_hashing.ModelReadError as exc:
        raise exc.error from exc  # as sha256_file would have raised it


def tree_digest(root: Path) -> str:
    """One sha256 for a directory: over the canonical JSON of ``{relative path: sha256}``."""
    return manifest_digest(tree_files(root))


def manifest_digest(files: dict[str, str]) -> str:
    """The tree digest of an already computed ``{relative path: sha256}`` manifest."""
    canonical = json.dumps(files, sort_keys=True, separators=(",", ":")).encode()
    return sha256_bytes(canonical)
