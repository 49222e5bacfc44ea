"""Issue 8 attack 1: stage pointer replay.

Anyone who can write the registry (which the project treats as untrusted) rewrote
``stages/production.json`` to name an older version and that version's old production VSA.
Old behaviour: the pointer was unsigned and nothing checked that its VSA was the current one,
so ``verify-stage``, ``evidence`` and the smoke test passed (exit 0) and nothing was audited.
Now the pointer is a gate-signed statement with a sequence that only grows, kept in a signed,
create-only stage history and remembered locally by every reader (as TUF clients do):
the replay is refused (exit 1) naming the pointer problem, on a local directory and on S3;
a legitimate ``secmlops rollback`` writes a new, higher pointer and verifies.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from secmlops._internal.digests import sha256_bytes
from secmlops.catalogue import GateRefusal
from secmlops.deploy import rollback_stage
from secmlops.errors import ControlRefused
from secmlops.evidence.statements import load_private_key
from secmlops.operations import verify_stage
from secmlops.registry.pointers import (
    PointerRefusal,
    SeenPointers,
    history_tip,
    new_pointer,
    role_signer,
    sign_pointer,
)
from secmlops.registry.stores import LocalRegistry, S3Registry
from tests.integration.deploy_world import World, make_world


@pytest.fixture(params=["local", "s3"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> World:
    """v1 then v2 promoted to production through the real gate; ``old`` holds the bytes of
    v1's production pointer, as an attacker would have kept them."""
    if request.param == "local":
        store: LocalRegistry | S3Registry = LocalRegistry(tmp_path / "registry")
    else:
        bucket = request.getfixturevalue("s3_bucket")
        store = S3Registry(bucket, "models", endpoint_url=request.getfixturevalue("s3_endpoint"))
    w = make_world(tmp_path, store)
    v1 = w.register()
    w.to_production(v1)
    obj = store.get(w.models.stage_key("production"))
    assert obj is not None
    (tmp_path / "old-production.json").write_bytes(obj.data)
    v2 = w.register()
    w.to_production(v2)
    return w


def _replay_old_pointer(w: World) -> None:
    """The attack: put v1's (validly gate-signed, but old) pointer back."""
    key = w.models.stage_key("production")
    current = w.models.store.get(key)
    assert current is not None
    old = (w.root / "old-production.json").read_bytes()
    w.models.store.put(key, old, replace_etag=current.etag)


def _verify(w: World) -> None:
    verify_stage(w.models, "production", keys=w.keys, policy=w.policy, seen=w.seen)


def test_replayed_old_pointer_is_refused_then_rollback_verifies(world: World) -> None:
    _verify(world)  # production serves v2, verified: this machine remembers sequence 2
    _replay_old_pointer(world)
    # A machine that never saw the pointer: the signed stage history went further.
    with pytest.raises(ControlRefused, match="moved backwards") as err:
        _verify(world.fresh_machine("other"))
    assert err.value.reason is PointerRefusal.POINTER_ROLLED_BACK
    assert "v1" in err.value.message and "v2" in err.value.message
    # This machine too (and it would even if the history entries were gone, see below).
    with pytest.raises(ControlRefused, match="moved backwards") as err:
        _verify(world)
    assert err.value.reason is PointerRefusal.POINTER_ROLLED_BACK
    # The CLI: exit 1 naming the pointer (old behaviour: exit 0, "serves v1").
    bad = world.cli("verify-stage", "churn", "--stage", "production")
    assert bad.returncode == 1, bad.stderr
    assert "pointer moved backwards" in bad.stderr and "pointer_rolled_back" in bad.stderr

    # A legitimate rollback: a new pointer, higher sequence, through the gate.
    promotion = rollback_stage(
        world.models,
        "production",
        keys=world.keys,
        policy=world.policy,
        actor="operator",
        seen=world.seen,
    )
    assert promotion.pointer.version == "v1" and promotion.pointer.sequence == 3
    assert [h["version"] for h in promotion.pointer.history] == ["v1", "v2"]
    _verify(world)
    _verify(world.fresh_machine("third"))
    ok = world.cli("verify-stage", "churn", "--stage", "production")
    assert ok.returncode == 0, ok.stderr
    assert "serves v1" in ok.stdout


def test_replay_with_the_history_deleted_is_refused_by_a_machine_that_saw_newer(
    tmp_path: Path,
) -> None:
    """Without Object Lock, a writer can also delete the signed history above the replayed
    pointer; a reader that verified the newer pointer before still refuses (TUF client)."""
    w = make_world(tmp_path, LocalRegistry(tmp_path / "registry"))
    w.to_production(w.register())
    old = w.models.store.get(w.models.stage_key("production"))
    assert old is not None
    w.to_production(w.register())
    _verify(w)
    for sequence, key in w.models.stage_history("production").items():
        if sequence > 1:
            (tmp_path / "registry" / key).unlink()
    (tmp_path / "registry" / w.models.stage_key("production")).write_bytes(old.data)
    with pytest.raises(ControlRefused, match="already verified sequence 2") as err:
        _verify(w)
    assert err.value.reason is PointerRefusal.POINTER_ROLLED_BACK


def test_hand_edited_unsigned_pointer_is_refused(world: World) -> None:
    """The attack as first reported: a plain JSON pointer naming v1 and v1's old VSA."""
    old = json.loads((world.root / "old-production.json").read_bytes())
    payload = json.loads(base64.b64decode(old["dsseEnvelope"]["payload"]))
    unsigned = payload["predicate"]  # exactly the fields a pre-issue-8 pointer had (and more)
    key = world.models.stage_key("production")
    current = world.models.store.get(key)
    assert current is not None
    world.models.store.put(key, json.dumps(unsigned).encode(), replace_etag=current.etag)
    with pytest.raises(ControlRefused, match="unsigned") as err:
        _verify(world.fresh_machine("other"))
    assert err.value.reason is PointerRefusal.POINTER_UNSIGNED
    assert err.value.fix is not None and "secmlops promote churn VERSION" in err.value.fix
    bad = world.cli("verify-stage", "churn", "--stage", "production")
    assert bad.returncode == 1 and "pointer_unsigned" in bad.stderr
    # `evidence` flags it too (its stage line says the pointer is not vouched for).
    shown = world.cli("evidence", "churn", "v1")
    assert "POINTER NOT VOUCHED FOR" in shown.stdout and "unsigned" in shown.stdout


def test_pointer_signed_by_another_key_or_naming_another_vsa_is_refused(world: World) -> None:
    models, keys = world.models, world.keys
    tip, _ = history_tip(models, "production", keys.trusted("gate"))
    assert tip is not None
    v1_vsa = tip.history[-1]["vsa"]

    def publish(signer: object, **changes: Any) -> None:
        """A pointer for v2 at the next sequence, linked to the history's last entry."""
        history = models.stage_history("production")
        last = models.store.get(history[max(history)])
        assert last is not None
        fields: dict[str, Any] = {
            "model": models.model,
            "stage": "production",
            "version": tip.version,
            "model_digest": tip.model_digest,
            "vsa": tip.vsa,
            "vsa_sha256": tip.vsa_sha256,
            "actor": "mallory",
            "reason": "promote",
            "tip": tip,
            "sequence": max(history) + 1,
        }
        pointer = new_pointer(**fields)
        pointer = dataclasses.replace(pointer, previous_sha256=sha256_bytes(last.data), **changes)
        models.move_pointer(sign_pointer(pointer, signer), models.read_pointer("production")[1])

    # Signed by the attestor key, not the gate's.
    publish(load_private_key(keys.private("attestor")))
    with pytest.raises(ControlRefused, match="not signed by the gate key") as err:
        _verify(world.fresh_machine("a"))
    assert err.value.reason is PointerRefusal.POINTER_BAD_SIGNATURE
    # Gate-signed (a stolen gate key), but naming v1's VSA for v2: the VSA does not vouch.
    publish(role_signer(keys, "gate"), vsa=v1_vsa)
    with pytest.raises(ControlRefused, match="VSA of another version") as err:
        _verify(world.fresh_machine("b"))
    assert err.value.reason is GateRefusal.POINTER_NOT_VOUCHED
    # ... or the right VSA with another digest.
    publish(role_signer(keys, "gate"), vsa_sha256="0" * 64)
    with pytest.raises(ControlRefused, match="VSA changed") as err:
        _verify(world.fresh_machine("c"))
    assert err.value.reason is GateRefusal.POINTER_NOT_VOUCHED


def test_expired_pointer_is_refused_until_refreshed(world: World) -> None:
    models, keys = world.models, world.keys
    tip, taken = history_tip(models, "production", keys.trusted("gate"))
    assert tip is not None
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=45)
    stale = new_pointer(
        model=models.model,
        stage="production",
        version=tip.version,
        model_digest=tip.model_digest,
        vsa=tip.vsa,
        vsa_sha256=tip.vsa_sha256,
        actor="gate",
        reason="promote",
        tip=tip,
        sequence=taken + 1,
        now=long_ago,
    )
    models.move_pointer(
        sign_pointer(stale, role_signer(keys, "gate")), models.read_pointer("production")[1]
    )
    with pytest.raises(ControlRefused, match="expired") as err:
        _verify(world)
    assert err.value.reason is PointerRefusal.POINTER_EXPIRED
    assert err.value.fix is not None and "--refresh" in err.value.fix
    bad = world.cli("verify-stage", "churn", "--stage", "production")
    assert bad.returncode == 1 and "expired" in bad.stderr
    refreshed = world.cli("verify-stage", "churn", "--stage", "production", "--refresh")
    assert refreshed.returncode == 0, refreshed.stderr
    assert "re-signed (sequence" in refreshed.stdout
    ok = world.cli("verify-stage", "churn", "--stage", "production")
    assert ok.returncode == 0, ok.stderr
    # The machine's memory followed the refresh.
    seen = SeenPointers(world.root / "home" / "trusted-pointers.json").last(models, "production")
    assert seen is not None and seen["sequence"] == taken + 2
