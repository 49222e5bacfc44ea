"""The deploy gate: re-verify the whole evidence chain of one model version for one stage.

Nothing in the registry is trusted as stored. The gate downloads the model and checks:

1. ``release``      the release manifest is signed by the attestor and names this model
                    digest, the dataset digest, the image digest and every evidence file
                    (by sha256) — it binds the chain together;
2. ``model-signature``  the model files verify against the model-signer key (OpenSSF
                    model-signing) and hash to the manifest's model digest;
3. ``data-pull``, ``validation``, ``image-scan``, ``provenance``, ``model-scan``: each
                    bundle is the file the manifest names, is signed by the attestor, is
                    about the right digest, and says pass (the scan is re-judged against
                    the current scan policy, not trusted by its stored verdict);
4. ``approval``     an approval for this stage, signed by an allowed approver's own key,
                    covers this exact model digest;
5. ``staged``       (production) the version passed the gate for staging and its staging
                    smoke test passed.

Any failure raises ``ControlRefused`` listing every failed check.
"""

from __future__ import annotations

import datetime as dt
import functools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from secmlops._internal.digests import sha256_bytes, tree_digest
from secmlops.controls.approval import ApprovalPolicy, Stage, check_stage
from secmlops.controls.image_scan import ScanPolicy, scan_predicate_verdict
from secmlops.controls.signing import verify_model_signature
from secmlops.errors import ControlRefused, SecMLOpsError
from secmlops.evidence.keys import KeyDirectory
from secmlops.evidence.statements import (
    PREDICATE_APPROVAL,
    PREDICATE_DATA_PULL,
    PREDICATE_MODEL_SCAN,
    PREDICATE_RELEASE,
    PREDICATE_SLSA_PROVENANCE,
    PREDICATE_SLSA_VSA,
    PREDICATE_SMOKE_TEST,
    PREDICATE_TEST_RESULT,
    PREDICATE_VULNS,
    TrustedKeys,
    VerifiedStatement,
    verify_bundle,
)
from secmlops.registry.models import ModelRegistry, StagePointer, parse_json_object

VERIFIER_ID = "https://secmlops.dev/deploy-gate/v1"

#: Build-time evidence every release must carry, and the predicate each must have.
REQUIRED_EVIDENCE: dict[str, str] = {
    "data-pull": PREDICATE_DATA_PULL,
    "validation": PREDICATE_TEST_RESULT,
    "image-scan": PREDICATE_VULNS,
    "provenance": PREDICATE_SLSA_PROVENANCE,
    "model-scan": PREDICATE_MODEL_SCAN,
}


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


@dataclass
class GateCheck:
    """One check's outcome, kept in the VSA and in refusals."""

    name: str
    passed: bool
    detail: str
    evidence: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "detail": self.detail,
            "evidence": self.evidence,
        }


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
    checks: list[GateCheck] = field(default_factory=list)
    input_attestations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def failed(self) -> list[GateCheck]:
        return [c for c in self.checks if not c.passed]


def has_subject(statement: dict[str, Any], digest: str, name: str | None = None) -> bool:
    """Does the statement name ``digest`` (under subject ``name``, when given)?"""
    return any(
        isinstance(s, dict)
        and (s.get("digest") or {}).get("sha256") == digest
        and (name is None or s.get("name") == name)
        for s in statement.get("subject", [])
    )


def vsa_problem(
    st: VerifiedStatement, *, model: str, version: str, stage: str, model_digest: str | None
) -> str | None:
    """Why a (signature-verified) VSA does not vouch that ``model`` ``version`` passed this
    gate for ``stage``; ``None`` when it does."""
    pred = st.predicate
    ours = pred.get("secmlops") or {}
    if st.predicate_type != PREDICATE_SLSA_VSA:
        return f"predicate {st.predicate_type} is not a VSA"
    if (pred.get("verifier") or {}).get("id") != VERIFIER_ID:
        return "not written by this deploy gate"
    if pred.get("verificationResult") != "PASSED":
        return f"verification result {pred.get('verificationResult')}"
    for field_name, expected in (("model", model), ("version", version), ("stage", stage)):
        if ours.get(field_name) != expected:
            return f"is for {field_name}={ours.get(field_name)!r}, not {expected!r}"
    if model_digest is not None and not has_subject(st.statement, model_digest, "model"):
        return f"is not about model digest {model_digest[:12]}…"
    return None


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

    def check(self, name: str, fn: Callable[[], tuple[str, list[str]]]) -> bool:
        try:
            detail, evidence = fn()
        except SecMLOpsError as exc:
            self.report.checks.append(GateCheck(name, False, str(exc)))
            return False
        except Exception as exc:
            self.report.checks.append(GateCheck(name, False, f"{type(exc).__name__}: {exc}"))
            return False
        self.report.checks.append(GateCheck(name, True, detail, evidence))
        return True

    def load(
        self,
        key: str,
        trusted: TrustedKeys,
        expected_type: str,
        *,
        expected_sha256: str | None = None,
    ) -> tuple[VerifiedStatement, str]:
        """Read ``key`` once; hash, verify and parse those same bytes. Returns (statement, sha)."""
        where = self.models.store.describe(key)
        raw = self.models.store.read(key)
        digest = sha256_bytes(raw)
        if expected_sha256 is not None and digest != expected_sha256:
            raise ControlRefused(
                f"{key} was changed after the release manifest was signed", where=where
            )
        verified = verify_bundle(parse_json_object(raw, where), trusted, where=where)
        if verified.predicate_type != expected_type:
            raise ControlRefused(
                f"{key} has predicate {verified.predicate_type}, expected {expected_type}",
                where=where,
            )
        self.report.input_attestations.append({"uri": key, "digest": {"sha256": digest}})
        return verified, digest

    def require_subject(
        self, st: VerifiedStatement, digest: str, what: str, key: str, *, name: str | None = None
    ) -> None:
        """The statement must name ``digest`` (under subject ``name``, when given)."""
        if not has_subject(st.statement, digest, name):
            raise ControlRefused(f"{key} is not about this {what} ({digest[:12]}…)", where=key)

    def require_fields(self, pred: dict[str, Any], key: str, **expected: str) -> None:
        """The predicate must carry exactly these values (model, version, stage, ...)."""
        for field_name, value in expected.items():
            if pred.get(field_name) != value:
                raise ControlRefused(
                    f"{key} is for {field_name}={pred.get(field_name)!r}, not {value!r}", where=key
                )


def verify_release(
    models: ModelRegistry, version: str, stage: str, *, keys: KeyDirectory, policy: GatePolicy
) -> GateReport:
    """Run every check for ``version`` -> ``stage``; raise ``ControlRefused`` on any failure."""
    gate = _Gate(models, version, check_stage(stage), keys, policy)
    models.require_version(version)
    report = gate.report
    release: dict[str, Any] = {}

    def check_release() -> tuple[str, list[str]]:
        key = f"{models.evidence_prefix(version)}/release.json"
        st, report.release_sha256 = gate.load(key, gate.attestor, PREDICATE_RELEASE)
        pred = st.predicate
        if pred.get("model") != models.model or pred.get("version") != version:
            raise ControlRefused(
                f"release manifest is for {pred.get('model')} {pred.get('version')}"
            )
        release.update(pred)
        report.model_digest = pred["modelDigest"]["sha256"]
        report.dataset_digest = pred["dataset"]["sha256"]
        report.image_digest = pred["image"]["sha256"]
        gate.require_subject(st, report.model_digest, "model", key, name="model")
        return f"signed by {st.signer}", [key]

    if not gate.check("release", check_release):
        _refuse(report)

    def check_model_signature() -> tuple[str, list[str]]:
        with tempfile.TemporaryDirectory(prefix="secmlops-gate-") as tmp:
            model_dir, signature = models.download_model(version, Path(tmp))
            sig_sha = sha256_bytes(signature.read_bytes())
            if sig_sha != release["signature"]["sha256"]:
                raise ControlRefused("model.sig is not the signature named in the release manifest")
            verify_model_signature(
                model_dir, signature=signature, public_key=keys.require(keys.public("model-signer"))
            )
            digest = tree_digest(model_dir)
        if digest != report.model_digest:
            raise ControlRefused(
                f"model files hash to {digest[:12]}…, "
                f"release manifest says {report.model_digest[:12]}…"
            )
        return "model-signing signature verifies with the model-signer key", [
            models.signature_key(version)
        ]

    gate.check("model-signature", check_model_signature)

    for name, predicate_type in REQUIRED_EVIDENCE.items():
        gate.check(
            name, functools.partial(_check_build_evidence, gate, release, name, predicate_type)
        )

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
    )


def _check_build_evidence(
    gate: _Gate, release: dict[str, Any], name: str, predicate_type: str
) -> tuple[str, list[str]]:
    report = gate.report
    entry = release.get("evidence", {}).get(name)
    if not entry:
        raise ControlRefused(f"release manifest names no {name} evidence")
    key = str(entry["key"])
    if not key.startswith(gate.models.evidence_prefix(report.version) + "/"):
        raise ControlRefused(f"release manifest points {name} outside this version: {key}")
    st, _ = gate.load(key, gate.attestor, predicate_type, expected_sha256=entry["sha256"])
    pred = st.predicate
    if name in ("data-pull", "validation"):
        gate.require_subject(st, report.dataset_digest, "dataset", key)
    if name == "validation":
        if pred.get("result") != "PASSED":
            raise ControlRefused(f"validation result is {pred.get('result')}", where=key)
        pinned = gate.policy.required_schema_digests
        used = {
            str((c.get("digest") or {}).get("sha256"))
            for c in pred.get("configuration") or []
            if isinstance(c, dict)
        }
        if pinned and not used & set(pinned):
            raise ControlRefused(
                f"data was validated against schema {sorted(used)}, not a pinned one", where=key
            )
    if name == "image-scan":
        gate.require_subject(st, report.image_digest, "image", key)
        verdict = scan_predicate_verdict(pred, gate.policy.scan)
        if verdict:
            raise ControlRefused(f"image scan does not meet policy: {verdict}", where=key)
    if name == "provenance":
        gate.require_subject(st, report.model_digest, "model", key, name="model")
        deps = pred.get("buildDefinition", {}).get("resolvedDependencies", [])
        if not any(d.get("digest", {}).get("sha256") == report.dataset_digest for d in deps):
            raise ControlRefused("provenance does not name the validated dataset", where=key)
    if name == "model-scan":
        gate.require_subject(st, report.model_digest, "model", key, name="model")
        files = pred.get("files") or []
        bad = [f.get("path") for f in files if f.get("verdict") != "pass"]
        if pred.get("verdict") != "pass" or not files or bad:
            raise ControlRefused(f"model-file scan did not pass (files: {bad})", where=key)
    return f"signed by {st.signer}", [key]


def _stage_evidence(gate: _Gate, version: str, prefix: str) -> list[str]:
    return [
        k
        for k in gate.models.evidence_keys(version)
        if k.rsplit("/", 1)[-1].startswith(f"{prefix}-")
    ]


def _approval_age_problem(decided_at: Any, max_days: int | None) -> str | None:
    if max_days is None:
        return None
    try:
        when = dt.datetime.strptime(str(decided_at), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return f"approval has no valid decidedAt ({decided_at!r})"
    age = dt.datetime.now(dt.UTC) - when
    if age > dt.timedelta(days=max_days):
        return f"approval from {decided_at} is older than {max_days} days; approve again"
    return None


def _check_approval(gate: _Gate, version: str) -> tuple[str, list[str]]:
    """An approval for this stage, by an allowed approver's own key, for exactly this release."""
    report = gate.report
    stage = report.stage
    policy = gate.policy.approval
    trusted = gate.keys.trusted_approvers(policy.allowed(stage))
    if stage in policy.unsafe_auto_approve_stages:
        for kid, (_, public) in gate.attestor.keys.items():
            trusted.keys[kid] = ("auto", public)
    keys = _stage_evidence(gate, version, f"approval-{stage}")
    if not keys:
        raise ControlRefused(f"no approval for {stage} recorded for {version}")
    staging_approvers = _staging_approvers(gate, version) if stage == "production" else set()
    problems = []
    for key in keys:
        try:
            st, _ = gate.load(key, trusted, PREDICATE_APPROVAL)
            gate.require_subject(st, report.model_digest, "model", key, name="model")
            pred = st.predicate
            gate.require_fields(
                pred, key, model=report.model, version=version, stage=stage, decision="approved"
            )
            if (pred.get("release") or {}).get("sha256") != report.release_sha256:
                raise ControlRefused(f"{key} approves a different release manifest")
            if st.signer == "auto" and pred.get("method") != "unsafe-auto-approval":
                raise ControlRefused(f"{key}: attestor-signed approval is not an auto-approval")
            if st.signer != "auto" and pred.get("approver") != st.signer:
                raise ControlRefused(
                    f"{key}: names {pred.get('approver')} but signed by {st.signer}"
                )
            too_old = _approval_age_problem(
                pred.get("decidedAt"), gate.policy.max_approval_age_days
            )
            if too_old:
                raise ControlRefused(f"{key}: {too_old}")
            if policy.separation_of_duties and st.signer in staging_approvers:
                raise ControlRefused(f"{st.signer} also approved staging (separation of duties)")
            report.approver, report.approval_method = st.signer, str(pred.get("method"))
            return f"approved by {st.signer} ({pred.get('method')})", [key]
        except SecMLOpsError as exc:
            problems.append(str(exc))
    raise ControlRefused("no valid approval: " + "; ".join(problems))


def _staging_vsas(gate: _Gate, version: str) -> list[tuple[str, VerifiedStatement]]:
    """Gate-signed staging VSAs that passed, for exactly this model, version and digest."""
    found = []
    for key in _stage_evidence(gate, version, "vsa-staging"):
        try:
            st, _ = gate.load(key, gate.keys.trusted("gate"), PREDICATE_SLSA_VSA)
        except SecMLOpsError:
            continue  # an unverifiable file does not count; enough valid ones can still pass
        problem = vsa_problem(
            st,
            model=gate.report.model,
            version=version,
            stage="staging",
            model_digest=gate.report.model_digest,
        )
        if problem is None:
            found.append((key, st))
    return found


def _staging_approvers(gate: _Gate, version: str) -> set[str]:
    """Who approved staging, as recorded by the gate in its signed staging VSAs."""
    return {
        str((st.predicate.get("secmlops") or {}).get("approval", {}).get("approver"))
        for _, st in _staging_vsas(gate, version)
    }


def _check_staged(gate: _Gate, version: str) -> tuple[str, list[str]]:
    """Production needs a passing staging gate (VSA) and a passing staging smoke test."""
    report = gate.report
    vsas = _staging_vsas(gate, version)
    if not vsas:
        raise ControlRefused(
            f"{version} never passed the gate for staging; promote it to staging first"
        )
    for key in _stage_evidence(gate, version, "smoke-test-staging"):
        try:
            st, _ = gate.load(key, gate.attestor, PREDICATE_SMOKE_TEST)
            gate.require_subject(st, report.model_digest, "model", key, name="model")
            gate.require_fields(
                st.predicate,
                key,
                model=report.model,
                version=version,
                stage="staging",
                result="PASSED",
            )
        except SecMLOpsError:
            continue
        return "passed the staging gate and the staging smoke test", [vsas[0][0], key]
    raise ControlRefused(f"{version} has no passing staging smoke test")


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
            f"the {stage} pointer names a VSA of another version/stage", where=where
        )
    raw = models.store.read(pointer.vsa)  # read once: hash, verify and parse the same bytes
    if sha256_bytes(raw) != pointer.vsa_sha256:
        raise ControlRefused(f"the {stage} pointer's VSA changed after promotion", where=where)
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
        raise ControlRefused(f"the {stage} pointer's VSA {problem}", where=where)
