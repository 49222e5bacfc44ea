"""Human-readable (and JSON) report of a model version's evidence, every bundle re-verified."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from secmlops.catalogue import Control, Evidence, control_for_evidence, evidence_order
from secmlops.errors import ControlRefused, RefusalReason, SecMLOpsError
from secmlops.evidence.keys import KeyDirectory
from secmlops.evidence.predicates import ApprovalPredicate
from secmlops.evidence.statements import (
    TrustedKeys,
    VerifiedStatement,
    verify_bundle,
)
from secmlops.gate import verify_pointer_vsa
from secmlops.registry.models import ModelRegistry


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


def _all_trusted(keys: KeyDirectory) -> TrustedKeys:
    """Every key the trust root lists (roles and approvers, rotated ones with their windows)."""
    return keys.trusted_all()


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


def evidence_report(models: ModelRegistry, version: str, keys: KeyDirectory) -> dict[str, Any]:
    """Collect and verify every evidence bundle of ``version``; note which stages serve it."""
    models.require_version(version)
    trusted = _all_trusted(keys)
    items: list[EvidenceItem] = []
    for key in sorted(
        models.evidence_keys(version),
        key=lambda k: _rank(k.rsplit("/", 1)[-1].removesuffix(".json")),
    ):
        name = key.rsplit("/", 1)[-1].removesuffix(".json")
        try:
            st = verify_bundle(models.read_json(key), trusted, where=key)
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
                verify_pointer_vsa(models, stage, pointer, keys)
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
    return {
        "model": models.model,
        "version": version,
        "location": models.store.describe(models.version_prefix(version)),
        "all_verified": bool(items) and all(i.verified for i in items),
        "evidence": [i.to_json() for i in items],
        "stages": stages,
    }


def require_all_verified(report: dict[str, Any]) -> None:
    """Enforce an :func:`evidence_report`: ``ControlRefused`` unless every bundle verified."""
    if report["all_verified"]:
        return
    failed = [item["name"] for item in report["evidence"] if not item["verified"]]
    raise ControlRefused(
        f"evidence of {report['model']} {report['version']} does not all verify",
        where=report["location"],
        details={"not_verified": failed},
        reason=EvidenceReportRefusal.NOT_ALL_VERIFIED,
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
