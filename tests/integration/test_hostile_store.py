"""Hostile store contents are refusals, never crashes (issue 9, "hostile store contents").

Every reader of the registry treats what it reads as untrusted: stored JSON is size- and
depth-limited and schema-validated, a local registry never follows a symlink or reads a
special file, objects above the configured size are refused before they are read, and model
files are streamed (memory flat in model size). Each case runs against a real registry built
by :mod:`tests.integration.deploy_world` and asserts the reader's exit code 1 and one line
naming the object.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from secmlops.errors import ControlRefused
from secmlops.registry.models import ModelRegistry, canonical_json, parse_json_object
from secmlops.registry.stores import LocalRegistry, RegistryRefusal
from tests.integration.deploy_world import MODEL, World, make_world

SHA = "a" * 64


@pytest.fixture
def world(tmp_path: Path) -> World:
    """A local registry with one registered version (v1, every evidence bundle signed)."""
    w = make_world(tmp_path / "world", LocalRegistry(tmp_path / "world" / "registry"))
    assert w.register() == "v1"
    return w


def _root(world: World) -> Path:
    store = world.models.store
    assert isinstance(store, LocalRegistry)
    return store.root


def _pointer(**changes: object) -> dict[str, object]:
    """A well-formed (unsigned) production pointer predicate with ``changes`` applied."""
    body: dict[str, object] = {
        "model": MODEL,
        "stage": "production",
        "version": "v1",
        "modelDigest": {"sha256": SHA},
        "vsa": {"key": f"{MODEL}/versions/v1/evidence/vsa-production-x.json", "sha256": SHA},
        "sequence": 1,
        "previous": None,
        "promotedAt": "2026-01-01T00:00:00Z",
        "expiresAt": "2099-01-01T00:00:00Z",
        "promotedBy": "eve",
        "reason": "promote",
        "history": [],
    }
    body.update(changes)
    return body


def _signed_looking(predicate: object) -> bytes:
    """A bundle whose DSSE payload carries ``predicate`` (the signature is junk: the parser
    must refuse the shape before anything else)."""
    statement = {"_type": "https://in-toto.io/Statement/v1", "predicate": predicate}
    payload = base64.b64encode(json.dumps(statement).encode()).decode()
    return canonical_json({"dsseEnvelope": {"payload": payload, "signatures": []}})


_DEEP = b"[" * 200_000 + b"]" * 200_000

#: (case, bytes stored as the production pointer, words the refusal must contain)
POINTER_CASES: list[tuple[str, bytes, str]] = [
    ("vsa-key-number", canonical_json(_pointer(vsa={"key": 7, "sha256": SHA})), "vsa.key"),
    ("history-string", canonical_json(_pointer(history="v1 v2")), "history"),
    (
        "history-forged-path",
        canonical_json(
            _pointer(
                history=[{"version": "../../etc", "modelDigest": SHA, "vsa": "../../etc/passwd"}]
            )
        ),
        "history.0.version",
    ),
    (
        "history-vsa-elsewhere",
        canonical_json(
            _pointer(history=[{"version": "v1", "modelDigest": SHA, "vsa": "../../etc/passwd"}])
        ),
        "history.0.vsa",
    ),
    (
        "vsa-of-another-model",
        canonical_json(
            _pointer(vsa={"key": "other/versions/v1/evidence/vsa-production.json", "sha256": SHA})
        ),
        "vsa.key",
    ),
    ("sequence-string", canonical_json(_pointer(sequence="9")), "sequence"),
    ("deep-array", _DEEP, "deeper than"),
    ("deep-in-signed-payload", _signed_looking(json.loads(b"[" * 500 + b"]" * 500)), "deeper"),
    ("signed-payload-array", _signed_looking([1, 2]), "predicate"),
    ("payload-not-base64", canonical_json({"dsseEnvelope": {"payload": "%%%"}}), "base64"),
    ("truncated", canonical_json(_pointer())[:-40], "not JSON"),
    ("array", b"[1, 2, 3]\n", "not a JSON object"),
    ("invalid-utf8", b'{"model": "\xff\xfe\xfa"}', "not UTF-8"),
    ("huge-number", b'{"sequence": ' + b"9" * 10_000 + b"}", "not JSON"),
]


def _first_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("refused:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("raw", "words"), [c[1:] for c in POINTER_CASES], ids=[c[0] for c in POINTER_CASES]
)
def test_hostile_pointer_is_refused_naming_it(world: World, raw: bytes, words: str) -> None:
    """Issue 9 finding 2: a pointer whose vsa.key is a number, a history that is a string, a
    200k-deep array (RecursionError, exit 3 before) and a forged history entry ``../../etc``
    (exit 2 blaming the user before) are refusals (exit 1) naming the pointer."""
    key = world.models.stage_key("production")
    path = _root(world) / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    with pytest.raises(ControlRefused) as refused:
        world.models.read_pointer("production")
    assert refused.value.reason in (
        RegistryRefusal.MALFORMED_POINTER,
        RegistryRefusal.NOT_JSON,
        RegistryRefusal.JSON_TOO_DEEP,
    )
    assert words in refused.value.message
    assert "production.json" in refused.value.message + str(refused.value.where)
    for command in ("verify-stage", "rollback"):
        proc = world.cli(command, MODEL, "--stage", "production")
        assert proc.returncode == 1, (command, proc.stderr)
        line = _first_line(proc)
        assert "production.json" in proc.stderr, proc.stderr
        assert words in line, line


def _symlink_pointer_to_etc(world: World, root: Path) -> Path:
    target = root / world.models.stage_key("production")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to("/etc/passwd")
    return target


def _fifo_pointer(world: World, root: Path) -> Path:
    target = root / world.models.stage_key("production")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(target)
    return target


def _stages_dir_to_etc(world: World, root: Path) -> Path:
    target = root / MODEL / "stages"
    target.symlink_to("/etc")
    return target


@pytest.mark.parametrize(
    "plant",
    [_symlink_pointer_to_etc, _fifo_pointer, _stages_dir_to_etc],
    ids=["pointer-symlink-etc", "pointer-fifo", "stages-dir-symlink-etc"],
)
def test_links_and_special_files_on_the_pointer_path_are_refused(
    world: World, plant: Callable[[World, Path], Path]
) -> None:
    """Issue 9 finding 3: the registry followed symlinks (``ln -s /etc``); now a link or a
    special file is refused (never followed, never opened: a FIFO would hang the reader)."""
    planted = plant(world, _root(world))
    with pytest.raises(ControlRefused) as refused:
        world.models.read_pointer("production")
    assert refused.value.reason == RegistryRefusal.NOT_REGULAR_FILE
    assert str(planted) in refused.value.message
    proc = world.cli("verify-stage", MODEL, "--stage", "production")
    assert proc.returncode == 1, proc.stderr
    assert str(planted) in _first_line(proc)


def _model_dir(world: World, version: str = "v1") -> Path:
    return _root(world) / world.models.model_prefix(version)


def _file_symlinked_to_other_version(world: World) -> Path:
    world.register()  # v2
    victim = next(p for p in sorted(_model_dir(world, "v2").rglob("*")) if p.is_file())
    victim.unlink()
    rel = victim.relative_to(_model_dir(world, "v2"))
    victim.symlink_to(_model_dir(world, "v1") / rel)
    return victim


def _model_dir_symlinked_to_other_version(world: World) -> Path:
    world.register()  # v2
    model = _model_dir(world, "v2")
    moved = model.with_name("model-orig")
    model.rename(moved)
    model.symlink_to(_model_dir(world, "v1"))
    return model


def _model_file_symlink_etc(world: World) -> Path:
    link = _model_dir(world) / "etc"
    link.symlink_to("/etc")
    return link


def _empty_dir(world: World) -> Path:
    empty = _model_dir(world) / "nothing-here"
    empty.mkdir()
    return empty


def _fifo_in_model(world: World) -> Path:
    fifo = _model_dir(world) / "weights.fifo"
    os.mkfifo(fifo)
    return fifo


@pytest.mark.parametrize(
    ("plant", "reason"),
    [
        (_file_symlinked_to_other_version, RegistryRefusal.NOT_REGULAR_FILE),
        (_model_dir_symlinked_to_other_version, RegistryRefusal.NOT_REGULAR_FILE),
        (_model_file_symlink_etc, RegistryRefusal.NOT_REGULAR_FILE),
        (_empty_dir, RegistryRefusal.EMPTY_DIRECTORY),
        (_fifo_in_model, RegistryRefusal.NOT_REGULAR_FILE),
    ],
    ids=[
        "file-symlink-other-version",
        "dir-symlink-other-version",
        "ln-s-etc",
        "empty-dir",
        "fifo",
    ],
)
def test_hostile_model_folder_is_refused_before_download(
    world: World,
    tmp_path: Path,
    plant: Callable[[World], Path],
    reason: RegistryRefusal,
) -> None:
    """Issue 9 finding 3: a model file or a whole model dir symlinked to another version's,
    ``ln -s /etc``, an empty directory and a FIFO in a model dir are refused by the download
    every reader (gate, verify-stage, fetch, smoke test) goes through."""
    planted = plant(world)
    version = "v2" if "v2" in str(planted) else "v1"
    with pytest.raises(ControlRefused) as refused:
        world.models.download_model(version, tmp_path / "dl")
    assert refused.value.reason == reason
    assert str(planted) in refused.value.message
    assert "\n" not in refused.value.message


def test_oversized_evidence_is_refused_before_it_is_read(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 9 finding 3: a 400 MB junk approval file cost 0.9 GB and still passed; a 50 MB
    evidence file with a 1 MiB limit, and a 400 MB one with the default 16 MiB limit, are
    refused by size (sparse files: refused from ``fstat``, never read)."""
    evidence = _root(world) / world.models.evidence_prefix("v1")
    big = evidence / "approval-production-junk.json"
    with big.open("wb") as fh:
        fh.truncate(50 * 1024 * 1024)
    monkeypatch.setenv("SECMLOPS_MAX_OBJECT_BYTES", str(1024 * 1024))
    key = f"{world.models.evidence_prefix('v1')}/approval-production-junk.json"
    with pytest.raises(ControlRefused) as refused:
        world.models.read_json(key)
    assert refused.value.reason == RegistryRefusal.OBJECT_TOO_LARGE
    assert str(big) in refused.value.message
    monkeypatch.delenv("SECMLOPS_MAX_OBJECT_BYTES")
    with big.open("wb") as fh:
        fh.truncate(400 * 1024 * 1024)
    code = f"""
        from pathlib import Path
        from secmlops.errors import ControlRefused

        def _hwm_mib():  # this process's own peak RSS (VmHWM: reset at exec, unlike ru_maxrss,
            # which keeps the high-water mark of the forking pytest process)
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
            raise RuntimeError("no VmHWM")

        from secmlops.registry.models import ModelRegistry
        from secmlops.registry.stores import LocalRegistry
        models = ModelRegistry(LocalRegistry(Path({str(_root(world))!r})), {MODEL!r})
        try:
            models.read_json({key!r})
        except ControlRefused as exc:
            print(exc.reason.value)
        print(_hwm_mib())
    """
    out = _python(code).split()
    assert out[0] == "object_too_large"
    assert int(out[1]) < 200, f"peak {out[1]} MiB reading a refused 400 MB object"
    proc = world.cli("evidence", MODEL, "v1")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "approval-production-junk.json" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"[" * 200_000 + b"]" * 200_000, "deeper than"),
        (b'{"a": ', "not JSON"),
        (b"[]", "not a JSON object"),
        (b"\xff\xfe\x00", "not"),
        (b'"just a string"', "not a JSON object"),
    ],
    ids=["deep", "truncated", "array", "invalid-utf8", "string"],
)
def test_hostile_evidence_and_version_json_are_refused(
    world: World, raw: bytes, words: str
) -> None:
    """Every stored JSON object goes through one parser: evidence bundles and version.json
    too (a deep array in evidence was a RecursionError, exit 3)."""
    prefix = world.models.version_prefix("v1")
    for rel in ("evidence/data-pull.json", "version.json"):
        path = _root(world) / prefix / rel
        path.unlink()
        path.write_bytes(raw)
        with pytest.raises(ControlRefused) as refused:
            world.models.read_json(f"{prefix}/{rel}")
        assert words in refused.value.message
        assert str(path) in refused.value.message
    proc = world.cli("evidence", MODEL, "v1")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_json_depth_limit_is_configurable_and_does_not_recurse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The depth pre-scan ignores brackets inside strings and honours the setting."""
    nested = b'{"a": "[[[[[[[[[[", "b": [[[[1]]]]}'
    assert parse_json_object(nested, "x")["b"] == [[[[1]]]]
    monkeypatch.setenv("SECMLOPS_MAX_JSON_DEPTH", "3")
    with pytest.raises(ControlRefused) as refused:
        parse_json_object(nested, "x.json")
    assert refused.value.reason == RegistryRefusal.JSON_TOO_DEEP


def _python(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_upload_download_and_hash_stream_a_large_model(tmp_path: Path) -> None:
    """Issue 9 finding 3: a 1 GB extra model file cost 1.07 GB of memory. Uploading,
    downloading and hashing a 300 MB (sparse) model file now keeps the peak well below its
    size (VmHWM of a fresh process, against its own baseline after imports)."""
    size = 300 * 1024 * 1024
    code = f"""
        from pathlib import Path
        from secmlops._internal.digests import tree_digest
        from secmlops.registry.models import ModelRegistry
        from secmlops.registry.stores import LocalRegistry

        def peak():  # this process's own peak RSS (VmHWM: reset at exec, unlike ru_maxrss,
            # which keeps the high-water mark of the forking pytest process)
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
            raise RuntimeError("no VmHWM")

        root = Path({str(tmp_path)!r})
        src = root / "src"
        src.mkdir()
        with (src / "weights.bin").open("wb") as fh:
            fh.truncate({size})
        (src / "config.json").write_text("{{}}")
        models = ModelRegistry(LocalRegistry(root / "registry"), "big")
        base = peak()
        uploaded = models.store.upload_tree(src, models.model_prefix("v1"))
        models.store.put(models.signature_key("v1"), b"sig")
        model_dir, _ = models.download_model("v1", root / "dl")
        digest = tree_digest(model_dir)
        assert digest == tree_digest(src)
        print(base, peak(), uploaded["weights.bin"])
    """
    base, after, digest = _python(code).split()
    assert int(after) - int(base) < 64, f"peak grew {int(after) - int(base)} MiB for 300 MiB"
    import hashlib

    zero = hashlib.sha256()
    chunk = bytes(1 << 20)
    for _ in range(size >> 20):
        zero.update(chunk)
    assert digest == zero.hexdigest()


def test_model_file_above_the_limit_is_refused_before_download(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model file above ``SECMLOPS_MAX_MODEL_FILE_BYTES`` is refused from its size."""
    extra = _model_dir(world) / "extra.bin"
    with extra.open("wb") as fh:
        fh.truncate(10 * 1024 * 1024)
    monkeypatch.setenv("SECMLOPS_MAX_MODEL_FILE_BYTES", str(1024 * 1024))
    with pytest.raises(ControlRefused) as refused:
        world.models.download_model("v1", tmp_path / "dl")
    assert refused.value.reason == RegistryRefusal.OBJECT_TOO_LARGE
    assert str(extra) in refused.value.message


def test_registry_writes_never_follow_a_symlinked_folder(world: World, tmp_path: Path) -> None:
    """A symlinked folder on a write path is refused, not written through (``ln -s /tmp``)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    audit = _root(world) / MODEL / "audit"
    if audit.exists():
        import shutil

        shutil.rmtree(audit)
    audit.symlink_to(outside)
    models = ModelRegistry(world.models.store, MODEL)
    with pytest.raises(ControlRefused) as refused:
        models.store.put(f"{MODEL}/audit/0000000001.json", b"{}")
    assert refused.value.reason == RegistryRefusal.NOT_REGULAR_FILE
    assert not list(outside.iterdir())


def test_a_version_whose_registration_was_cut_off_is_reported_incomplete(tmp_path: Path) -> None:
    """Issue 9 storage faults: registration writes the release manifest last, so a version
    cut off before it is "incomplete" to every reader (the gate, evidence, fetch), with the
    reason, never half-trusted."""
    from secmlops.gate import verify_release
    from secmlops.registry.stores import LocalRegistry
    from tests.integration.deploy_world import make_world

    world = make_world(tmp_path / "world", LocalRegistry(tmp_path / "registry"))
    version = world.register()
    release = f"{world.models.evidence_prefix(version)}/release.json"
    (tmp_path / "registry" / release).unlink()  # as if the last write never landed
    with pytest.raises(ControlRefused, match="is incomplete: its registration did not finish"):
        verify_release(world.models, version, "staging", keys=world.keys, policy=world.policy)
