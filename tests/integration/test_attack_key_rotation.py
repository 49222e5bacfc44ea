"""Issue 8 attack 5 (rotation half): rotating a key broke history.

Old behaviour: each role trusted exactly one key, ``<keys>/<role>.pub``. Replacing the gate
key made ``verify-stage`` fail (the production VSA and pointer were signed by the old key)
and rollback impossible; replacing the attestor key made every registered version
undeployable. Now the trust root lists several keys per role, each with a validity window
judged at the statement's signed time: add the new key, retire the old one, and everything
signed inside the old key's window keeps verifying, while the retired key can sign nothing
new.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secmlops.deploy import rollback_stage
from secmlops.errors import ControlRefused, InputError
from secmlops.evidence.signers import write_private_key
from secmlops.evidence.statements import (
    PREDICATE_SLSA_VSA,
    EvidenceRefusal,
    Subject,
    key_id,
    load_private_key,
    make_statement,
    sign_statement,
    utc_now,
    verify_bundle,
)
from secmlops.operations import verify_stage
from secmlops.registry.models import parse_json_object
from secmlops.registry.stores import LocalRegistry
from tests.integration.deploy_world import World, make_world


@pytest.fixture
def world(tmp_path: Path) -> World:
    """v1 then v2 in production, all signed by the first generation of keys."""
    w = make_world(tmp_path, LocalRegistry(tmp_path / "registry"))
    for _ in range(2):
        w.to_production(w.register())
    return w


def _rotate(world: World, role: str) -> tuple[str, str, Path]:
    """Add a new ``role`` key to the trust root, retire the old one now; (old id, new id,
    new private key). The key directory keeps the old key files: nothing reads them."""
    old = key_id(load_private_key(world.keys.private(role)).public_key())
    new_key = ec.generate_private_key(ec.SECP256R1())
    path = world.keys.root / f"{role}-2.pem"
    write_private_key(path, new_key, None)
    # Statements carry whole seconds: retire at a whole second after everything signed so far.
    time.sleep(1.1)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    # No not_before: the fixtures' writers date their statements in the past (2026-01-01).
    root = world.keys.trust_root().with_key(role, new_key.public_key())
    root.retire(role, old, at=now).save()
    return old, key_id(new_key.public_key()), path


def _vsa_signer(world: World, version: str) -> str:
    pointer, _ = world.models.read_pointer("production")
    assert pointer is not None and pointer.version == version
    bundle = parse_json_object(world.models.store.read(pointer.vsa), pointer.vsa)
    return str(bundle["verificationMaterial"]["publicKey"]["hint"])


def test_gate_key_rotation_keeps_old_vsas_and_rollback_working(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new, new_pem = _rotate(world, "gate")
    assert _vsa_signer(world, "v2") == old
    # Old VSAs and pointers were signed inside the old key's window: still verify.
    pointer, report = verify_stage(
        world.models, "production", keys=world.keys, policy=world.policy, seen=world.seen
    )
    assert pointer.version == "v2" and report.passed
    # The site now signs with the new key; rollback writes a new VSA and pointer with it.
    monkeypatch.setenv("SECMLOPS_GATE_SIGNER", f"file:{new_pem}")
    rollback_stage(
        world.models,
        "production",
        keys=world.keys,
        policy=world.policy,
        actor="ops",
        seen=world.seen,
    )
    assert _vsa_signer(world, "v1") == new
    pointer, _ = verify_stage(
        world.models, "production", keys=world.keys, policy=world.policy, seen=world.seen
    )
    assert pointer.version == "v1"


def test_a_retired_key_cannot_sign_anything_new(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, _, _ = _rotate(world, "gate")
    # The pipeline will not sign with it...
    with pytest.raises(InputError, match="is not valid now"):
        world.keys.signer("gate")
    # ...and whoever still holds it cannot make evidence that verifies: dated now, it is
    # outside the window.
    forged = make_statement(
        [Subject("model", "a" * 64)], PREDICATE_SLSA_VSA, {"timeVerified": utc_now()}
    )
    bundle = sign_statement(forged, load_private_key(world.keys.private("gate")))
    with pytest.raises(ControlRefused, match="not valid when this evidence was signed") as err:
        verify_bundle(bundle, world.keys.trusted("gate"))
    assert err.value.reason is EvidenceRefusal.KEY_NOT_VALID
    # A pipeline that kept signing with the retired key is refused by every reader.
    monkeypatch.setattr(world.keys.__class__, "signer", lambda self, role: _raw(self, role))
    with pytest.raises(ControlRefused):
        rollback_stage(
            world.models,
            "production",
            keys=world.keys,
            policy=world.policy,
            actor="ops",
            seen=world.seen,
        )
        verify_stage(
            world.models, "production", keys=world.keys, policy=world.policy, seen=world.seen
        )
    assert old


def _raw(keys: object, role: str) -> object:
    from secmlops.evidence.signers import FileSigner

    return FileSigner.load(keys.private(role))  # type: ignore[attr-defined]


def test_attestor_key_rotation_keeps_every_old_version_deployable(world: World) -> None:
    _, new, new_pem = _rotate(world, "attestor")
    # The new key signs from now on (the demo's files: swap them in).
    shutil.move(new_pem, world.keys.private("attestor"))
    public = load_private_key(world.keys.private("attestor")).public_key()
    world.keys.public("attestor").write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert world.keys.signer("attestor").key_id == new
    # Every old version, all of its build evidence signed by the retired key, still passes
    # the gate: v1 through a rollback, v2 as it is served.
    pointer, _ = verify_stage(
        world.models, "production", keys=world.keys, policy=world.policy, seen=world.seen
    )
    assert pointer.version == "v2"
    rollback_stage(
        world.models,
        "production",
        keys=world.keys,
        policy=world.policy,
        actor="ops",
        seen=world.seen,
    )
    # A new version signed by the new attestor key goes all the way too.
    v3 = world.register()
    assert world.to_production(v3).pointer.version == v3
