"""Human-readable (and JSON) report of a model version's evidence, judged by the deploy gate.

The verdict is the gate's own (:func:`secmlops.gate.verify_release`, one verifier for every
reader): for each stage whose pointer names the version, the full gate for that stage; for a
version in no stage, the gate's build-evidence checks (release manifest, model signature and
bytes, every build control, revocation). ``all_verified`` is true only when those checks pass
and every bundle listed verifies (approvals only with a key the policy lists for the stage).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from secmlops.catalogue import (
    ATTESTOR_SIGNER,
    Control,
    Evidence,
    build_controls,
    control_for_evidence,
    evidence_order,
)
from secmlops.errors import ControlRefused, RefusalReason, SecMLOpsError
from secmlops.evidence.keys import KeyDirectory
from secmlops.evidence.predicates import ApprovalPredicate
from secmlops.evidence.statements import (
    TrustedKeys,
    VerifiedStatement,
    verify_bundle,
)
from secmlops.gate import GateCheck, GatePolicy, GateReport, verify_pointer_vsa, verify_release
from secmlops.registry.models import ModelRegistry
from secmlops.registry.pointers import SeenPointers

#: The gate checks about the build itself: what ``evidence`` judges a version in no stage by.
BUILD_CHECKS: tuple[str, ...] = (
    "release",
    "model-signature",
    *(c.name for c in build_controls()),
    "image-signature",
    "revocation",
)


class EvidenceReportRefusal(RefusalReason):
    """Why the evidence report does not count a bundle as verified (``ControlRefused.reason``).

    A bundle whose signature fails carries :class:`~secmlops.evidence.statements.EvidenceRefusal`
    instead; a predicate that does not match the catalogue, a ``GateRefusal``.
    """

    UNKNOWN_EVIDENCE = "unknown_evidence"
    """The file name is not evidence the catalogue knows."""
    WRONG_SIGNER = "wrong_signer"
    """Signed by a trusted key, but not the role the catalogue names for this evidence."""
    NOT_ABOUT_THIS_VERSION = "not_about_this_version"
    """The predicate names another model or version (copied evidence?)."""
    NOT_ALL_VERIFIED = "not_all_verified"
    """At least one bundle of the version does not verify (or there are none)."""
    APPROVER_NOT_IN_POLICY = "approver_not_in_policy"
    """An approval signed by a key the policy does not list as an approver for its stage."""


@dataclass
class EvidenceItem:
    name: str
    key: str
    verified: bool
    signer: str = ""
    predicate_type: str = ""
    subjects: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    #: The refusal's reason value when the bundle does not verify ("" if none was given).
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _approval_stage(name: str) -> str | None:
    for stage in ("staging", "production"):
        if name.startswith(f"approval-{stage}-"):
            return stage
    return None


def _approval_trusted(keys: KeyDirectory, policy: GatePolicy, stage: str) -> TrustedKeys:
    """What the gate trusts for a ``stage`` approval: the approvers the policy lists for it
    and the attestor (auto/anonymous UI decisions; the catalogue judges whether they count)."""
    trusted = TrustedKeys()
    trusted.extend(keys.trusted("attestor"), name=ATTESTOR_SIGNER)
    trusted.extend(keys.trusted_approvers(policy.approval.allowed(stage)))
    return trusted


def gate_report_json(report: GateReport, checks: list[GateCheck] | None = None) -> dict[str, Any]:
    """A :class:`GateReport` as JSON (what ``evidence --json`` and ``fetch --json`` carry):
    ``checks`` restricts it to some of its checks (default all)."""
    checks = report.checks if checks is None else checks
    return {
        "model": report.model,
        "version": report.version,
        "stage": report.stage,
        "passed": bool(checks) and all(c.passed for c in checks),
        "modelDigest": report.model_digest,
        "datasetDigest": report.dataset_digest,
        "imageDigest": report.image_digest,
        "releaseSha256": report.release_sha256,
        "approvals": [{"approver": a, "method": m} for a, m in report.approvals],
        "checks": [c.to_json() for c in checks],
        "failed": [c.name for c in checks if not c.passed],
    }


def gate_verdict(
    models: ModelRegistry,
    version: str,
    stage: str | None,
    *,
    keys: KeyDirectory,
    policy: GatePolicy,
) -> dict[str, Any]:
    """Run the deploy gate on ``version`` for ``stage`` (``None``: a version in no stage,
    judged by the gate's :data:`BUILD_CHECKS` only, run as for staging)."""
    try:
        report = verify_release(models, version, stage or "staging", keys=keys, policy=policy)
    except ControlRefused as exc:
        if not isinstance(exc.result, GateReport):
            raise
        report = exc.result
    checks = report.checks if stage else [c for c in report.checks if c.name in BUILD_CHECKS]
    out = gate_report_json(report, checks)
    out["scope"] = stage or "build"
    return out


def _rank(name: str) -> tuple[int, str]:
    order = evidence_order()
    for i, prefix in enumerate(order):
        if name == prefix or name.startswith(prefix + "-"):
            return i, name
    return len(order), name


def _typed(
    st: VerifiedStatement, name: str, model: str, version: str, key: str
) -> tuple[Control[Any], Evidence[Any]]:
    """The statement as its catalogue control's evidence, if it is what its name says.

    A valid signature is not enough: the file must be evidence the catalogue knows, with
    that control's predicate type and model, signed by that control's role, and about this
    model and version (evidence copied from elsewhere is flagged).
    """
    entry = control_for_evidence(name)
    if entry is None:
        raise ControlRefused(
            f"{name} is not evidence the catalogue knows",
            where=key,
            reason=EvidenceReportRefusal.UNKNOWN_EVIDENCE,
        )
    ev = entry.parse(st, key)
    if entry.signer == "approver":
        # The pipeline (attestor) signs only decisions no person's key made: a dev policy's
        # auto-approval and an anonymous decision from the Prefect UI form.
        auto = (
            isinstance(ev.predicate, ApprovalPredicate)
            and st.signer == "attestor"
            and ev.predicate.method in ("unsafe-auto-approval", "prefect-ui")
        )
        if not (st.signer.startswith("approver:") or auto):
            raise ControlRefused(
                f"approval signed by {st.signer}, not by an approver",
                where=key,
                reason=EvidenceReportRefusal.WRONG_SIGNER,
            )
    elif st.signer != entry.signer:
        raise ControlRefused(
            f"{entry.name} signed by {st.signer}, not by the {entry.signer}",
            where=key,
            reason=EvidenceReportRefusal.WRONG_SIGNER,
        )
    claims = entry.claims(ev.predicate)
    for field_name, expected in (("model", model), ("version", version)):
        if field_name in claims and claims[field_name] != expected:
            raise ControlRefused(
                f"is about {field_name} {claims[field_name]!r}, not {expected!r} (copied?)",
                where=key,
                reason=EvidenceReportRefusal.NOT_ABOUT_THIS_VERSION,
            )
    return entry, ev


def evidence_report(
    models: ModelRegistry,
    version: str,
    keys: KeyDirectory,
    *,
    policy: GatePolicy | None = None,
    seen: SeenPointers | None = None,
) -> dict[str, Any]:
    """Run the deploy gate on ``version`` (for each stage whose pointer names it, else its
    build checks) under ``policy`` (default the signed policy in force) and list every
    evidence bundle, each re-verified; note which stages serve it."""
    from secmlops.policy import load_gate_policy

    policy = policy or load_gate_policy()
    models.require_version(version)
    trusted = keys.trusted_all()  # every key of the trust root, with its window
    items: list[EvidenceItem] = []
    for key in sorted(
        models.evidence_keys(version),
        key=lambda k: _rank(k.rsplit("/", 1)[-1].removesuffix(".json")),
    ):
        name = key.rsplit("/", 1)[-1].removesuffix(".json")
        try:
            approval_stage = _approval_stage(name)
            if approval_stage is None:
                st = verify_bundle(models.read_json(key), trusted, where=key)
            else:
                st = _verify_approval(models, key, keys, trusted, policy, approval_stage)
            entry, ev = _typed(st, name, models.model, version, key)
        except SecMLOpsError as exc:
            items.append(
                EvidenceItem(
                    name=name,
                    key=models.store.describe(key),
                    verified=False,
                    error=str(exc),
                    reason=exc.reason.value if exc.reason is not None else "",
                )
            )
            continue
        items.append(
            EvidenceItem(
                name=name,
                key=models.store.describe(key),
                verified=True,
                signer=st.signer,
                predicate_type=st.predicate_type,
                subjects=[
                    f"{s['name']}@sha256:{s['digest']['sha256']}" for s in st.statement["subject"]
                ],
                facts=entry.facts(ev.predicate),
            )
        )
    stages = {}
    for stage in ("staging", "production"):
        pointer, _ = models.read_pointer(stage)
        if pointer is not None:
            try:
                verify_pointer_vsa(models, stage, pointer, keys, seen=seen)
                vsa_problem = ""
            except SecMLOpsError as exc:
                vsa_problem = str(exc)
            stages[stage] = {
                "version": pointer.version,
                "serves_this_version": pointer.version == version and not vsa_problem,
                "promotedAt": pointer.promoted_at,
                "vsa": pointer.vsa,
                "vsa_verified": not vsa_problem,
                "problem": vsa_problem,
            }
    in_stages = [stage for stage, info in stages.items() if info["version"] == version]
    gate = {
        scope: gate_verdict(
            models, version, None if scope == "build" else scope, keys=keys, policy=policy
        )
        for scope in (in_stages or ["build"])
    }
    return {
        "model": models.model,
        "version": version,
        "location": models.store.describe(models.version_prefix(version)),
        "all_verified": bool(items)
        and all(i.verified for i in items)
        and all(g["passed"] for g in gate.values()),
        "policy": policy.digest,
        "gate": gate,
        "evidence": [i.to_json() for i in items],
        "stages": stages,
    }


def _verify_approval(
    models: ModelRegistry,
    key: str,
    keys: KeyDirectory,
    trusted: TrustedKeys,
    policy: GatePolicy,
    stage: str,
) -> VerifiedStatement:
    """An approval bundle verified as the gate trusts it: by a key the policy lists for
    ``stage`` (or the attestor); one signed by any other key of ``trusted`` (every key of
    the trust root, read once per report) is refused."""
    bundle = models.read_json(key)
    try:
        verify_bundle(bundle, _approval_trusted(keys, policy, stage), where=key)
        # Verified as the gate trusts it; named as every other bundle (``approver:NAME``).
        return verify_bundle(bundle, trusted, where=key)
    except ControlRefused:
        try:
            other = verify_bundle(bundle, trusted, where=key)
        except ControlRefused:
            other = None
        if other is None:
            raise
        listed = ", ".join(policy.approval.allowed(stage)) or "none"
        raise ControlRefused(
            f"approval signed by {other.signer}, which the policy does not list as an "
            f"approver for {stage} (listed: {listed})",
            where=key,
            reason=EvidenceReportRefusal.APPROVER_NOT_IN_POLICY,
        ) from None


def require_all_verified(report: dict[str, Any]) -> None:
    """Enforce an :func:`evidence_report`: ``ControlRefused`` unless every bundle verified."""
    if report["all_verified"]:
        return
    from secmlops.catalogue import GateRefusal

    failed = [item["name"] for item in report["evidence"] if not item["verified"]]
    gate_failed = [
        (scope, check)
        for scope, verdict in report.get("gate", {}).items()
        for check in verdict["checks"]
        if not check["passed"]
    ]
    reason: RefusalReason = EvidenceReportRefusal.NOT_ALL_VERIFIED
    if gate_failed and gate_failed[0][1].get("reason"):
        reason = GateRefusal(gate_failed[0][1]["reason"])
    what = [f"gate ({scope}) {c['name']}" for scope, c in gate_failed] + failed
    raise ControlRefused(
        f"evidence of {report['model']} {report['version']} does not verify: " + ", ".join(what),
        where=report["location"],
        details={"not_verified": failed, "gate_failed": [c["name"] for _, c in gate_failed]},
        reason=reason,
        result=report,
    )


def render_report(report: dict[str, Any]) -> str:
    lines = [f"Evidence for {report['model']} {report['version']}  ({report['location']})"]
    for stage, info in report["stages"].items():
        mark = "<- this version" if info["serves_this_version"] else ""
        if not info["vsa_verified"]:
            mark = f"(POINTER NOT VOUCHED FOR: {info['problem']})"
        lines.append(f"  stage {stage:<10} serves {info['version']} {mark}")
    lines.append("")
    for scope, verdict in report["gate"].items():
        title = "build checks" if scope == "build" else f"gate for {scope}"
        lines.append(f"Deploy {title}: {'PASSED' if verdict['passed'] else 'REFUSED'}")
        for check in verdict["checks"]:
            mark = "ok  " if check["passed"] else "FAIL"
            lines.append(f"  {mark} {check['name']}: {check['detail']}")
    lines.append("")
    for item in report["evidence"]:
        status = (
            f"verified, signed by {item['signer']}"
            if item["verified"]
            else f"NOT VERIFIED: {item['error']}"
        )
        lines.append(f"- {item['name']}: {status}")
        if item["verified"]:
            lines.append(f"    predicate {item['predicate_type']}")
            for s in item["subjects"][:3]:
                lines.append(f"    subject   {s}")
            for k, v in item["facts"].items():
                if v is not None:
                    lines.append(f"    {k:<9} {v}")
    lines.append("")
    lines.append(
        "all evidence verified" if report["all_verified"] else "SOME EVIDENCE DID NOT VERIFY"
    )
    return "\n".join(lines)
