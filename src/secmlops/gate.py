"""The deploy gate: re-verify the whole evidence chain of one model version for one stage.

Nothing in the registry is trusted as stored. The gate downloads the model and checks:

1. ``release``      the release manifest is signed by the attestor and names this model
                    digest, the dataset digest, the image digest and every evidence file
                    (by sha256) — it binds the chain together;
2. ``model-signature``  the model files verify against the model-signer key (OpenSSF
                    model-signing) and hash to the manifest's model digest;
3. every build control in :data:`secmlops.catalogue.CATALOGUE` (``data-pull``,
                    ``validation``, ``image-scan``, ``provenance``, ``model-scan``): each
                    bundle is the file the manifest names, is signed by the attestor, its
                    predicate validates against the control's model, and the control's
                    check passes (about the right digest, says pass; the scan is re-judged
                    against the current scan policy, not trusted by its stored verdict);
4. ``approval``     the policy's number of distinct valid approvers for this stage
                    (``required_approvals``), each signed by an allowed approver's own key
                    (or attestor-signed where the policy lets an anonymous Prefect UI
                    decision or a dev auto-approval count), about this exact release, within
                    separation of duties; no valid rejection newer than the newest approval;
5. ``staged``       (production) the version passed the gate for staging and its staging
                    smoke test passed.

Any failure raises ``ControlRefused`` listing every failed check, with the first failed
check's :class:`GateRefusal` as its ``reason`` and the :class:`GateReport` as its ``result``.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from secmlops._internal.digests import sha256_bytes, tree_digest
from secmlops.catalogue import (
    ATTESTOR_SIGNER,
    Control,
    Evidence,
    GateContext,
    GateRefusal,
    approval_authenticity,
    approval_conditions,
    build_controls,
    control,
    judge_vsa,
)
from secmlops.controls.approval import ApprovalPolicy, Stage, check_stage
from secmlops.controls.image_scan import ScanPolicy
from secmlops.controls.signing import verify_model_signature
from secmlops.errors import ControlRefused, RefusalReason, SecMLOpsError
from secmlops.evidence.keys import ROLES, KeyDirectory
from secmlops.evidence.predicates import (
    VERIFIER_ID,
    ApprovalPredicate,
    ReleasePredicate,
    VsaPredicate,
)
from secmlops.evidence.statements import (
    PREDICATE_SLSA_VSA,
    EvidenceRefusal,
    TrustedKeys,
    VerifiedStatement,
    key_id,
    load_public_key,
    verify_bundle,
)
from secmlops.registry.models import ModelRegistry, StagePointer, parse_json_object
from secmlops.site import Sources

#: Build-time evidence every release must carry, and the predicate each must have (from
#: the catalogue: every control of scope ``build``).
REQUIRED_EVIDENCE: dict[str, str] = {c.name: c.predicate_type for c in build_controls()}

_FROM_EVIDENCE_REFUSAL = {
    EvidenceRefusal.MALFORMED_BUNDLE: GateRefusal.MALFORMED_EVIDENCE,
    EvidenceRefusal.NOT_A_STATEMENT: GateRefusal.MALFORMED_EVIDENCE,
    EvidenceRefusal.UNTRUSTED_SIGNER: GateRefusal.UNTRUSTED_SIGNER,
    EvidenceRefusal.BAD_SIGNATURE: GateRefusal.BAD_SIGNATURE,
}


def gate_reason(exc: BaseException, default: GateRefusal = GateRefusal.CHECK_ERROR) -> GateRefusal:
    """The :class:`GateRefusal` an exception raised inside a gate check stands for.

    Only a ``ControlRefused`` is a refusal; anything else (a tool or input error, a crash)
    is ``CHECK_ERROR``, which fails the check just the same.
    """
    if not isinstance(exc, ControlRefused):
        return GateRefusal.CHECK_ERROR
    if isinstance(exc.reason, GateRefusal):
        return exc.reason
    if isinstance(exc.reason, EvidenceRefusal):
        return _FROM_EVIDENCE_REFUSAL[exc.reason]
    return default


def _with_reason(exc: SecMLOpsError, reason: RefusalReason) -> ControlRefused:
    return ControlRefused(
        exc.message, where=exc.where, fix=exc.fix, details=exc.details, reason=reason
    )


class GatePolicy(BaseModel):
    """What the deploy gate demands. Built from blocks; defaults are the strict ones."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    approval: ApprovalPolicy = ApprovalPolicy()
    scan: ScanPolicy = ScanPolicy()
    min_smoke_accuracy: float = Field(default=0.6, ge=0, le=1)
    #: Approvals older than this no longer count (None: no limit). Rollbacks then need a
    #: fresh approval, so an old approval cannot be replayed forever.
    max_approval_age_days: int | None = Field(default=None, ge=1)
    #: sha256 digests of the pandera schemas data may be validated against (empty: any
    #: schema, as recorded in the evidence). Pin them so a weaker schema cannot be swapped in.
    required_schema_digests: tuple[str, ...] = ()
    #: The named sources runs may select (datasets, images, registries, the Trivy DB);
    #: site configuration, never a run parameter (:mod:`secmlops.site`).
    sources: Sources = Sources()


@dataclass
class GateCheck:
    """One check's outcome, kept in the VSA and in refusals."""

    name: str
    passed: bool
    detail: str
    evidence: list[str] = field(default_factory=list)
    reason: GateRefusal | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "passed": self.passed,
            "detail": self.detail,
            "evidence": self.evidence,
        }
        if self.reason is not None:
            out["reason"] = self.reason.value
        return out


@dataclass
class GateReport:
    """Everything the gate verified for one version and stage."""

    model: str
    version: str
    stage: Stage
    model_digest: str = ""
    dataset_digest: str = ""
    image_digest: str = ""
    release_sha256: str = ""
    approver: str = ""
    approval_method: str = ""
    #: Every (approver, method) the approval check counted, oldest first.
    approvals: list[tuple[str, str]] = field(default_factory=list)
    checks: list[GateCheck] = field(default_factory=list)
    input_attestations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def failed(self) -> list[GateCheck]:
        return [c for c in self.checks if not c.passed]


def vsa_problem(
    st: VerifiedStatement, *, model: str, version: str, stage: str, model_digest: str | None
) -> str | None:
    """Why a (signature-verified) VSA does not vouch that ``model`` ``version`` passed this
    gate for ``stage``; ``None`` when it does."""
    if st.predicate_type != PREDICATE_SLSA_VSA:
        return f"predicate {st.predicate_type} is not a VSA"
    try:
        ev: Evidence[VsaPredicate] = control("vsa").parse(st, "the VSA")
    except ControlRefused as exc:
        return exc.message
    failed = [
        r
        for r in judge_vsa(ev, model=model, version=version, stage=stage, model_digest=model_digest)
        if not r.passed
    ]
    return failed[0].detail if failed else None


class _Gate:
    def __init__(
        self,
        models: ModelRegistry,
        version: str,
        stage: Stage,
        keys: KeyDirectory,
        policy: GatePolicy,
    ) -> None:
        self.models = models
        self.keys = keys
        self.policy = policy
        self.report = GateReport(model=models.model, version=version, stage=stage)
        self.attestor = keys.trusted("attestor")
        self.release: ReleasePredicate | None = None
        #: Build evidence verified so far (signature + predicate model), by control name.
        self.verified: dict[str, Evidence[Any]] = {}

    def check(
        self,
        name: str,
        fn: Callable[[], tuple[str, list[str]]],
        *,
        default: GateRefusal = GateRefusal.CHECK_ERROR,
    ) -> bool:
        """Run one check; any exception fails it (``default``: the reason of an unlabelled
        refusal)."""
        try:
            detail, evidence = fn()
        except SecMLOpsError as exc:
            self.report.checks.append(
                GateCheck(name, False, str(exc), reason=gate_reason(exc, default))
            )
            return False
        except Exception as exc:
            self.report.checks.append(
                GateCheck(
                    name, False, f"{type(exc).__name__}: {exc}", reason=GateRefusal.CHECK_ERROR
                )
            )
            return False
        self.report.checks.append(GateCheck(name, True, detail, evidence))
        return True

    def context(self, **changes: Any) -> GateContext:
        """What evidence must be about, from what the gate verified so far."""
        r = self.report
        ctx = GateContext(
            model=r.model,
            version=r.version,
            stage=r.stage,
            policy=self.policy,
            model_digest=r.model_digest,
            dataset_digest=r.dataset_digest,
            image_digest=r.image_digest,
            release_sha256=r.release_sha256,
        )
        return dataclasses.replace(ctx, **changes)

    def load(
        self,
        key: str,
        trusted: TrustedKeys,
        entry: Control[Any],
        *,
        expected_sha256: str | None = None,
    ) -> tuple[Evidence[Any], str]:
        """Read ``key`` once; hash, verify and type those same bytes. Returns (evidence, sha)."""
        where = self.models.store.describe(key)
        try:
            raw = self.models.store.read(key)
        except ControlRefused as exc:
            raise _with_reason(exc, GateRefusal.MISSING_EVIDENCE) from exc
        digest = sha256_bytes(raw)
        if expected_sha256 is not None and digest != expected_sha256:
            raise ControlRefused(
                f"{key} was changed after the release manifest was signed",
                where=where,
                reason=GateRefusal.EVIDENCE_CHANGED,
            )
        try:
            bundle = parse_json_object(raw, where)
        except ControlRefused as exc:
            raise _with_reason(exc, GateRefusal.MALFORMED_EVIDENCE) from exc
        verified = verify_bundle(bundle, trusted, where=where)
        evidence = entry.parse(verified, key)
        self.report.input_attestations.append({"uri": key, "digest": {"sha256": digest}})
        return evidence, digest

    def judge(self, entry: Control[Any], evidence: Evidence[Any], ctx: GateContext) -> None:
        """Run the catalogue's check for ``evidence``; ``ControlRefused`` naming every failure."""
        failed = [r for r in entry.check(evidence, ctx) if not r.passed]
        if failed:
            raise ControlRefused(
                "; ".join(r.detail for r in failed), where=evidence.key, reason=failed[0].reason
            )


def verify_release(
    models: ModelRegistry, version: str, stage: str, *, keys: KeyDirectory, policy: GatePolicy
) -> GateReport:
    """Run every check for ``version`` -> ``stage``; raise ``ControlRefused`` on any failure.

    The refusal's ``reason`` is the first failed check's :class:`GateRefusal` and its
    ``result`` the :class:`GateReport` (every check, with its own reason).
    """
    gate = _Gate(models, version, check_stage(stage), keys, policy)
    models.require_version(version)
    report = gate.report

    def check_release() -> tuple[str, list[str]]:
        key = f"{models.evidence_prefix(version)}/release.json"
        entry = control("release")
        ev, report.release_sha256 = gate.load(key, gate.attestor, entry)
        gate.judge(entry, ev, gate.context())
        manifest: ReleasePredicate = ev.predicate
        report.model_digest = manifest.model_digest.sha256
        report.dataset_digest = manifest.dataset.sha256
        report.image_digest = manifest.image.sha256
        gate.release = manifest
        return f"signed by {ev.signer}", [key]

    if not gate.check("release", check_release, default=GateRefusal.MISSING_EVIDENCE):
        _refuse(report)

    def check_model_signature() -> tuple[str, list[str]]:
        assert gate.release is not None  # noqa: S101 - the release check passed
        with tempfile.TemporaryDirectory(prefix="secmlops-gate-") as tmp:
            model_dir, signature = models.download_model(version, Path(tmp))
            sig_sha = sha256_bytes(signature.read_bytes())
            if sig_sha != gate.release.signature.sha256:
                raise ControlRefused(
                    "model.sig is not the signature named in the release manifest",
                    reason=GateRefusal.MODEL_SIGNATURE_INVALID,
                )
            verify_model_signature(
                model_dir, signature=signature, public_key=keys.require(keys.public("model-signer"))
            )
            digest = tree_digest(model_dir)
        if digest != report.model_digest:
            raise ControlRefused(
                f"model files hash to {digest[:12]}…, "
                f"release manifest says {report.model_digest[:12]}…",
                reason=GateRefusal.MODEL_SIGNATURE_INVALID,
            )
        return "model-signing signature verifies with the model-signer key", [
            models.signature_key(version)
        ]

    gate.check(
        "model-signature", check_model_signature, default=GateRefusal.MODEL_SIGNATURE_INVALID
    )

    for entry in build_controls():
        gate.check(entry.name, functools.partial(_check_build_evidence, gate, entry))

    gate.check("approval", lambda: _check_approval(gate, version))
    if report.stage == "production":
        gate.check("staged", lambda: _check_staged(gate, version))
    if not report.passed:
        _refuse(report)
    return report


def _refuse(report: GateReport) -> None:
    failed = report.failed()
    summary = "; ".join(f"{c.name}: {c.detail}" for c in failed)
    raise ControlRefused(
        f"deploy gate refused {report.model} {report.version} for {report.stage}: {summary}",
        where=f"gate:{report.stage}",
        fix="fix the failed checks (see `secmlops evidence`) and rerun the pipeline",
        details={"checks": [c.to_json() for c in report.checks]},
        reason=failed[0].reason if failed else GateRefusal.CHECK_ERROR,
        result=report,
    )


def _check_build_evidence(gate: _Gate, entry: Control[Any]) -> tuple[str, list[str]]:
    """The manifest's ``entry.name`` evidence: the file it names, signed by the attestor,
    judged by the catalogue's check for it."""
    assert gate.release is not None  # noqa: S101 - the release check passed
    ref = gate.release.evidence.get(entry.name)
    if ref is None:
        raise ControlRefused(
            f"release manifest names no {entry.name} evidence",
            reason=GateRefusal.MISSING_EVIDENCE,
        )
    if not ref.key.startswith(gate.models.evidence_prefix(gate.report.version) + "/"):
        raise ControlRefused(
            f"release manifest points {entry.name} outside this version: {ref.key}",
            reason=GateRefusal.MISPLACED_EVIDENCE,
        )
    ev, _ = gate.load(ref.key, gate.attestor, entry, expected_sha256=ref.sha256)
    gate.verified[entry.name] = ev
    gate.judge(entry, ev, gate.context(verified=dict(gate.verified)))
    return f"signed by {ev.signer}", [ref.key]


def _stage_evidence(gate: _Gate, version: str, prefix: str) -> list[str]:
    return [
        k
        for k in gate.models.evidence_keys(version)
        if k.rsplit("/", 1)[-1].startswith(f"{prefix}-")
    ]


def role_key_ids(keys: KeyDirectory) -> dict[str, str]:
    """Key id of each pipeline role key present in ``keys`` (no approver may sign with one)."""
    return {
        role: key_id(load_public_key(keys.public(role)))
        for role in ROLES
        if keys.public(role).is_file()
    }


@dataclass
class _Decisions:
    """Approval evidence for one stage, sorted into what counts and what does not."""

    approvals: list[tuple[str, Evidence[ApprovalPredicate]]] = field(default_factory=list)
    rejections: list[tuple[str, Evidence[ApprovalPredicate]]] = field(default_factory=list)
    problems: list[SecMLOpsError] = field(default_factory=list)


def _approval_trust(gate: _Gate, stage: Stage) -> TrustedKeys:
    """The allowed approvers' keys, plus the attestor (for auto and anonymous UI decisions;
    the catalogue check refuses those where the policy does not allow them)."""
    trusted = TrustedKeys()
    for _, public in gate.attestor.keys.values():
        trusted.add(ATTESTOR_SIGNER, public)
    for kid, entry in gate.keys.trusted_approvers(gate.policy.approval.allowed(stage)).keys.items():
        trusted.keys[kid] = entry  # an approver holding the attestor key: a role conflict
    return trusted


def _sort_decisions(gate: _Gate, keys: list[str], ctx: GateContext) -> _Decisions:
    found = _Decisions()
    trusted = _approval_trust(gate, ctx.stage)
    entry = control("approval")
    for key in keys:
        try:
            ev, _ = gate.load(key, trusted, entry)
            failed = [r for r in approval_authenticity(ev, ctx) if not r.passed]
            if not failed and ev.predicate.decision == "approved":
                failed = [r for r in approval_conditions(ev, ctx) if not r.passed]
            if failed:
                raise ControlRefused(
                    "; ".join(r.detail for r in failed), where=key, reason=failed[0].reason
                )
        except SecMLOpsError as exc:
            found.problems.append(exc)
            continue
        if ev.predicate.decision == "approved":
            found.approvals.append((key, ev))
        else:
            found.rejections.append((key, ev))
    return found


def _check_approval(gate: _Gate, version: str) -> tuple[str, list[str]]:
    """Enough distinct valid approvers for this stage, for exactly this release, and no valid
    rejection newer than the newest of them."""
    report = gate.report
    stage = report.stage
    keys = _stage_evidence(gate, version, f"approval-{stage}")
    if not keys:
        raise ControlRefused(
            f"no approval for {stage} recorded for {version}", reason=GateRefusal.APPROVAL_MISSING
        )
    staging_approvers = _staging_approvers(gate, version) if stage == "production" else set()
    ctx = gate.context(
        staging_approvers=frozenset(staging_approvers),
        role_key_ids=tuple(sorted(role_key_ids(gate.keys).items())),
    )
    found = _sort_decisions(gate, keys, ctx)
    counted: list[tuple[str, Evidence[ApprovalPredicate]]] = []
    names: set[str] = set()
    key_ids: set[str] = set()
    # Newest first: each person (or key) counts once, with their latest approval.
    for key, ev in sorted(found.approvals, key=lambda a: a[1].predicate.decided_at, reverse=True):
        kid = "" if ev.signer == ATTESTOR_SIGNER else ev.statement.key_id
        if ev.predicate.approver in names or (kid and kid in key_ids):
            continue
        names.add(ev.predicate.approver)
        key_ids.add(kid)
        counted.insert(0, (key, ev))
    newest = max((ev.predicate.decided_at for _, ev in counted), default="")
    # A rejection decided in the same second as the newest approval still blocks: fail closed.
    blocking = [(k, ev) for k, ev in found.rejections if ev.predicate.decided_at >= newest]
    if blocking:
        key, ev = max(blocking, key=lambda r: r[1].predicate.decided_at)
        raise ControlRefused(
            f"{ev.predicate.approver} rejected {version} for {stage} at "
            f"{ev.predicate.decided_at}: {ev.predicate.comment or 'no reason given'}",
            where=key,
            reason=GateRefusal.APPROVAL_REJECTED,
        )
    needed = gate.policy.approval.needed(stage)
    if len(counted) >= needed:
        report.approvals = [(ev.predicate.approver, ev.predicate.method) for _, ev in counted]
        report.approver, report.approval_method = report.approvals[0]
        who = ", ".join(f"{a} ({m})" for a, m in report.approvals)
        return f"approved by {who}", [k for k, _ in counted]
    problems = "; ".join(str(p) for p in found.problems)
    if not counted and found.problems:
        # Several candidates may each fail differently; the first one's reason stands for all.
        raise ControlRefused(
            f"no valid approval: {problems}", reason=gate_reason(found.problems[0])
        )
    raise ControlRefused(
        f"{len(counted)} of {needed} required approvals for {stage}"
        + (f"; not counted: {problems}" if problems else ""),
        reason=GateRefusal.NOT_ENOUGH_APPROVALS,
    )


def _staging_vsas(gate: _Gate, version: str) -> list[tuple[str, Evidence[VsaPredicate]]]:
    """Gate-signed staging VSAs that passed, for exactly this model, version and digest."""
    found = []
    entry = control("vsa")
    for key in _stage_evidence(gate, version, "vsa-staging"):
        try:
            ev, _ = gate.load(key, gate.keys.trusted("gate"), entry)
        except SecMLOpsError:
            continue  # an unverifiable file does not count; enough valid ones can still pass
        results = entry.check(ev, gate.context(stage="staging"))
        if all(r.passed for r in results):
            found.append((key, ev))
    return found


def _staging_approvers(gate: _Gate, version: str) -> set[str]:
    """Who approved staging, as recorded by the gate in its signed staging VSAs."""
    names: set[str] = set()
    for _, ev in _staging_vsas(gate, version):
        verdict = ev.predicate.secmlops
        names.add(verdict.approval.approver)
        names.update(a.approver for a in verdict.approvals or ())
    return names


def staging_approvers(
    models: ModelRegistry, version: str, *, keys: KeyDirectory, policy: GatePolicy
) -> frozenset[str]:
    """Who approved ``version`` for staging, as the gate's own passing staging VSAs record
    (empty if it never passed the staging gate)."""
    gate = _Gate(models, version, "staging", keys, policy)
    model_digest, release_sha256 = _release_digests(gate, version)
    gate.report.model_digest, gate.report.release_sha256 = model_digest, release_sha256
    return frozenset(_staging_approvers(gate, version))


def _release_digests(gate: _Gate, version: str) -> tuple[str, str]:
    key = f"{gate.models.evidence_prefix(version)}/release.json"
    ev, sha = gate.load(key, gate.attestor, control("release"))
    manifest: ReleasePredicate = ev.predicate
    return manifest.model_digest.sha256, sha


def _check_staged(gate: _Gate, version: str) -> tuple[str, list[str]]:
    """Production needs a passing staging gate (VSA) and a passing staging smoke test."""
    vsas = _staging_vsas(gate, version)
    if not vsas:
        raise ControlRefused(
            f"{version} never passed the gate for staging; promote it to staging first",
            reason=GateRefusal.NOT_STAGED,
        )
    entry = control("smoke-test")
    ctx = gate.context(stage="staging")
    for key in _stage_evidence(gate, version, "smoke-test-staging"):
        try:
            ev, _ = gate.load(key, gate.attestor, entry)
            gate.judge(entry, ev, ctx)
        except SecMLOpsError:
            continue
        return "passed the staging gate and the staging smoke test", [vsas[0][0], key]
    raise ControlRefused(
        f"{version} has no passing staging smoke test", reason=GateRefusal.SMOKE_TEST_FAILED
    )


def passed_gate_before(models: ModelRegistry, version: str, stage: str, keys: KeyDirectory) -> bool:
    """True if a gate-signed VSA says ``version`` passed the gate for ``stage`` before.

    Rollback targets come from the stage pointer's history, which is not signed; this is
    what makes a history entry count.
    """
    trusted = keys.trusted("gate")
    prefix = f"vsa-{check_stage(stage)}-"
    for key in models.evidence_keys(version):
        if not key.rsplit("/", 1)[-1].startswith(prefix):
            continue
        try:
            st = verify_bundle(models.read_json(key), trusted, where=key)
        except SecMLOpsError:
            continue
        if (
            vsa_problem(st, model=models.model, version=version, stage=stage, model_digest=None)
            is None
        ):
            return True
    return False


def verify_pointer_vsa(
    models: ModelRegistry, stage: str, pointer: StagePointer, keys: KeyDirectory
) -> None:
    """Check what a stage pointer names is vouched for by its VSA; ``ControlRefused`` if not.

    Stage pointers are not signed; their VSA is. It must be the one the pointer names (same
    bytes), signed by the gate key, written by this gate, PASSED, and about exactly the
    pointer's model, version, stage and digest.
    """
    where = f"stage:{stage}"
    expected_prefix = models.evidence_prefix(pointer.version) + f"/vsa-{stage}-"
    if not pointer.vsa.startswith(expected_prefix):
        raise ControlRefused(
            f"the {stage} pointer names a VSA of another version/stage",
            where=where,
            reason=GateRefusal.POINTER_NOT_VOUCHED,
        )
    raw = models.store.read(pointer.vsa)  # read once: hash, verify and parse the same bytes
    if sha256_bytes(raw) != pointer.vsa_sha256:
        raise ControlRefused(
            f"the {stage} pointer's VSA changed after promotion",
            where=where,
            reason=GateRefusal.POINTER_NOT_VOUCHED,
        )
    vsa = verify_bundle(
        parse_json_object(raw, pointer.vsa), keys.trusted("gate"), where=pointer.vsa
    )
    problem = vsa_problem(
        vsa,
        model=models.model,
        version=pointer.version,
        stage=stage,
        model_digest=pointer.model_digest,
    )
    if problem:
        raise ControlRefused(
            f"the {stage} pointer's VSA {problem}",
            where=where,
            reason=GateRefusal.POINTER_NOT_VOUCHED,
        )


__all__ = [
    "REQUIRED_EVIDENCE",
    "VERIFIER_ID",
    "GateCheck",
    "GatePolicy",
    "GateRefusal",
    "GateReport",
    "gate_reason",
    "passed_gate_before",
    "role_key_ids",
    "staging_approvers",
    "verify_pointer_vsa",
    "verify_release",
    "vsa_problem",
]
