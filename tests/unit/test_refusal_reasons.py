"""Every refusal carries a reason: an AST scan of the library, and the reasons of the deploy,
registry and report refusals that no control-specific test covers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from secmlops import deploy
from secmlops.deploy import DeployRefusal, promote_to_stage, rollback_stage
from secmlops.errors import ControlRefused
from secmlops.evidence.keys import KeyDirectory
from secmlops.evidence.statements import load_private_key
from secmlops.gate import GateCheck, GatePolicy, GateReport
from secmlops.operations import verify_stage
from secmlops.registry.models import ModelRegistry, StagePointer, parse_json_object
from secmlops.registry.pointers import publish_pointer
from secmlops.registry.stores import LocalRegistry, RegistryRefusal, WriteConflict
from secmlops.report import EvidenceReportRefusal, require_all_verified

SRC = Path(__file__).resolve().parents[2] / "src" / "secmlops"
MODEL = "churn-classifier"
#: Refusals that only summarise another, already-reasoned one, by file: how many may stay
#: without a reason (none today).
SUMMARY_REFUSALS: dict[str, int] = {}


def _refusals_without_reason(tree: ast.AST) -> list[int]:
    """Lines of ``ControlRefused(...)`` calls (any spelling) that pass no ``reason=``.

    Re-raising an existing exception object (``raise exc``) is not a call and is allowed.
    """
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if name != "ControlRefused":
            continue
        has_reason = any(k.arg == "reason" for k in node.keywords)
        # ``ControlRefused(**kwargs)`` cannot be checked statically: count it as missing.
        if not has_reason:
            lines.append(node.lineno)
    return lines


def test_every_control_refused_in_the_library_names_a_reason() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20  # the scan really looks at the library
    offenders = []
    for path in files:
        lines = _refusals_without_reason(ast.parse(path.read_text("utf-8"), str(path)))
        rel = path.relative_to(SRC).as_posix()
        if len(lines) > SUMMARY_REFUSALS.get(rel, 0):
            offenders += [f"{rel}:{line}" for line in lines]
    assert not offenders, f"ControlRefused without reason=: {offenders}"


def test_the_scan_catches_a_missing_reason_and_allows_re_raises() -> None:
    code = """
def f(exc):
    raise ControlRefused("no reason")
def g(exc):
    raise errors.ControlRefused("with", reason=R.X)
def h(exc):
    raise exc
"""
    assert _refusals_without_reason(ast.parse(code)) == [3]


# --- deploy -------------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> tuple[ModelRegistry, KeyDirectory]:
    keys = KeyDirectory(tmp_path / "keys")
    keys.ensure()
    return ModelRegistry(LocalRegistry(tmp_path / "registry"), MODEL), keys


def _report(version: str) -> GateReport:
    return GateReport(
        model=MODEL,
        version=version,
        stage="staging",
        model_digest="a" * 64,
        dataset_digest="d" * 64,
        image_digest="e" * 64,
        release_sha256="f" * 64,
        approver="test-approver",
        approval_method="test",
        checks=[GateCheck("model-signature", True, "verified")],
    )


def _pointer(models: ModelRegistry, keys: KeyDirectory, version: str) -> StagePointer:
    """Publish a gate-signed staging pointer to ``version`` (as a promotion would)."""
    return publish_pointer(
        models,
        stage="staging",
        version=version,
        model_digest="a" * 64,
        vsa=f"{MODEL}/versions/{version}/evidence/vsa-staging-x.json",
        vsa_sha256="b" * 64,
        signer=load_private_key(keys.private("gate")),
        actor="test",
    )


def test_a_promotion_that_loses_the_pointer_race_is_refused(
    world: tuple[ModelRegistry, KeyDirectory], monkeypatch: pytest.MonkeyPatch
) -> None:
    models, keys = world
    report = _report("v1")

    winner: list[StagePointer] = []

    def verify_while_another_promotes(*_args: object, **_kwargs: object) -> GateReport:
        winner.append(_pointer(models, keys, "v2"))  # someone else wins meanwhile
        return report

    monkeypatch.setattr(deploy, "verify_release", verify_while_another_promotes)
    with pytest.raises(WriteConflict, match="pointer moved") as info:
        promote_to_stage(models, "v1", "staging", keys=keys, policy=GatePolicy(), actor="t")
    assert info.value.reason is DeployRefusal.POINTER_RACE_LOST
    assert info.value.result is report
    served = models.read_pointer("staging")[0]
    assert served is not None and served == winner[0] and served.sha256 == winner[0].sha256


def test_rollback_without_an_earlier_vouched_version_is_refused(
    world: tuple[ModelRegistry, KeyDirectory],
) -> None:
    models, keys = world
    _pointer(models, keys, "v1")
    with pytest.raises(ControlRefused, match="no earlier version") as info:
        rollback_stage(models, "staging", keys=keys, policy=GatePolicy(), actor="t")
    assert info.value.reason is DeployRefusal.NOTHING_TO_ROLL_BACK


def test_verifying_an_empty_stage_is_refused(world: tuple[ModelRegistry, KeyDirectory]) -> None:
    models, keys = world
    with pytest.raises(ControlRefused, match="nothing is deployed") as info:
        verify_stage(models, "staging", keys=keys, policy=GatePolicy())
    assert info.value.reason is DeployRefusal.NOTHING_DEPLOYED


# --- registry -----------------------------------------------------------------------------


def test_registry_refusals_name_their_reason(
    world: tuple[ModelRegistry, KeyDirectory], tmp_path: Path
) -> None:
    models, _ = world
    with pytest.raises(ControlRefused, match="not JSON") as info:
        parse_json_object(b"{", "k")
    assert info.value.reason is RegistryRefusal.NOT_JSON
    with pytest.raises(ControlRefused, match="not a JSON object") as info:
        parse_json_object(b"[]", "k")
    assert info.value.reason is RegistryRefusal.NOT_JSON
    with pytest.raises(ControlRefused, match="malformed stage pointer") as info:
        StagePointer.from_json({}, "k")
    assert info.value.reason is RegistryRefusal.MALFORMED_POINTER
    models.store.put(models.stage_key("staging"), b"not json")
    with pytest.raises(ControlRefused, match="is not JSON") as info:
        models.read_pointer("staging")
    assert info.value.reason is RegistryRefusal.NOT_JSON
    with pytest.raises(ControlRefused, match="no model files") as info:
        models.download_model("v1", tmp_path / "dl")
    assert info.value.reason is RegistryRefusal.NO_MODEL_FILES


def test_version_allocation_gives_up_with_a_reason(
    world: tuple[ModelRegistry, KeyDirectory], monkeypatch: pytest.MonkeyPatch
) -> None:
    models, _ = world

    def always_taken(key: str, data: bytes, *, replace_etag: str | None = None) -> None:
        raise WriteConflict(f"{key} exists", reason=RegistryRefusal.OBJECT_EXISTS)

    monkeypatch.setattr(models.store, "put", always_taken)
    with pytest.raises(ControlRefused, match="20 conflicts") as info:
        models.allocate_version({})
    assert info.value.reason is RegistryRefusal.VERSION_ALLOCATION_CONFLICT


# --- evidence report ----------------------------------------------------------------------


def test_require_all_verified() -> None:
    report = {
        "model": MODEL,
        "version": "v1",
        "location": "registry/churn-classifier/versions/v1",
        "all_verified": False,
        "evidence": [{"name": "release", "verified": True}, {"name": "x", "verified": False}],
    }
    with pytest.raises(ControlRefused, match="does not verify: x") as info:
        require_all_verified(report)
    assert info.value.reason is EvidenceReportRefusal.NOT_ALL_VERIFIED
    assert info.value.details["not_verified"] == ["x"]
    assert info.value.result is report
    require_all_verified({**report, "all_verified": True})
