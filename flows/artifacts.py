"""Prefect artifacts that make a run readable in the UI: what ran, what the gates checked,
and what an approver is asked to approve.

* ``secmlops-run-summary`` (markdown): the stage table of a pipeline run (stage, result,
  time, detail) with a link to each evidence file, and the model, version and registry.
  Published at the end of every run, a failed one included.
* ``secmlops-gate-checks`` (table): the deploy gate's checks (stage, check, passed, detail)
  of every deploy in the run, refused ones included.
* ``secmlops-approval-<stage>`` (markdown): what is put to the approver of a stage, next to
  what the stage serves now.

Evidence links are ``file://`` URIs for a local registry and ``s3://`` URIs for S3.

Example::

    publish_run_summary(summary)                      # in the flow's ``finally:``
    publish_approval_summary(models, "staging", approval_context, keys=keys)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.summary import RunSummary
from secmlops.catalogue import control
from secmlops.controls.data import DatasetPull
from secmlops.controls.image_scan import ImageScanResult, ScanVerdict
from secmlops.controls.model_scan import ModelScanResult
from secmlops.controls.signing import ModelSignature
from secmlops.controls.training import TrainingResult, evaluate_gate
from secmlops.controls.validation import ValidationResult
from secmlops.errors import SecMLOpsError
from secmlops.evidence.keys import KeyDirectory
from secmlops.evidence.predicates import ReleasePredicate
from secmlops.evidence.statements import verify_bundle
from secmlops.gate import GateReport
from secmlops.registry.models import ModelRegistry
from secmlops.release import Registration

RUN_SUMMARY_KEY = "secmlops-run-summary"
#: What an empty table cell shows.
NONE = "-"
GATE_CHECKS_KEY = "secmlops-gate-checks"
APPROVAL_KEY = "secmlops-approval-{stage}"


# --- links and cells -----------------------------------------------------------------------


def evidence_uri(location: str) -> str:
    """A clickable URI for an evidence location (``s3://`` kept, a local path as ``file://``)."""
    if "://" in location:
        return location
    return Path(location).as_uri()


def _link(location: str) -> str:
    name = location.rstrip("/").rsplit("/", 1)[-1] or location
    return f"[{_cell(name)}]({evidence_uri(location)})"


def _cell(text: object) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


# --- the run summary and the gate checks ---------------------------------------------------


def run_summary_markdown(summary: RunSummary) -> str:
    """The run's stage table with evidence links, and the model, version and registry."""
    failed = [s for s in summary.stages if s.status not in ("passed", "running")]
    outcome = f"**{failed[0].status}** at `{failed[0].name}`" if failed else "**passed**"
    lines = [
        f"## SecMLOps pipeline: {summary.model} {summary.version or '(no version registered)'}",
        "",
        f"Result: {outcome}",
        "",
        "| | |",
        "|---|---|",
        f"| Model | `{_cell(summary.model)}` |",
        f"| Version | `{_cell(summary.version or 'none')}` |",
        f"| Registry | [{_cell(summary.registry)}]({evidence_uri(summary.registry)}) |",
        "",
        "| stage | result | time | detail | evidence |",
        "|---|---|---:|---|---|",
    ]
    for s in summary.stages:
        evidence = "<br>".join(_link(e) for e in s.evidence) or NONE
        lines.append(
            f"| {_cell(s.name)} | {_cell(s.status)} | {s.seconds:.2f} s | {_cell(s.detail)} "
            f"| {evidence} |"
        )
    return "\n".join(lines) + "\n"


def gate_check_rows(reports: Iterable[GateReport]) -> list[dict[str, Any]]:
    """One row per deploy gate check: stage, check, passed, detail."""
    return [
        {"stage": r.stage, "check": c.name, "passed": c.passed, "detail": c.detail}
        for r in reports
        for c in r.checks
    ]


def publish_gate_checks(reports: Iterable[GateReport]) -> None:
    """Publish the ``secmlops-gate-checks`` table of ``reports`` for the current run."""
    reports = list(reports)
    described = ", ".join(
        f"{r.model} {r.version} for {r.stage}: {'passed' if r.passed else 'REFUSED'}"
        for r in reports
    )
    create_table_artifact(
        gate_check_rows(reports),
        key=GATE_CHECKS_KEY,
        description=f"Deploy gate checks ({described or 'no deploy gate ran'})",
    )


def publish_run_summary(summary: RunSummary) -> None:
    """Publish the run summary and the gate checks of ``summary`` (best effort: a failure
    to publish is logged as a warning and never hides how the run itself ended)."""
    try:
        create_markdown_artifact(
            run_summary_markdown(summary),
            key=RUN_SUMMARY_KEY,
            description=f"SecMLOps pipeline run: {summary.model} {summary.version}".strip(),
        )
        publish_gate_checks(summary.gate_reports())
    except Exception as exc:
        get_run_logger().warning("could not publish the run summary artifacts: %s", exc)


# --- the approval summary ------------------------------------------------------------------


@dataclass(frozen=True)
class ApprovalContext:
    """What the pipeline knows, in memory, about the version an approver is asked about."""

    dataset: DatasetPull
    validation: ValidationResult
    image_scan: ImageScanResult
    scan_verdict: ScanVerdict
    model_scan: ModelScanResult
    training: TrainingResult
    signature: ModelSignature
    registration: Registration


@dataclass(frozen=True)
class _Serving:
    """What a stage serves now: its version and that version's release metrics."""

    version: str | None
    metrics: Mapping[str, Any]
    problem: str = ""


def _serving_now(models: ModelRegistry, stage: str, keys: KeyDirectory) -> _Serving:
    """Read ``stage``'s pointer and the verified release manifest of the version it names."""
    try:
        pointer, _ = models.read_pointer(stage)
        if pointer is None:
            return _Serving(None, {})
        key = f"{models.evidence_prefix(pointer.version)}/release.json"
        where = models.store.describe(key)
        statement = verify_bundle(models.read_json(key), keys.trusted("attestor"), where=where)
        manifest: ReleasePredicate = control("release").parse(statement, where).predicate
        return _Serving(pointer.version, manifest.metrics)
    except SecMLOpsError as exc:
        return _Serving(None, {}, problem=str(exc))


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: Any) -> str:
    if not _is_number(value):
        return NONE if value is None else _cell(value)
    return f"{value:.4f}"


def _metrics_table(training: TrainingResult, serving: _Serving, stage: str) -> list[str]:
    checks = {c.metric: c for c in evaluate_gate(training.metrics, training.params)}
    names = sorted(
        set(checks)
        | {k for k, v in training.metrics.items() if isinstance(v, int | float)}
        | {k for k, v in serving.metrics.items() if isinstance(v, int | float)}
    )
    now = f"{stage} now ({serving.version})" if serving.version else f"{stage} now"
    lines = [f"| metric | this version | threshold | {now} | change |", "|---|---:|---|---:|---:|"]
    for name in names:
        value, current = training.metrics.get(name), serving.metrics.get(name)
        check = checks.get(name)
        threshold = NONE
        if check is not None:
            threshold = f"{check.threshold} {check.limit:g} {'✅' if check.passed else '❌'}"
        change = NONE
        if _is_number(value) and _is_number(current):
            change = f"{value - current:+.4f}"
        lines.append(
            f"| {_cell(name)} | {_number(value)} | {threshold} | {_number(current)} | {change} |"
        )
    return lines


def approval_summary_markdown(
    models: ModelRegistry, stage: str, context: ApprovalContext, *, keys: KeyDirectory
) -> str:
    """What an approver of ``stage`` decides on, next to what the stage serves now."""
    reg, pulled, valid = context.registration, context.dataset, context.validation
    verdict, scan, model_scan = context.scan_verdict, context.image_scan, context.model_scan
    serving = _serving_now(models, stage, keys)
    if serving.version:
        serves = f"{serving.version}"
    elif serving.problem:
        serves = f"could not be read: {_cell(serving.problem)}"
    else:
        serves = "none deployed"
    counts = ", ".join(f"{s} {n}" for s, n in verdict.counts.items() if n) or "no findings"
    scan_result = "passed" if verdict.passed else "REFUSED"
    if verdict.report_only:
        scan_result += " (REPORT-ONLY policy)"
    if model_scan.passed:
        model_scan_text = f"passed: {len(model_scan.files)} files clean"
    else:
        model_scan_text = "REFUSED: " + ", ".join(f.path for f in model_scan.refused)
    lines = [
        f"## Approve {models.model} {reg.version} for **{stage}**?",
        "",
        "| | |",
        "|---|---|",
        f"| Model | `{_cell(models.model)}` version `{_cell(reg.version)}` |",
        f"| Model sha256 | `{reg.model_digest}` |",
        f"| Signed by | key id `{_cell(context.signature.key_id)}` |",
        f"| Data source | repo `{_cell(pulled.repo)}`, path `{_cell(pulled.path)}`, "
        f"rev `{_cell(pulled.rev)}` |",
        f"| Resolved commit | `{_cell(pulled.commit)}` (dataset sha256 `{pulled.sha256}`) |",
        f"| Validation | {'passed' if valid.passed else 'FAILED'}: {valid.rows} rows, schema "
        f"`{_cell(valid.schema_name)}` (sha256 `{valid.schema_digest[:12]}…`, "
        f"{valid.checks_run} checks) |",
        f"| Image scan | {scan_result}: {len(verdict.blocking)} blocking, "
        f"{len(verdict.allowed)} allowed ({_cell(counts)}); image `{_cell(scan.target)}`, "
        f"Trivy DB {_cell(scan.db.source)} |",
        f"| Model scan | {_cell(model_scan_text)} |",
        f"| {stage} serves now | {serves} |",
        "",
    ]
    if verdict.blocking:
        lines += ["**Blocking findings**", ""]
        lines += [
            f"- `{_cell(f.id)}` {_cell(f.package)} {_cell(f.installed)} ({f.severity}); "
            f"fixed in {_cell(f.fixed or 'no release yet')}"
            for f in verdict.blocking
        ]
        lines.append("")
    lines += ["#### Metrics", "", *_metrics_table(context.training, serving, stage), ""]
    release = models.store.describe(reg.release_key)
    everything = models.store.describe(models.evidence_prefix(reg.version))
    lines += [
        "#### Evidence",
        "",
        f"- release manifest: {_link(release)}",
        *(f"- {name}: {_link(models.store.describe(key))}" for name, key in reg.evidence.items()),
        f"- all evidence of this version: {_link(everything)}",
    ]
    return "\n".join(lines) + "\n"


def publish_approval_summary(
    models: ModelRegistry, stage: str, context: ApprovalContext, *, keys: KeyDirectory
) -> str:
    """Publish ``secmlops-approval-<stage>``: what the approver of ``stage`` is asked about.

    Returns the markdown, which the approval pause also shows in its Resume form.
    """
    markdown = approval_summary_markdown(models, stage, context, keys=keys)
    create_markdown_artifact(
        markdown,
        key=APPROVAL_KEY.format(stage=stage),
        description=f"Approve {models.model} {context.registration.version} for {stage}?",
    )
    return markdown
