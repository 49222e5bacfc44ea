"""Typed predicates: one pydantic model per predicate type the pipeline writes.

Writer and reader share these models: a control builds its predicate through its model
(``Model(...).model_dump(mode="json", by_alias=True)``) and the deploy gate and the evidence
report read a signed statement back with ``Model.model_validate(statement["predicate"])``.
A predicate that does not validate is refused, never guessed at.

Our own predicate types (data pull, model scan, release manifest, approval, smoke test)
parse strictly: frozen, ``extra="forbid"``. The standard ones (SLSA Provenance v1, in-toto
test-result v0.1 and vulns v0.1, SLSA VSA v1) model every field of their specification that
we write, and our own data sits where it does today (the VSA's ``secmlops`` object, the
test result's ``summary``, the scan's ``image``/``report``/``verdict``), itself strict.

Example::

    pred = DataPullPredicate.model_validate(statement["predicate"])
    print(pred.commit, pred.size_bytes)
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

#: Deployment stages, in promotion order.
StageName = Literal["staging", "production"]
#: How an approval decision was made: ``cli-preapproval`` (``--approve-as``, approver's key),
#: ``signed-decision`` (``secmlops approve``, approver's key), ``prefect-ui`` (anonymous UI
#: form, attestor-signed), ``unsafe-auto-approval`` (dev policy, attestor-signed).
ApprovalMethod = Literal["cli-preapproval", "signed-decision", "prefect-ui", "unsafe-auto-approval"]

#: ``verifier.id`` of every VSA the deploy gate writes.
VERIFIER_ID = "https://secmlops.dev/deploy-gate/v1"


class _Strict(BaseModel):
    """JSON keys as written (no aliases); frozen; unknown fields are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class _Camel(BaseModel):
    """camelCase JSON keys, snake_case attributes; frozen; unknown fields are an error."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


def dump_predicate(predicate: BaseModel, *, exclude_none: bool = False) -> dict[str, Any]:
    """A predicate model as the JSON object a statement carries (camelCase keys)."""
    return predicate.model_dump(mode="json", by_alias=True, exclude_none=exclude_none)


# --- shared pieces -------------------------------------------------------------------------


class ResourceDescriptor(_Camel):
    """in-toto ResourceDescriptor v1 (every field of the specification)."""

    name: str | None = None
    uri: str | None = None
    digest: dict[str, str] | None = None
    content: str | None = None
    download_location: str | None = None
    media_type: str | None = None
    annotations: dict[str, Any] | None = None


class Sha256Ref(_Strict):
    """``{"sha256": ...}``: a digest of something named elsewhere."""

    sha256: str


class ToolRef(_Strict):
    """Which tool produced the evidence."""

    name: str
    version: str


# --- data pull (ours) ----------------------------------------------------------------------


class DataPullPredicate(_Camel):
    """``data-pull/v1``: a DVC pull whose bytes matched the md5 recorded in git."""

    repo: str
    path: str
    rev: str
    commit: str
    dvc_md5: str
    md5_verified: bool
    size_bytes: int
    pulled_at: str
    tool: ToolRef


# --- validation: in-toto test-result v0.1 --------------------------------------------------


class SchemaFailure(_Strict):
    """One failed schema check (column, check, count, examples)."""

    column: str
    check: str
    count: int
    examples: list[str]


class QuarantineFile(_Strict):
    """One file a quarantine split wrote: its name and digest."""

    name: str
    digest: dict[str, str]


class QuarantineSummary(_Camel):
    """Rows a schema's quarantine policy set aside (issue 11): training gets ``clean``."""

    max_failing_percent: float
    rows: int
    failing_rows: int
    clean_rows: int
    clean: QuarantineFile
    quarantine: QuarantineFile
    failures: list[SchemaFailure]


class ValidationSummary(_Camel):
    """Our data in a test result: what was validated, with which tool and backend, and
    whether the result was reused from an earlier run (``cached``, ``validated_in_run``)."""

    rows: int
    columns: list[str]
    checks_run: int
    failures: list[SchemaFailure]
    validated_at: str
    tool: ToolRef
    backend: Literal["pandas", "polars"] | None = None
    quarantine: QuarantineSummary | None = None
    cached: bool | None = None
    validated_in_run: str | None = None


class TestResultPredicate(_Camel):
    """in-toto ``test-result/v0.1``, plus our ``summary``."""

    __test__ = False  # not a pytest test class

    result: Literal["PASSED", "WARNED", "FAILED"]
    configuration: list[ResourceDescriptor] = []
    url: str | None = None
    passed_tests: list[str] = []
    warned_tests: list[str] = []
    failed_tests: list[str] = []
    summary: ValidationSummary | None = None


# --- image scan: in-toto vulns v0.1 --------------------------------------------------------


class VulnsInvocation(_Strict):
    parameters: list[str]
    uri: str
    event_id: str
    producer_id: str


class VulnsSeverity(_Strict):
    method: str
    score: str


class VulnsResult(_Strict):
    id: str
    severity: list[VulnsSeverity]
    annotations: list[dict[str, Any]] = []


class VulnsDb(_Camel):
    """Trivy's vulnerability DB (``digest``, ``source``, ``cache_dir``, ``origin`` are ours)."""

    uri: str
    version: str
    last_update: str | None = None
    digest: Sha256Ref
    source: str
    #: The Trivy cache dir the scan read the DB from (absent in evidence before issue 12).
    cache_dir: str | None = None
    #: Why the DB counted: ``secmlops-demo`` (pinned in code) or ``site-pinned``.
    origin: str | None = None
    #: metadata.json ``DownloadedAt`` (``lastUpdate`` is its ``UpdatedAt``: the DB build
    #: time); absent in evidence before issue 9.
    downloaded_at: str | None = None


class VulnsScanner(_Strict):
    uri: str
    version: str
    #: sha256 of the trivy binary that ran, symlinks resolved (ours; absent before issue 9:
    #: such evidence is refused, see controls/image_scan/binary.py).
    digest: Sha256Ref | None = None
    #: The path of that binary (ours; informative only, the digest decides).
    path: str | None = None
    db: VulnsDb
    result: list[VulnsResult]


class VulnsMetadata(_Camel):
    scan_started_on: str
    scan_finished_on: str


class ImageOs(_Strict):
    family: str
    name: str
    eosl: bool


class ScannedImage(_Camel):
    """Our data: the image that was scanned."""

    name: str
    image_id: str
    archive_sha256: str | None
    repo_tags: list[str]
    os: ImageOs
    packages_scanned: int


class ScanReportRef(_Strict):
    format: str
    sha256: str


class VulnFinding(_Camel):
    """One finding as the scan verdict records it."""

    id: str
    package: str
    installed: str
    fixed: str
    status: str
    severity: str
    severity_source: str
    title: str
    target: str
    kind: str = Field(alias="class")
    pkg_type: str = Field(alias="type")
    primary_url: str


class AllowedVulnFinding(VulnFinding):
    """A blocking finding let through by a policy exception."""

    reason: str
    expires: str


class ScanVerdictRecord(_Camel):
    """Our data: the scan policy's decision when the scan ran (the gate re-judges)."""

    passed: bool
    image_digest: str
    blocking: list[VulnFinding]
    allowed: list[AllowedVulnFinding]
    ignored_unfixed: list[VulnFinding]
    below_threshold: int
    problems: list[str]
    expired_allow_entries: list[str]
    unused_allow_entries: list[str]
    counts: dict[str, int]
    evaluated_on: str
    policy: dict[str, Any]
    report_only: bool


class VulnsPredicate(_Strict):
    """in-toto ``vulns/v0.1``, plus our ``image``, ``report`` and ``verdict``."""

    invocation: VulnsInvocation
    scanner: VulnsScanner
    metadata: VulnsMetadata
    image: ScannedImage
    report: ScanReportRef
    verdict: ScanVerdictRecord


# --- training: SLSA Provenance v1 ----------------------------------------------------------


class BuildDefinition(_Camel):
    build_type: str
    external_parameters: dict[str, Any]
    internal_parameters: dict[str, Any] | None = None
    resolved_dependencies: list[ResourceDescriptor] = []


class Builder(_Camel):
    id: str
    builder_dependencies: list[ResourceDescriptor] | None = None
    version: dict[str, str] | None = None


class BuildMetadata(_Camel):
    invocation_id: str | None = None
    started_on: str | None = None
    finished_on: str | None = None


class RunDetails(_Camel):
    builder: Builder
    metadata: BuildMetadata | None = None
    byproducts: list[ResourceDescriptor] = []


class ProvenancePredicate(_Camel):
    """SLSA ``provenance/v1`` (every field of the specification)."""

    build_definition: BuildDefinition
    run_details: RunDetails


class RunRecord(_Camel):
    """The flow run that built a model, as the orchestrator knows it.

    Recorded in the provenance's ``buildDefinition.internalParameters.run``: SLSA v1 puts
    what the build platform itself decides there (``runDetails.metadata`` has room only for
    ``invocationId`` and times). ``started_by`` is who started the run where the server
    knows it (Prefect's ``FlowRun.created_by``), else ``None`` with ``started_by_note``
    saying why; ``worker`` is the OS identity the flow ran as, never taken for the starter.
    """

    flow_run_id: str | None = None
    flow_run_name: str | None = None
    deployment_id: str | None = None
    deployment_name: str | None = None
    work_pool: str | None = None
    started_by: str | None = None
    #: What ``started_by`` is: Prefect's ``created_by.type`` (``USER``, ``AUTOMATION``, ...)
    #: or ``os-user`` for a run started in the worker's own process.
    started_by_kind: str | None = None
    started_by_note: str = ""
    worker: str


class DatasetSelection(_Camel):
    """The dataset entry a run selected, as resolved: where it came from, its schema."""

    name: str
    repo: str
    path: str
    rev: str
    commit: str
    schema_spec: str = Field(alias="schema")
    #: The schema's digest as the validation evidence records it (its configuration digest).
    schema_digest: str
    #: sha256 of the schema module's file (what a site pins as ``schema_sha256``); ``None``
    #: when the schema has no source file.
    schema_sha256: str | None


class ImageSelection(_Camel):
    """The image entry a run selected, as resolved: what was scanned, and its digest."""

    name: str
    target: str
    digest: str


class RegistrySelection(_Camel):
    """The registry entry a run selected, as resolved."""

    name: str
    uri: str


class RunSources(_Camel):
    """``externalParameters.sources``: the site entries the run's parameters selected,
    resolved to what the run used (secrets in URLs redacted)."""

    dataset: DatasetSelection
    image: ImageSelection
    registry: RegistrySelection


# --- model-file scan (ours) ----------------------------------------------------------------


class ModelScanner(_Strict):
    name: str
    version: str


class ModelScanPolicyRecord(_Strict):
    allowed_formats: list[str]
    max_file_bytes: int
    max_text_bytes: int
    unsafe_allow_pickle_globals: list[str]


class ModelFileScan(_Strict):
    path: str
    sha256: str | None
    size: int
    format: str
    verdict: Literal["pass", "warn", "refused"]
    issues: list[str]
    pickle_globals: list[str]


class ModelScanPredicate(_Strict):
    """``model-scan/v1``: every model file's format and verdict."""

    scanner: ModelScanner
    policy: ModelScanPolicyRecord
    files: list[ModelFileScan]
    verdict: Literal["pass", "refused"]


# --- release manifest (ours) ---------------------------------------------------------------


class SignatureRef(_Strict):
    key: str
    sha256: str


class DatasetRef(_Strict):
    """The dataset a release was trained on."""

    sha256: str
    repo: str
    path: str
    rev: str
    commit: str


class ImageRef(_Strict):
    """The serving image a release was scanned in."""

    ref: str
    sha256: str


class EvidenceRef(_Strict):
    key: str
    sha256: str


class ReleasePredicate(_Camel):
    """``release/v1``: binds the model digest, its signature, data, image and evidence."""

    model: str
    version: str
    model_digest: Sha256Ref
    signature: SignatureRef
    dataset: DatasetRef
    image: ImageRef
    evidence: dict[str, EvidenceRef]
    metrics: dict[str, Any]
    run: str
    builder: str
    created_at: str


# --- approval (ours) -----------------------------------------------------------------------


class ApprovalRequestRecord(_Strict):
    """What was put to the approver (``ApprovalRequest`` as recorded)."""

    model: str
    version: str
    model_digest: str
    stage: StageName
    release_sha256: str
    summary: str
    #: Who started the run ("" when unknown; absent in evidence written before it existed).
    requested_by: str = ""


class ApprovalPredicate(_Camel):
    """``approval/v1``: a named person's decision about one release for one stage."""

    model: str
    version: str
    stage: StageName
    decision: Literal["approved", "rejected"]
    approver: str
    method: ApprovalMethod
    comment: str
    decided_at: str
    release: Sha256Ref
    request: ApprovalRequestRecord


# --- revocation (ours) ---------------------------------------------------------------------


class RevokedApproval(_Camel):
    """The approval a revocation withdraws: where it was stored and what was signed."""

    key: str
    #: sha256 of the bundle's bytes as stored, and of the signed statement (canonical JSON,
    #: so a copy of the same signed decision under another key or formatting is revoked too).
    sha256: str
    statement_sha256: str
    stage: StageName
    approver: str


class RevokedKey(_Camel):
    """A key no longer trusted: what it signed (by the statement's own time) from then on."""

    key_id: str
    effective_from: str


class RevocationPredicate(_Camel):
    """``revocation/v1``: a signed withdrawal of an approval, a model version (every stage)
    or a key, by an allowed approver or the policy owner. Revocations only ever take trust
    away; ``kind`` says which of ``approval``/``model_digest``/``key`` is set."""

    kind: Literal["approval", "version", "key"]
    model: str
    version: str | None = None
    model_digest: Sha256Ref | None = None
    approval: RevokedApproval | None = None
    key: RevokedKey | None = None
    reason: str
    revoked_by: str
    revoker_role: Literal["approver", "policy-owner"]
    revoked_at: str


# --- smoke test (ours) ---------------------------------------------------------------------


class SmokeSample(_Strict):
    sha256: str
    rows: int


class SmokeTestPredicate(_Camel):
    """``smoke-test/v1``: the model a stage serves, exercised on a held-out sample."""

    model: str
    stage: str
    version: str
    sample: SmokeSample
    accuracy: float
    min_accuracy: float
    seconds: float
    result: Literal["PASSED", "FAILED"]
    tested_at: str


# --- deploy gate verdict: SLSA VSA v1 ------------------------------------------------------


class Verifier(_Strict):
    id: str
    version: dict[str, str] | None = None


class GateCheckRecord(_Strict):
    """One gate check as the VSA records it."""

    name: str
    passed: bool
    detail: str
    evidence: list[str]
    reason: str | None = None


class ApproverRef(_Strict):
    approver: str
    method: str


class GateVerdict(_Camel):
    """Our data in a VSA: which model, version and stage, and every check the gate ran."""

    model: str
    version: str
    stage: str
    dataset_digest: str
    image_digest: str
    release: Sha256Ref
    approval: ApproverRef
    #: Every approver the gate counted (the two-person rule has more than one; absent in
    #: VSAs written before it existed, where ``approval`` is the only one).
    approvals: list[ApproverRef] | None = None
    checks: list[GateCheckRecord]


class VsaPredicate(_Camel):
    """SLSA ``verification_summary/v1`` (every field of the specification), plus ``secmlops``."""

    verifier: Verifier
    time_verified: str
    resource_uri: str
    policy: ResourceDescriptor
    input_attestations: list[ResourceDescriptor] = []
    verification_result: Literal["PASSED", "FAILED"]
    verified_levels: list[str]
    dependency_levels: dict[str, int] | None = None
    slsa_version: str | None = None
    secmlops: GateVerdict


__all__ = [
    "VERIFIER_ID",
    "ApprovalPredicate",
    "DataPullPredicate",
    "ModelScanPredicate",
    "ProvenancePredicate",
    "ReleasePredicate",
    "ResourceDescriptor",
    "RunRecord",
    "RunSources",
    "SmokeTestPredicate",
    "TestResultPredicate",
    "VsaPredicate",
    "VulnsPredicate",
    "dump_predicate",
]
