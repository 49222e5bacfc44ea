"""Issue 9: one verification for every reader.

``secmlops evidence MODEL V`` used to print "all evidence verified" (exit 0) for a version whose
model bytes were edited, whose evidence files were deleted or swapped for another version's:
it checked each bundle's signature but never the model bytes, the binding to the release
manifest or completeness. Now it runs the deploy gate itself (:func:`secmlops.gate.verify_release`
for the stage(s) serving the version, its build checks for a version in no stage), refuses
(exit 1) whatever the gate refuses, and ``evidence --json`` names the same failed checks as the
gate's own report. An approval signed by a key the policy does not list is not shown verified.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from secmlops.errors import ControlRefused
from secmlops.evidence.statements import load_private_key, sign_statement, verify_bundle
from secmlops.gate import GateReport, verify_release
from secmlops.registry.models import stamped
from secmlops.registry.stores import LocalRegistry
from tests.integration.deploy_world import MODEL, World, make_world


@pytest.fixture
def world(tmp_path: Path) -> World:
    """v1 in production (local registry, real gate); v2 registered, in no stage."""
    w = make_world(tmp_path, LocalRegistry(tmp_path / "registry"))
    w.to_production(w.register())
    w.register()
    return w


def _path(w: World, key: str) -> Path:
    store = w.models.store
    assert isinstance(store, LocalRegistry)
    path = store.root / key
    path.chmod(0o644)
    return path


def _evidence(w: World, version: str, name: str) -> Path:
    return _path(w, f"{w.models.evidence_prefix(version)}/{name}.json")


def _gate_failed(w: World, version: str, stage: str) -> list[str]:
    with pytest.raises(ControlRefused) as err:
        verify_release(w.models, version, stage, keys=w.keys, policy=w.policy)
    assert isinstance(err.value.result, GateReport)
    return [c.name for c in err.value.result.failed()]


def _evidence_json(w: World, version: str) -> tuple[int, dict[str, Any]]:
    out = w.cli("evidence", MODEL, version, "--json")
    assert out.stdout, out.stderr
    return out.returncode, json.loads(out.stdout)


def test_untouched_versions_verify(world: World) -> None:
    code, report = _evidence_json(world, "v1")
    assert code == 0
    assert report["all_verified"] is True
    assert sorted(report["gate"]) == ["production", "staging"]  # both serve v1
    assert all(g["passed"] for g in report["gate"].values())
    names = {c["name"] for c in report["gate"]["production"]["checks"]}
    assert {"release", "model-signature", "approval", "staged"} <= names
    code, report = _evidence_json(world, "v2")  # in no stage: the gate's build checks
    assert code == 0, report
    assert list(report["gate"]) == ["build"]
    assert "approval" not in {c["name"] for c in report["gate"]["build"]["checks"]}
    text = world.cli("evidence", MODEL, "v1").stdout
    assert "Deploy gate for production: PASSED" in text
    assert "all evidence verified" in text


def test_edited_model_bytes_are_refused(world: World) -> None:
    """Issue 9 finding 1: evidence said verified for a version with edited model bytes."""
    key = world.models.store.list_keys(world.models.model_prefix("v1") + "/")[0]
    path = _path(world, key)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    code, report = _evidence_json(world, "v1")
    assert code == 1
    assert report["all_verified"] is False
    assert report["gate"]["production"]["failed"] == _gate_failed(world, "v1", "production")
    assert "model-signature" in report["gate"]["production"]["failed"]
    out = world.cli("evidence", MODEL, "v1")
    assert out.returncode == 1
    assert "all evidence verified" not in out.stdout
    assert "FAIL model-signature" in out.stdout


def test_deleted_evidence_file_is_refused(world: World) -> None:
    """Issue 9 finding 1: evidence said verified after evidence files were deleted."""
    for name in ("model-scan", "validation", "provenance"):
        _evidence(world, "v1", name).unlink()
    code, report = _evidence_json(world, "v1")
    assert code == 1
    failed = report["gate"]["production"]["failed"]
    assert failed == _gate_failed(world, "v1", "production")
    assert {"model-scan", "validation", "provenance"} <= set(failed)
    # A version in no stage is judged by the same (build) checks.
    _evidence(world, "v2", "model-scan").unlink()
    code, report = _evidence_json(world, "v2")
    assert code == 1
    assert report["gate"]["build"]["failed"] == ["model-scan"]
    build_failed = [n for n in _gate_failed(world, "v2", "staging") if n != "approval"]
    assert build_failed == ["model-scan"]


def test_swapped_evidence_is_refused(world: World) -> None:
    """Issue 9 finding 1: another version's data-pull swapped in was shown as verified."""
    shutil.copyfile(_evidence(world, "v2", "data-pull"), _evidence(world, "v1", "data-pull"))
    code, report = _evidence_json(world, "v1")
    assert code == 1
    assert report["gate"]["production"]["failed"] == _gate_failed(world, "v1", "production")
    assert "data-pull" in report["gate"]["production"]["failed"]
    err = world.cli("evidence", MODEL, "v1").stderr
    assert "data-pull" in err and "Traceback" not in err


def test_approval_by_a_key_the_policy_does_not_list_is_not_verified(world: World) -> None:
    """Issue 9 finding: the evidence report showed an approval by an unlisted key verified."""
    world.keys.ensure(approvers=("mallory",))
    prefix = world.models.evidence_prefix("v1")
    real = next(
        k for k in world.models.evidence_keys("v1") if k.startswith(f"{prefix}/approval-prod")
    )
    st = verify_bundle(world.models.read_json(real), world.keys.trusted_all(), where=real)
    forged = sign_statement(st.statement, load_private_key(world.keys.approver_private("mallory")))
    world.models.put_evidence("v1", stamped("approval-production"), forged)
    _, report = _evidence_json(world, "v1")
    forged_items = [e for e in report["evidence"] if e.get("reason") == "approver_not_in_policy"]
    assert len(forged_items) == 1
    assert forged_items[0]["verified"] is False
    assert "mallory" in forged_items[0]["error"]
    # The gate never counted it either: production still passes on the real approval.
    assert report["gate"]["production"]["passed"]
