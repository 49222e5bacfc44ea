"""Hash a model directory once, in parallel: model-signing's manifest and ``tree_digest``.

Signing and verifying a model need two views of the same bytes: model-signing's v1.0
manifest (one sha256 per file, or per shard of ``shard_size`` bytes) and SecMLOps' model
digest, :func:`~secmlops._internal.digests.tree_digest` (sha256 over the canonical JSON of
``{path: whole-file sha256}``), which release manifests, fetch, the gate and the scans
compare. This module reads every byte once per digest it needs:

- ``files`` serialization (the default): the whole-file sha256 *is* the manifest's resource
  digest, so one hash per byte gives both views;
- ``shards`` serialization: every shard is a task of its own, so both cores hash one large
  file. Shards cannot give a whole-file sha256 (SHA-256 is a sequential chain): with
  ``whole_files=True`` each file is also hashed whole by one task, side by side with its
  shards (two hashes per byte); with ``whole_files=False`` (``secmlops sign/verify
  --shard-size``) only the shards are hashed, once per byte.

**The model digest**, one definition for both: sha256 over the canonical JSON (sorted keys,
no spaces) of ``{resource name: sha256}``, the manifest that is signed
(:attr:`ModelDigests.manifest_digest`). For a ``files`` manifest the resources are the files
and this *is* :func:`~secmlops._internal.digests.tree_digest`. For a ``shards`` manifest it is
the digest of ``{"path:start:end": sha256}``, another number: whatever compares it with a
``tree_digest`` (a release manifest, the gate) needs the whole-file view too
(:attr:`ModelDigests.tree_digest`, computed with ``whole_files=True``).
:attr:`ModelDigests.model_digest` is the ``tree_digest`` whenever whole files were hashed,
else the manifest digest.

All hashing runs in ONE thread pool per process (hashlib releases the GIL on large
updates), created on first use and reused: a model of a thousand files pays no thread or
process start-up per file. Small files are batched into tasks of ~16 MiB; large files are
tasks of their own, largest first. Reads are 1 MiB ``readinto`` a reused buffer (no mmap: a
file truncated under an mmap kills the process with SIGBUS).

A whole file's sha256 is one sequential chain, so a single large file is hashed on one core
whatever the pool does: the ``files`` manifest of a one-file model costs one core's time
(measured in docs/benchmarks.md, "Model signing speed (issue 10)").

"Changed while hashing" is caught without hashing again: :func:`hash_model` records every
file's ``(size, mtime_ns, ctime_ns, inode, device)`` before hashing, and
:func:`changed_files` lists the files whose state or presence differs afterwards. A write
within the same clock tick as the first ``stat`` can leave those unchanged, so files whose
``ctime`` is within :data:`RACY_WINDOW_NS` of the walk are hashed a second time (as git
treats "racily clean" index entries); a model written seconds before signing pays that,
any older model does not.

Example::

    digests = hash_model(Path("model"))            # files serialization
    digests.model_digest == tree_digest(Path("model"))
    assert not changed_files(digests)
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from secmlops._internal.digests import manifest_digest

#: Read size: 1 MiB fits the L2 cache, so the hash reads what the copy just wrote.
CHUNK = 1 << 20
#: Small files are hashed in batches of about this many bytes (one pool task each).
BATCH_BYTES = 16 << 20
#: Files changed this close to the walk (or later) are re-hashed after the state check.
RACY_WINDOW_NS = 2_000_000_000
#: model-signing's default shard size (``hashing.Config.use_shard_serialization``).
DEFAULT_SHARD_SIZE = 1_000_000_000

_Job = tuple[str, int, int | None]  # (name, start, end); end None = the whole file


class ModelReadError(Exception):
    """A model file could not be read while hashing (it vanished, or is unreadable)."""

    def __init__(self, name: str, error: OSError) -> None:
        super().__init__(f"cannot read {name}: {error.strerror or error}")
        self.name = name
        self.error = error


@dataclass(frozen=True)
class FileState:
    """What ``lstat`` says about a file: any write, truncation or replacement changes it."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileState:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


@dataclass(frozen=True)
class ModelTree:
    """The entries below a model directory, relative POSIX names, in model-signing's order."""

    root: Path
    files: dict[str, FileState]
    symlinks: list[str]
    special: list[str]
    #: The coarse wall clock (the one file timestamps come from) when the walk began.
    walked_at_ns: int


@dataclass(frozen=True)
class ModelDigests:
    """Every regular file's sha256 and, for ``shards``, every shard's, from one pass."""

    tree: ModelTree
    #: ``{name: whole-file sha256}``: what :func:`tree_digest` hashes; empty when only
    #: shards were hashed (``whole_files`` false).
    files: dict[str, str]
    #: ``None`` for ``files`` serialization, else model-signing's shard size.
    shard_size: int | None = None
    #: ``{name: ((start, end, sha256), ...)}`` (``shards`` only; empty files have none).
    shards: dict[str, tuple[tuple[int, int, str], ...]] = field(default_factory=dict)
    #: Whether whole files were hashed (always for ``files`` serialization).
    whole_files: bool = True

    @property
    def root(self) -> Path:
        return self.tree.root

    @property
    def manifest_digest(self) -> str:
        """sha256 over the canonical JSON of the signed manifest ``{resource: sha256}``
        (for ``files``, exactly ``tree_digest``)."""
        return manifest_digest(dict(self.resources()))

    @property
    def tree_digest(self) -> str | None:
        """``tree_digest(root)`` for the hashed bytes, ``None`` if whole files were not
        hashed."""
        return manifest_digest(self.files) if self.whole_files else None

    @property
    def model_digest(self) -> str:
        """SecMLOps' model digest: :attr:`tree_digest` when whole files were hashed (always
        for ``files``), else :attr:`manifest_digest` (see the module docstring)."""
        return self.tree_digest or self.manifest_digest

    def resources(self) -> list[tuple[str, str]]:
        """model-signing's resources ``(name, sha256)`` in its order (by path parts, then
        shard offsets): file names, or ``path:start:end`` for shards."""
        if self.shard_size is None:
            return [(name, self.files[name]) for name in self.tree.files]
        return [
            (f"{name}:{start}:{end}", digest)
            for name in self.tree.files
            for start, end, digest in self.shards.get(name, ())
        ]


def sort_key(name: str) -> tuple[str, ...]:
    """model-signing sorts resources as ``PurePosixPath`` objects: by path parts."""
    return tuple(name.split("/"))


def walk(root: Path) -> ModelTree:
    """Regular files, symlinks and special files below ``root`` (never following links).

    ``OSError`` if a directory cannot be listed.
    """
    started = _coarse_now_ns()
    files: dict[str, FileState] = {}
    symlinks: list[str] = []
    special: list[str] = []
    pending = [(root, "")]
    while pending:
        directory, prefix = pending.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                rel = prefix + entry.name
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    symlinks.append(rel)
                elif stat.S_ISDIR(st.st_mode):
                    pending.append((Path(entry.path), rel + "/"))
                elif stat.S_ISREG(st.st_mode):
                    files[rel] = FileState.of(st)
                else:
                    special.append(rel)
    ordered = {name: files[name] for name in sorted(files, key=sort_key)}
    return ModelTree(root, ordered, sorted(symlinks), sorted(special), started)


def hash_model(
    root: Path,
    *,
    shard_size: int | None = None,
    tree: ModelTree | None = None,
    whole_files: bool = True,
) -> ModelDigests:
    """Hash every regular file below ``root`` once (and its shards, if ``shard_size``).

    With ``shard_size`` and ``whole_files=False`` only the shards are hashed (once per byte,
    every core on a large file); ``files`` is then empty and the model digest is the shard
    manifest's. Symlinks and special files are not hashed: callers refuse them
    (``tree.symlinks``, ``tree.special``) before trusting the result. ``ModelReadError`` if a
    file cannot be read; ``OSError`` if a directory cannot be listed.
    """
    if shard_size is not None and shard_size <= 0:
        raise ValueError(f"shard size must be positive, not {shard_size}")
    whole_files = whole_files or shard_size is None
    tree = tree or walk(root)
    jobs: list[_Job] = [(name, 0, None) for name in tree.files] if whole_files else []
    if shard_size is not None:
        for name, state in tree.files.items():
            jobs.extend((name, start, end) for start, end in shard_ranges(state.size, shard_size))
    results = _run(root, jobs, {name: state.size for name, state in tree.files.items()})
    files = {name: results[(name, 0, None)] for name in tree.files} if whole_files else {}
    shards: dict[str, tuple[tuple[int, int, str], ...]] = {}
    if shard_size is not None:
        for name, state in tree.files.items():
            shards[name] = tuple(
                (start, end, results[(name, start, end)])
                for start, end in shard_ranges(state.size, shard_size)
            )
    return ModelDigests(tree, files, shard_size, shards, whole_files)


def shard_ranges(size: int, shard_size: int) -> list[tuple[int, int]]:
    """model-signing's shards of a file of ``size`` bytes (none for an empty file)."""
    return [(start, min(start + shard_size, size)) for start in range(0, size, shard_size)]


def changed_files(digests: ModelDigests) -> list[str]:
    """Names added, removed, replaced or written to since :func:`hash_model` walked the tree
    (an empty list when nothing changed). Racily clean files are hashed again here."""
    before = digests.tree
    try:
        after = walk(before.root)
    except OSError:
        return sorted(before.files)
    names = before.files.keys() | after.files.keys()
    changed = {n for n in names if before.files.get(n) != after.files.get(n)}
    changed.update(after.symlinks, after.special)
    racy = [
        name
        for name, state in before.files.items()
        if name not in changed and state.ctime_ns >= before.walked_at_ns - RACY_WINDOW_NS
    ]
    if racy:
        # Hashed again the way they were hashed: whole, or (shards only) shard by shard.
        previous: dict[_Job, str] = {}
        for name in racy:
            if digests.whole_files:
                previous[(name, 0, None)] = digests.files[name]
            else:
                previous.update(((name, a, b), d) for a, b, d in digests.shards.get(name, ()))
        try:
            sizes = {n: before.files[n].size for n in racy}
            again = _run(before.root, list(previous), sizes) if previous else {}
        except ModelReadError as exc:
            changed.add(exc.name)
        else:
            changed.update(job[0] for job, digest in previous.items() if again[job] != digest)
    return sorted(changed, key=sort_key)


# --- the pool --------------------------------------------------------------------------------

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def hashing_pool() -> ThreadPoolExecutor:
    """The process's one hashing pool (one thread per usable core), created on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_workers(), thread_name_prefix="secmlops-hash")
        return _pool


def _forget_pool_after_fork() -> None:
    # A forked child inherits the executor object but not its threads: start afresh.
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _run(root: Path, jobs: Sequence[_Job], sizes: dict[str, int]) -> dict[_Job, str]:
    """Hash ``jobs`` in the pool, large ones first, small whole files in batches."""

    def cost(job: _Job) -> int:
        name, start, end = job
        return (end - start) if end is not None else sizes.get(name, 0)

    ordered = sorted(jobs, key=cost, reverse=True)
    batches: list[list[_Job]] = []
    current: list[_Job] = []
    current_bytes = 0
    for job in ordered:
        size = cost(job)
        if size >= BATCH_BYTES:
            batches.append([job])
            continue
        current.append(job)
        current_bytes += size
        if current_bytes >= BATCH_BYTES or len(current) >= 256:
            batches.append(current)
            current, current_bytes = [], 0
    if current:
        batches.append(current)
    if len(batches) == 1:  # nothing to run side by side: skip the hand-off
        return _hash_batch(root, batches[0])
    pool = hashing_pool()
    futures: list[Future[dict[_Job, str]]] = [
        pool.submit(_hash_batch, root, batch) for batch in batches
    ]
    results: dict[_Job, str] = {}
    error: ModelReadError | None = None
    for future in futures:
        try:
            results.update(future.result())
        except ModelReadError as exc:
            error = error or exc
    if error is not None:
        raise error
    return results


def _hash_batch(root: Path, batch: Iterable[_Job]) -> dict[_Job, str]:
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    return {job: _hash_job(root, job, view) for job in batch}


def _hash_job(root: Path, job: _Job, view: memoryview) -> str:
    name, start, end = job
    digest = hashlib.sha256()
    try:
        fd = os.open(root / name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise ModelReadError(name, exc) from exc
    try:
        if end is None:  # the whole file, to its end (as sha256_file reads it)
            while n := os.readv(fd, [view]):
                digest.update(view[:n])
        else:
            at = start
            while at < end:
                n = os.preadv(fd, [view[: min(CHUNK, end - at)]], at)
                if not n:  # truncated under us: hash what is there (changed_files tells)
                    break
                digest.update(view[:n])
                at += n
    except OSError as exc:
        raise ModelReadError(name, exc) from exc
    finally:
        os.close(fd)
    return digest.hexdigest()


def _coarse_now_ns() -> int:
    """The clock file timestamps are taken from (coarse on Linux), or the wall clock."""
    # Python does not name Linux's CLOCK_REALTIME_COARSE (5), the clock of file timestamps.
    clock = getattr(time, "CLOCK_REALTIME_COARSE", 5 if sys.platform == "linux" else None)
    if clock is not None:
        try:
            return time.clock_gettime_ns(clock)
        except OSError:
            pass
    return time.time_ns()
