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
4. ``revocation``   no signed revocation (:mod:`secmlops.controls.revocation`) withdraws
                    this version or its model digest, and no evidence was signed with a key
                    revoked before it signed;
5. ``approval``     the policy's number of distinct valid approvers for this stage
                    (``required_approvals``), each signed by an allowed approver's own key
                    (or attestor-signed where the policy lets an anonymous Prefect UI
                    decision or a dev auto-approval count), about this exact release, within
                    separation of duties, not revoked, not older than the age limit (30 days
                    for production by default), all decided after the newest valid rejection
                    (a rejection overrides every approval before it);
6. ``staged``       (production) a staging VSA that still counts (none of its approvals
                    revoked since) and a staging smoke test whose stored accuracy meets the
                    ``min_smoke_accuracy`` in force now, not the floor it ran under.

Any failure raises ``ControlRefused`` listing every failed check, with the first failed
check's :class:`GateRefusal` as its ``reason`` and the :class:`GateReport` as its ``result``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from secmlops._internal.digests import sha256_bytes
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
from secmlops.controls.image_signing import (
    IMAGE_SIGNATURE_EVIDENCE,
    ImageSigningRefusal,
    verify_image_signatures,
)
from secmlops.controls.revocation import (
    Revocations,
    load_revocations,
    signed_time,
    statement_digest,
)
from secmlops.errors import ControlRefused, RefusalReason, SecMLOpsError
from secmlops.evidence.keys import KeyDirectory
from secmlops.evidence.predicates import (
    VERIFIER_ID,
    ApprovalPredicate,
    ReleasePredicate,
    ResourceDescriptor,
    RunSources,
    VsaPredicate,
)
from secmlops.evidence.statements import (
    PREDICATE_SLSA_VSA,
    EvidenceRefusal,
    TrustedKeys,
    VerifiedStatement,
    parse_time,
    verify_bundle,
)
from secmlops.registry.models import (
    ModelRegistry,
    StagePointer,
    canonical_json,
    parse_json_object,
)
from secmlops.registry.pointers import (
    PointerRefusal,
    SeenPointers,
    check_fresh,
    check_stage_history,
    verify_pointer_signature,
)
from secmlops.site import Sources

#: Build-time evidence every release must carry, and the predicate each must have (from
#: the catalogue: every control of scope ``build``).
REQUIRED_EVIDENCE: dict[str, str] = {c.name: c.predicate_type for c in build_controls()}

_FROM_EVIDENCE_REFUSAL = {
    EvidenceRefusal.MALFORMED_BUNDLE: GateRefusal.MALFORMED_EVIDENCE,
    EvidenceRefusal.NOT_A_STATEMENT: GateRefusal.MALFORMED_EVIDENCE,
    EvidenceRefusal.UNTRUSTED_SIGNER: GateRefusal.UNTRUSTED_SIGNER,
    EvidenceRefusal.BAD_SIGNATURE: GateRefusal.BAD_SIGNATURE,
    EvidenceRefusal.KEY_NOT_VALID: GateRefusal.UNTRUSTED_SIGNER,
}


_FROM_IMAGE_SIGNING_REFUSAL = {
    ImageSigningRefusal.BLOB_DIGEST_MISMATCH: GateRefusal.EVIDENCE_CHANGED,
    ImageSigningRefusal.MALFORMED_SIGNATURES: GateRefusal.MALFORMED_EVIDENCE,
    ImageSigningRefusal.MISSING_SIGNATURE: GateRefusal.MISSING_EVIDENCE,
    ImageSigningRefusal.BAD_SIGNATURE: GateRefusal.BAD_SIGNATURE,
    ImageSigningRefusal.KEY_NOT_VALID: GateRefusal.UNTRUSTED_SIGNER,
    ImageSigningRefusal.WRONG_DIGEST: GateRefusal.WRONG_SUBJECT,
    ImageSigningRefusal.WRONG_REFERENCE: GateRefusal.SOURCE_MISMATCH,
    ImageSigningRefusal.SCAN_NOT_OF_THIS_IMAGE: GateRefusal.WRONG_SUBJECT,
    ImageSigningRefusal.SCAN_NOT_PASSED: GateRefusal.SCAN_FAILED_POLICY,
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
    if isinstance(exc.reason, ImageSigningRefusal):
        return _FROM_IMAGE_SIGNING_REFUSAL[exc.reason]
    return default


def _with_reason(exc: SecMLOpsError, reason: RefusalReason) -> ControlRefused:
    return ControlRefused(
        exc.message, where=exc.where, fix=exc.fix, details=exc.details, reason=reason
    )


@dataclass(frozen=True)
class PolicyRef:
    """Which signed policy file a :class:`GatePolicy` came from (set when it is loaded and
    verified by :func:`secmlops.policy.load_gate_policy`; never read from the YAML)."""

    #: The policy file as loaded, and the sha256 of its exact bytes (what the owner signed).
    path: str
    sha256: str
    #: The signature file, the trust root's name for the key that signed it and its key id.
    signature: str
    signer: str
    key_id: str
    #: The predicate's ``owner`` and ``signedAt``; the policy's ``expires`` (ISO date).
    owner: str
    signed_at: str
    expires: str | None
    #: Signed by the embedded demo's own owner key, the signature kept in its state home
    #: (never with site keys).
    demo_signed: bool = False


class GatePolicy(BaseModel):
    """What the deploy gate demands; defaults are the strict ones.

    Loaded from a policy file signed by a policy owner (:mod:`secmlops.policy`), whose
    digest and signer are :attr:`source`: every VSA and audit entry records them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: ``production`` accepts no demo key (the gate refuses evidence signed by one, see
    #: :meth:`require_key_allowed`), expires approvals after 30 days unless
    #: ``max_approval_age_days`` says otherwise, and needs
    #: ``scan.unsafe_allow_curated_db: false``. A policy file must say which it is.
    environment: Literal["demo", "production"] = "demo"
    #: Last day (UTC) the policy may be used; required for a policy a site signs.
    expires: dt.date | None = None

    approval: ApprovalPolicy = ApprovalPolicy()
    scan: ScanPolicy = ScanPolicy()
    min_smoke_accuracy: float = Field(default=0.6, ge=0, le=1)
    #: Approvals older than this no longer count. None: 30 days for production approvals
    #: (every stage under ``environment: production``), no limit for staging. Rollbacks then
    #: need a fresh approval, so an old approval cannot be replayed forever.
    max_approval_age_days: int | None = Field(default=None, ge=1)
    #: How long a gate-signed stage pointer stays fresh; an older one is refused until
    #: ``secmlops verify-stage --refresh`` re-runs the gate and signs a new one.
    pointer_valid_days: int = Field(default=30, ge=1, le=3660)
    #: sha256 digests of the pandera schemas data may be validated against (empty: any
    #: schema, as recorded in the evidence). Pin them so a weaker schema cannot be swapped in.
    required_schema_digests: tuple[str, ...] = ()
    #: The named sources runs may select (datasets, images, registries, the Trivy DB);
    #: site configuration, never a run parameter (:mod:`secmlops.site`).
    sources: Sources = Sources()

    _source: PolicyRef | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _production_is_strict(self) -> GatePolicy:
        if self.environment == "production":
            missing = []
            if self.scan.unsafe_allow_curated_db:
                missing.append("scan.unsafe_allow_curated_db: false (a real Trivy DB)")
            if missing:
                raise ValueError(f"a production policy needs {' and '.join(missing)}")
        return self

    @property
    def source(self) -> PolicyRef | None:
        """The signed file this policy was loaded from; ``None`` for one built in code."""
        return self._source

    def with_source(self, source: PolicyRef) -> GatePolicy:
        """This policy, recorded as loaded from the signed file ``source``."""
        policy = self.model_copy()
        policy._source = source
        return policy

    @property
    def digest(self) -> str:
        """sha256 of the signed policy file's bytes (of the canonical JSON of the settings
        for a policy built in code, which no owner signed)."""
        if self._source is not None:
            return self._source.sha256
        return sha256_bytes(canonical_json(self.model_dump(mode="json")))

    def descriptor(self, stage: str) -> ResourceDescriptor:
        """The VSA's ``policy``: the policy file by digest, with who signed it and until when."""
        src = self._source
        notes: dict[str, Any] = {"environment": self.environment}
        if src is not None:
            notes |= {"signer": src.signer, "signerKeyId": src.key_id, "owner": src.owner}
            notes |= {"signedAt": src.signed_at, "demoSigned": src.demo_signed}
            if src.expires:
                notes["expires"] = src.expires
        else:
            notes["signed"] = False
        return ResourceDescriptor(
            uri=f"secmlops:gate-policy/{stage}",
            name=Path(src.path).name if src else None,
            digest={"sha256": self.digest},
            annotations=notes,
        )

    def audit_record(self) -> dict[str, Any]:
        """What an audit entry records about the policy in force (``policy=`` field)."""
        src = self._source
        return {
            "sha256": self.digest,
            "environment": self.environment,
            "path": src.path if src else None,
            "signerKeyId": src.key_id if src else None,
            "expires": src.expires if src else None,
        }

    def require_key_allowed(self, keys: KeyDirectory, key_id: str, *, where: str) -> None:
        """Refuse (``UNTRUSTED_SIGNER``) evidence signed by a demo key under a production
        policy; the gate calls this for every signature it accepts."""
        if self.environment != "production":
            return
        from secmlops.policy import demo_key_ids  # policy imports this module

        if key_id in demo_key_ids(keys):
            raise ControlRefused(
                f"signed by demo key {key_id[:16]}…, which a production policy does not accept",
                where=where,
                fix="sign with the site's keys (SECMLOPS_KEYS / the trust root), not the "
                "embedded demo's",
                reason=EvidenceRefusal.UNTRUSTED_SIGNER,
            )


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
        at: dt.datetime | None = None,
    ) -> tuple[Evidence[Any], str]:
        """Read ``key`` once; hash, verify and type those same bytes. Returns (evidence, sha).

        ``at``: when the evidence was signed, if the caller knows better than the statement
        (build evidence: the release manifest's creation time), for the key's validity window.
        """
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
        verified = verify_bundle(bundle, trusted, where=where, at=at)
        # A production policy counts no signature by a demo key.
        self.policy.require_key_allowed(self.keys, verified.key_id, where=where)
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
        if not models.store.exists(key):
            # Registration writes the release manifest last: without it the version is
            # incomplete (an interrupted registration), never half-trusted.
            raise ControlRefused(
                f"{models.model} {version} is incomplete: its registration did not finish "
                "(no release manifest)",
                where=models.store.describe(key),
                fix="register the model again (a new version); this one can never deploy",
                reason=GateRefusal.MISSING_EVIDENCE,
            )
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
            # Verified with whichever signers the trust root's model-signer role names; the
            # verification hashed every file once and says what they hash to.
            signed_by = _verify_with_model_signer_trust(gate, model_dir, signature)
        digest = signed_by.model_digest
        if digest != report.model_digest:
            raise ControlRefused(
                f"model files hash to {digest[:12]}…, "
                f"release manifest says {report.model_digest[:12]}…",
                reason=GateRefusal.MODEL_SIGNATURE_INVALID,
            )
        return f"model-signing signature verifies with {signed_by.describe()}", [
            models.signature_key(version)
        ]

    gate.check(
        "model-signature", check_model_signature, default=GateRefusal.MODEL_SIGNATURE_INVALID
    )

    for entry in build_controls():
        gate.check(entry.name, functools.partial(_check_build_evidence, gate, entry))
    gate.check("image-signature", lambda: _check_image_signature(gate, version))

    gate.check("revocation", lambda: _check_revocations(gate, version))
    gate.check("approval", lambda: _check_approval(gate, version))
    if report.stage == "production":
        gate.check("staged", lambda: _check_staged(gate, version))
    if not report.passed:
        _refuse(report)
    return report


@dataclass(frozen=True)
class _ModelSignedBy:
    """Who signed the model, as the gate's model-signature check records it."""

    method: str
    #: The key id (key), the leaf certificate's subject (certificate), the certificate
    #: identity (sigstore).
    identity: str
    model_digest: str
    #: The CA (subject and fingerprint) or the OIDC issuer; empty for a key.
    issuer: str = ""

    def describe(self) -> str:
        if self.method == "key":
            return f"model-signer key {self.identity[:12]}…"
        if self.method == "certificate":
            return f"certificate {self.identity!r} issued under trusted CA {self.issuer}"
        return f"Sigstore identity {self.identity} (issuer {self.issuer})"


def _verify_with_model_signer_trust(
    gate: _Gate, model_dir: Path, signature: Path
) -> _ModelSignedBy:
    """Verify the model signature with whoever the trust root's model-signer role names
    (public keys, CA certificates, Sigstore identities) and was valid when the release was
    made: keys and CA entries by their windows, a signing certificate at the release's signed
    ``created_at`` (rotated keys and expired certificates keep their old versions
    verifiable). A production policy accepts no demo key or demo CA here either."""
    from secmlops.controls.signer_trust import read_bundle, verify_signed_model
    from secmlops.controls.signing import SignatureRefusal

    assert gate.release is not None  # noqa: S101 - the release check passed
    made = parse_time(gate.release.created_at)
    trust = gate.keys.trust_root().model_signer().valid_at(made)
    if not trust:
        raise ControlRefused(
            "no model-signer key, CA certificate or Sigstore identity in the trust root was "
            f"valid when this release was made ({gate.release.created_at})",
            reason=GateRefusal.MODEL_SIGNATURE_INVALID,
            fix="check the model-signer entries and their windows: `secmlops trust show`",
        )
    try:
        method = read_bundle(signature).method
    except SecMLOpsError as exc:
        raise _with_reason(exc, GateRefusal.MODEL_SIGNATURE_INVALID) from exc
    options = [o for o in trust.signer_trusts() if o.method == method]
    if not options:
        raise ControlRefused(
            f"model.sig is signed with method {method!r}, but the trust root's model-signer "
            f"role trusts {' and '.join(repr(m) for m in trust.methods)} only "
            f"({trust.describe()})",
            reason=GateRefusal.MODEL_SIGNATURE_INVALID,
            fix="sign models with the method the site trusts (sources.signing), or list "
            "the signer for role model-signer in the trust root",
        )
    # About the model files, not the signer: trying another trusted signer is useless.
    content_refusals = {
        SignatureRefusal.CONTENT_MISMATCH,
        SignatureRefusal.FILE_SET_MISMATCH,
        SignatureRefusal.SYMLINK_IN_MODEL,
        SignatureRefusal.MALFORMED_SIGNATURE,
    }
    refusal: SecMLOpsError | None = None
    for option in options:
        try:
            signer = verify_signed_model(
                model_dir, signature=signature, trust=option.trust, signed_at=made
            )
        except SecMLOpsError as exc:
            if exc.reason in content_refusals:
                raise  # the signature verified, the files do not match it: no signer helps
            refusal = refusal or exc
            continue
        if method == "key":
            gate.policy.require_key_allowed(gate.keys, signer.identity, where="model.sig")
            return _ModelSignedBy("key", signer.identity, signer.model_digest)
        if option.ca is not None:
            if option.ca.demo and gate.policy.environment == "production":
                raise ControlRefused(
                    f"model signed under demo CA {option.ca.name}, which a production policy "
                    "does not accept",
                    where="model.sig",
                    reason=GateRefusal.UNTRUSTED_SIGNER,
                )
            ca = f"{option.ca.name} ({option.ca.fingerprint[:12]}…)"
            return _ModelSignedBy("certificate", signer.identity, signer.model_digest, ca)
        return _ModelSignedBy("sigstore", signer.identity, signer.model_digest, signer.issuer or "")
    assert refusal is not None  # noqa: S101 - at least one option was tried
    raise refusal


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
    ev, _ = gate.load(
        ref.key,
        gate.attestor,
        entry,
        expected_sha256=ref.sha256,
        at=parse_time(gate.release.created_at),
    )
    gate.verified[entry.name] = ev
    gate.judge(entry, ev, gate.context(verified=dict(gate.verified)))
    return f"signed by {ev.signer}", [ref.key]


def _signed_image_repository(gate: _Gate) -> str:
    """The repository the site's image entry (the one the release's provenance recorded)
    says the image is served from: what its signature must name."""
    prov = gate.verified.get("provenance")
    external = (
        prov.statement.predicate.get("buildDefinition", {}).get("externalParameters", {})
        if prov is not None
        else {}
    )
    try:
        name = RunSources.model_validate(external.get("sources")).image.name
    except ValidationError:
        raise ControlRefused(
            "the release's provenance does not record which site image it used, so the "
            "repository its signature must name is unknown",
            reason=GateRefusal.SOURCE_MISMATCH,
        ) from None
    entry = gate.policy.sources.images.get(name)
    repository = entry.signed_repository if entry is not None else None
    if repository is None:
        raise ControlRefused(
            f"the site's image entry {name!r} names no repository, so no image signature "
            "can be admitted for it",
            where=f"sources.images.{name}",
            fix="set sources.images.<name>.repository in the policy file",
            reason=GateRefusal.SOURCE_MISMATCH,
        )
    return repository


def _check_image_signature(gate: _Gate, version: str) -> tuple[str, list[str]]:
    """The serving image's cosign signature and vulns attestation stored with the version
    (:meth:`ModelRegistry.image_signature_prefix`), as the release manifest names it (its
    ``index.json`` by sha256): signed by an attestor key valid when the release was made,
    about the manifest digest of the image whose config digest the release scanned, naming
    the repository of the site's image entry, with the scan result the release's
    ``image-scan`` evidence holds. A release naming none is refused under a production
    policy (made before images were signed, it passes a demo policy, saying so)."""
    assert gate.release is not None  # noqa: S101 - the release check passed
    models, report = gate.models, gate.report
    ref = gate.release.evidence.get(IMAGE_SIGNATURE_EVIDENCE)
    if ref is None:
        if gate.policy.environment == "production":
            raise ControlRefused(
                "the release manifest names no image signature: a production policy admits "
                "only a serving image signed with its scan attested (cosign)",
                reason=GateRefusal.MISSING_EVIDENCE,
            )
        return "no image signature recorded (release made before images were signed)", []
    prefix = models.image_signature_prefix(version)
    if ref.key != f"{prefix}/index.json":
        raise ControlRefused(
            f"release manifest points image-signature elsewhere: {ref.key}",
            reason=GateRefusal.MISPLACED_EVIDENCE,
        )
    repository = _signed_image_repository(gate)
    where = models.store.describe(prefix)
    with tempfile.TemporaryDirectory(prefix="secmlops-gate-image-") as tmp:
        layout = Path(tmp) / "image.cosign"
        try:
            files = models.store.download_tree_hashed(prefix, layout)
        except ControlRefused as exc:
            raise _with_reason(exc, GateRefusal.MISSING_EVIDENCE) from exc
        if "index.json" not in files:
            raise ControlRefused(
                f"the image signature layout is missing from {where}",
                where=where,
                reason=GateRefusal.MISSING_EVIDENCE,
            )
        if files["index.json"] != ref.sha256:
            raise ControlRefused(
                f"{ref.key} was changed after the release manifest was signed",
                where=where,
                reason=GateRefusal.EVIDENCE_CHANGED,
            )
        try:
            verified = verify_image_signatures(
                layout,
                gate.attestor,
                config_digest=report.image_digest,
                repository=repository,
                at=parse_time(gate.release.created_at),
                detached=True,
            )
        except ControlRefused as exc:
            raise ControlRefused(
                exc.message.replace(tmp, prefix),
                where=where,
                fix=exc.fix,
                reason=gate_reason(exc, GateRefusal.BAD_SIGNATURE),
            ) from exc
    gate.policy.require_key_allowed(gate.keys, verified.key_id, where=where)
    scan = gate.verified.get("image-scan")
    if scan is None:
        raise ControlRefused(
            "the release's image-scan evidence did not verify, so the attested scan cannot "
            "be compared with it",
            reason=GateRefusal.MISSING_EVIDENCE,
        )
    attested = verified.attestation
    if (
        attested.get("predicateType") != scan.statement.predicate_type
        or attested.get("predicate") != scan.statement.predicate
    ):
        raise ControlRefused(
            "the image attestation's scan result is not the release's image-scan evidence",
            where=where,
            reason=GateRefusal.NOT_THIS_RELEASE,
        )
    return (
        f"cosign signature and scan attestation of {verified.repository}@sha256:"
        f"{verified.manifest_digest[:12]}… verify with attestor key {verified.key_id[:12]}…",
        [ref.key],
    )


def _stage_evidence(gate: _Gate, version: str, prefix: str) -> list[str]:
    return [
        k
        for k in gate.models.evidence_keys(version)
        if k.rsplit("/", 1)[-1].startswith(f"{prefix}-")
    ]


def role_key_ids(keys: KeyDirectory) -> dict[str, str]:
    """Key id -> role of every pipeline role key the trust root lists (every key of a role,
    rotated ones too): no approver may sign with one."""
    return keys.role_key_ids()


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
    trusted.extend(gate.attestor, name=ATTESTOR_SIGNER)  # each key with its validity window
    # An approver holding the attestor key: a role conflict (the catalogue check says so).
    trusted.extend(gate.keys.trusted_approvers(gate.policy.approval.allowed(stage)))
    return trusted


_REVOCATIONS: weakref.WeakKeyDictionary[_Gate, Revocations] = weakref.WeakKeyDictionary()


def _revocations(gate: _Gate) -> Revocations:
    """The signed revocations that count under the gate's policy (read once per gate run)."""
    found = _REVOCATIONS.get(gate)
    if found is None:
        found = load_revocations(gate.models, keys=gate.keys, policy=gate.policy.approval)
        _REVOCATIONS[gate] = found
    return found


def _check_revocations(gate: _Gate, version: str) -> tuple[str, list[str]]:
    """No signed revocation withdraws this version (or its model digest), and no release or
    build evidence was signed (by its own signed time) with a key revoked by then. Approvals
    and staging evidence are checked where they are counted."""
    revocations = _revocations(gate)
    report = gate.report
    revoked = revocations.of_version(version, report.model_digest or None)
    if revoked is not None:
        raise ControlRefused(
            f"{gate.models.model} {version} is {revoked.describe()}",
            where=revoked.key,
            reason=GateRefusal.VERSION_REVOKED,
        )
    key = f"{gate.models.evidence_prefix(version)}/release.json"
    raw = gate.models.store.read(key)
    if sha256_bytes(raw) != report.release_sha256:
        raise ControlRefused(
            f"{key} changed while the gate ran", where=key, reason=GateRefusal.EVIDENCE_CHANGED
        )
    release = verify_bundle(parse_json_object(raw, key), gate.attestor, where=key)
    # Build evidence without a time of its own was made before the manifest that names it.
    created = signed_time(release.statement)
    signed = [(key, release), *((ev.key, ev.statement) for ev in gate.verified.values())]
    for what, st in signed:
        by = revocations.signed_with_revoked_key(st, fallback=created)
        if by is not None:
            raise ControlRefused(
                f"{what} was signed with a key {by.describe()}",
                where=what,
                reason=GateRefusal.KEY_REVOKED,
            )
    ignored = f", {len(revocations.ignored)} ignored" if revocations.ignored else ""
    return f"no revocation applies ({len(revocations.items)} on record{ignored})", []


def _not_revoked(ev: Evidence[ApprovalPredicate], sha256: str, revocations: Revocations) -> None:
    """``ControlRefused`` if a decision was signed with a revoked key, or an approval revoked."""
    pred = ev.predicate
    by = revocations.signed_with_revoked_key(ev.statement)
    if by is not None:
        raise ControlRefused(
            f"{ev.key}: {pred.approver}'s decision was signed with a key {by.describe()}",
            where=ev.key,
            reason=GateRefusal.KEY_REVOKED,
        )
    if pred.decision != "approved":
        return
    by = revocations.of_approval(
        version=pred.version,
        stage=pred.stage,
        key=ev.key,
        sha256=sha256,
        statement_sha256=statement_digest(ev.statement.statement),
    )
    if by is not None:
        raise ControlRefused(
            f"{pred.approver}'s approval {ev.key} was {by.describe()}",
            where=ev.key,
            reason=GateRefusal.APPROVAL_REVOKED,
        )


def _sort_decisions(gate: _Gate, keys: list[str], ctx: GateContext) -> _Decisions:
    found = _Decisions()
    trusted = _approval_trust(gate, ctx.stage)
    entry = control("approval")
    revocations = _revocations(gate)
    for key in keys:
        try:
            ev, sha256 = gate.load(key, trusted, entry)
            failed = [r for r in approval_authenticity(ev, ctx) if not r.passed]
            if not failed and ev.predicate.decision == "approved":
                failed = [r for r in approval_conditions(ev, ctx) if not r.passed]
            if failed:
                raise ControlRefused(
                    "; ".join(r.detail for r in failed), where=key, reason=failed[0].reason
                )
            _not_revoked(ev, sha256, revocations)
        except SecMLOpsError as exc:
            found.problems.append(exc)
            continue
        if ev.predicate.decision == "approved":
            found.approvals.append((key, ev))
        else:
            found.rejections.append((key, ev))
    return found


def _check_approval(gate: _Gate, version: str) -> tuple[str, list[str]]:
    """Enough distinct valid approvers for this stage, for exactly this release, none revoked,
    all decided after the newest valid rejection: a rejection overrides every approval
    decided before it (or in the same second: fail closed)."""
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
        role_key_ids=tuple(sorted(role_key_ids(gate.keys).items())),  # (key id, role)
    )
    found = _sort_decisions(gate, keys, ctx)
    rejection = max(found.rejections, key=lambda r: r[1].predicate.decided_at, default=None)
    cutoff = rejection[1].predicate.decided_at if rejection else None
    standing = [
        (k, ev) for k, ev in found.approvals if cutoff is None or ev.predicate.decided_at > cutoff
    ]
    overridden = sorted(
        {ev.predicate.approver for k, ev in found.approvals if (k, ev) not in standing}
    )
    counted: list[tuple[str, Evidence[ApprovalPredicate]]] = []
    names: set[str] = set()
    key_ids: set[str] = set()
    # Newest first: each person (or key) counts once, with their latest approval.
    for key, ev in sorted(standing, key=lambda a: a[1].predicate.decided_at, reverse=True):
        kid = "" if ev.signer == ATTESTOR_SIGNER else ev.statement.key_id
        if ev.predicate.approver in names or (kid and kid in key_ids):
            continue
        names.add(ev.predicate.approver)
        key_ids.add(kid)
        counted.insert(0, (key, ev))
    needed = gate.policy.approval.needed(stage)
    if len(counted) >= needed:
        report.approvals = [(ev.predicate.approver, ev.predicate.method) for _, ev in counted]
        report.approver, report.approval_method = report.approvals[0]
        who = ", ".join(f"{a} ({m})" for a, m in report.approvals)
        return f"approved by {who}", [k for k, _ in counted]
    if rejection is not None:
        key, ev = rejection
        earlier = f"; it overrides the earlier approval of {', '.join(overridden)}"
        raise ControlRefused(
            f"{ev.predicate.approver} rejected {version} for {stage} at "
            f"{ev.predicate.decided_at}: {ev.predicate.comment or 'no reason given'}"
            + (earlier if overridden else "")
            + f"; {len(counted)} of {needed} required approvals decided since",
            where=key,
            reason=GateRefusal.APPROVAL_REJECTED,
        )
    problems = "; ".join(str(p) for p in found.problems)
    revoked = [
        p
        for p in found.problems
        if p.reason in (GateRefusal.APPROVAL_REVOKED, GateRefusal.KEY_REVOKED)
    ]
    if revoked:
        raise ControlRefused(
            f"{len(counted)} of {needed} required approvals for {stage}; not counted: {problems}",
            reason=gate_reason(revoked[0]),
        )
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
    from secmlops.audit import superseded_vsas  # audit imports the gate

    superseded = superseded_vsas(gate.models, gate.keys)  # lost a pointer race: never served
    for key in _stage_evidence(gate, version, "vsa-staging"):
        if key in superseded:
            continue
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


def _vsa_revoked(
    ev: Evidence[VsaPredicate], version: str, revocations: Revocations
) -> ControlRefused | None:
    """Why a staging VSA no longer counts: signed with a key revoked by then, or it counted
    an approval revoked since (``None``: it still counts)."""
    by = revocations.signed_with_revoked_key(ev.statement)
    if by is not None:
        return ControlRefused(
            f"staging VSA {ev.key} was signed with a key {by.describe()}",
            where=ev.key,
            reason=GateRefusal.KEY_REVOKED,
        )
    counted = {e for c in ev.predicate.secmlops.checks if c.name == "approval" for e in c.evidence}
    for attestation in ev.predicate.input_attestations:
        if attestation.uri not in counted:
            continue
        by = revocations.of_approval(
            version=version,
            stage="staging",
            key=attestation.uri,
            sha256=(attestation.digest or {}).get("sha256", ""),
            statement_sha256="",
        )
        if by is not None:
            return ControlRefused(
                f"staging VSA {ev.key} counted the approval {attestation.uri}, which was "
                f"{by.describe()}",
                where=ev.key,
                reason=GateRefusal.APPROVAL_REVOKED,
            )
    return None


def _check_staged(gate: _Gate, version: str) -> tuple[str, list[str]]:
    """Production needs a passing staging gate (VSA) and a passing staging smoke test, both
    re-judged now: a VSA that counted a since-revoked approval and evidence signed with a
    revoked key do not count, and the smoke test's stored accuracy must meet the
    ``min_smoke_accuracy`` of the policy in force (whatever floor it was run under)."""
    revocations = _revocations(gate)
    vsas: list[tuple[str, Evidence[VsaPredicate]]] = []
    dropped: list[ControlRefused] = []
    for key, ev in _staging_vsas(gate, version):
        problem = _vsa_revoked(ev, version, revocations)
        if problem is None:
            vsas.append((key, ev))
        else:
            dropped.append(problem)
    if not vsas:
        if dropped:
            raise ControlRefused(
                f"{version} has no staging VSA that still counts: "
                + "; ".join(p.message for p in dropped),
                reason=gate_reason(dropped[0]),
            )
        raise ControlRefused(
            f"{version} never passed the gate for staging; promote it to staging first",
            reason=GateRefusal.NOT_STAGED,
        )
    entry = control("smoke-test")
    ctx = gate.context(stage="staging")
    failures: list[SecMLOpsError] = []
    for key in _stage_evidence(gate, version, "smoke-test-staging"):
        try:
            smoke, _ = gate.load(key, gate.attestor, entry)
            by = revocations.signed_with_revoked_key(smoke.statement)
            if by is not None:
                raise ControlRefused(
                    f"{key} was signed with a key {by.describe()}",
                    where=key,
                    reason=GateRefusal.KEY_REVOKED,
                )
            gate.judge(entry, smoke, ctx)
        except SecMLOpsError as exc:
            failures.append(exc)
            continue
        floor = gate.policy.min_smoke_accuracy
        return (
            f"passed the staging gate and the staging smoke test (accuracy "
            f"{smoke.predicate.accuracy:.4f} >= min_smoke_accuracy {floor:g})",
            [vsas[0][0], key],
        )
    if not failures:
        raise ControlRefused(
            f"{version} has no staging smoke test", reason=GateRefusal.SMOKE_TEST_FAILED
        )
    reasons = [gate_reason(f, GateRefusal.SMOKE_TEST_FAILED) for f in failures]
    reason = GateRefusal.first_of(
        r for r in reasons if r in (GateRefusal.SMOKE_BELOW_FLOOR, GateRefusal.KEY_REVOKED)
    )
    raise ControlRefused(
        f"{version} has no passing staging smoke test: " + "; ".join(f.message for f in failures),
        reason=reason or reasons[0],
    )


def passed_gate_before(models: ModelRegistry, version: str, stage: str, keys: KeyDirectory) -> bool:
    """True if a gate-signed VSA says ``version`` passed the gate for ``stage`` before.

    Rollback targets come from the signed stage history; this is what makes a history
    entry count. A VSA the audit log marks ``superseded`` (it lost a promotion race and
    never served) does not.
    """
    from secmlops.audit import superseded_vsas

    trusted = keys.trusted("gate")
    prefix = f"vsa-{check_stage(stage)}-"
    superseded: frozenset[str] | None = None
    for key in models.evidence_keys(version):
        if not key.rsplit("/", 1)[-1].startswith(prefix):
            continue
        try:
            st = verify_bundle(models.read_json(key), trusted, where=key)
        except SecMLOpsError:
            continue
        if (
            vsa_problem(st, model=models.model, version=version, stage=stage, model_digest=None)
            is not None
        ):
            continue
        if superseded is None:
            superseded = superseded_vsas(models, keys)
        if key not in superseded:
            return True
    return False


def verify_pointer_vsa(
    models: ModelRegistry,
    stage: str,
    pointer: StagePointer,
    keys: KeyDirectory,
    *,
    seen: SeenPointers | None = None,
    now: dt.datetime | None = None,
    allow_expired: bool = False,
) -> None:
    """Check a stage pointer and what it names; ``ControlRefused`` if anything is off.

    The pointer must be signed by the gate key (:class:`PointerRefusal` ``POINTER_UNSIGNED``
    / ``POINTER_BAD_SIGNATURE`` / ``POINTER_MISMATCH``), be the newest entry of the signed
    stage history and not older than the last pointer this machine verified
    (``POINTER_ROLLED_BACK`` / ``POINTER_FORKED``), and not be expired (``POINTER_EXPIRED``,
    unless ``allow_expired``). Its VSA must be the one it names (same bytes), signed by the
    gate key, written by this gate, PASSED, and about exactly the pointer's model, version,
    stage and digest (``GateRefusal.POINTER_NOT_VOUCHED``). Once all that holds, the
    pointer is remembered in ``seen`` (default :meth:`SeenPointers.default`, the state
    home's ``trusted-pointers.json``).
    """
    where = f"stage:{stage}"
    trusted_gate = keys.trusted("gate")
    seen = seen or SeenPointers.default()
    verify_pointer_signature(models, pointer, trusted_gate, stage=stage)
    check_stage_history(models, pointer, trusted_gate, stage=stage)
    seen.check(models, pointer, stage=stage)
    expiry: ControlRefused | None = None
    try:
        check_fresh(pointer, where=models.store.describe(models.stage_key(stage)), now=now)
    except ControlRefused as exc:
        if not allow_expired:
            raise
        expiry = exc
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
    vsa = verify_bundle(parse_json_object(raw, pointer.vsa), trusted_gate, where=pointer.vsa)
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
    if expiry is None:
        seen.remember(models, pointer, stage=stage)


__all__ = [
    "REQUIRED_EVIDENCE",
    "VERIFIER_ID",
    "GateCheck",
    "GatePolicy",
    "GateRefusal",
    "GateReport",
    "PointerRefusal",
    "PolicyRef",
    "gate_reason",
    "passed_gate_before",
    "role_key_ids",
    "staging_approvers",
    "verify_pointer_vsa",
    "verify_release",
    "vsa_problem",
]
