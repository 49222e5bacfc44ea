"""The approval step: publish what is being approved, pause the run, verify every decision.

Before a gated stage the flow publishes the approval summary (a markdown artifact) and the
approval request (a flow run input other tools read), then pauses for an ``ApprovalInput``
(as Prefect's ``pause_flow_run(wait_for_input=...)`` does). The UI shows the Resume form; a
signed decision comes from ``secmlops approve FLOW_RUN_ID --approve --key KEY``, which fills
the same form through the API. Every decision is verified by the library
(:mod:`secmlops.controls.approval_decisions`): a bad signature, an approver the policy does
not allow, a duplicate or garbage is audited and ignored, and the run pauses again until a
valid decision arrives or the policy's timeout ends the run as refused. A rejection ends the
run without deploying; its message names who rejected and why.

Example::

    decisions = await_approval(models, "v3", "staging", keys=keys, policy=policy,
                               requested_by="alice")
"""

from __future__ import annotations

import getpass
import inspect
import json
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from prefect import get_run_logger
from prefect.input import RunInput
from prefect.input.actions import create_flow_run_input, read_flow_run_input
from pydantic import Field

from secmlops.controls.approval import ApprovalDecision, ApprovalRefusal, ApprovalRequest
from secmlops.controls.approval_decisions import (
    anonymous_ui_decision,
    approval_request,
    approvals_needed,
    audit_ignored_decision,
    store_decision,
    verify_decision,
)
from secmlops.errors import ControlRefused
from secmlops.evidence.keys import KeyDirectory
from secmlops.gate import GatePolicy
from secmlops.registry.models import ModelRegistry
from secmlops.remote_approval import OUTCOME_KEY, REQUEST_KEY, pause_key

#: How often a paused run checks whether it was resumed: soon at first (a decision made up
#: front answers within a second), then backing off to Prefect's usual pace.
POLL_MIN_SECONDS = 0.2
POLL_MAX_SECONDS = 5.0
MAX_SIGNED_DECISION_CHARS = 256 * 1024
#: How much longer the server keeps a pause open than the run waits (see pause_for_input).
PAUSE_GRACE_SECONDS = 300


class ApprovalInput(RunInput):
    """The Resume form of a paused run: a decision on deploying one model version."""

    decision: Literal["approve", "reject"] = Field(
        description="Approve or reject deploying this model version to the stage."
    )
    reason: str = Field(
        default="",
        max_length=2000,
        description="Why (recorded in the signed evidence and the audit log).",
    )
    signed_decision: str = Field(
        default="",
        max_length=MAX_SIGNED_DECISION_CHARS,
        description="Leave empty in the UI. `secmlops approve` puts a decision signed with "
        "the approver's key here; the policy says which stages need one.",
    )


@dataclass(frozen=True)
class Approvals:
    """The valid approvals a stage received, and where each is stored as evidence."""

    decisions: list[ApprovalDecision]
    evidence_keys: list[str]


def requested_by() -> str:
    """Who started this run, where that is known: the OS user of an in-process run.

    A run started from a deployment (UI or API) has no known person in Prefect's open-source
    server, so it is recorded as unknown ("") and separation of duties cannot use it.
    """
    from prefect.runtime import deployment

    return "" if deployment.id else getpass.getuser()


def await_approval(
    models: ModelRegistry,
    version: str,
    stage: str,
    *,
    keys: KeyDirectory,
    policy: GatePolicy,
    requested_by: str,
    summary: str = "",
) -> Approvals:
    """Pause until the policy's number of valid approvals for ``stage`` arrived.

    Returns the counted decisions (each stored as signed evidence). Raises
    ``ControlRefused`` when someone rejects (reason ``REJECTED``) or no valid decision
    arrives within ``policy.approval.timeout_seconds`` (reason ``TIMED_OUT``).
    """
    logger = get_run_logger()
    request = approval_request(models, version, stage, keys=keys, requested_by=requested_by)
    _publish_request(request)
    _notify(policy.approval.notify_block, request)
    needed = approvals_needed(policy, request.stage)
    timeout = policy.approval.timeout_seconds
    deadline = time.monotonic() + timeout
    counted: list[ApprovalDecision] = []
    stored: list[str] = []
    attempt = 0
    while len(counted) < needed:
        remaining = int(deadline - time.monotonic())
        if remaining <= 0:
            raise _timed_out(request, timeout, counted, needed)
        attempt += 1
        logger.info(
            "waiting for approval of %s %s for %s (%d of %d so far; %d s left): approve in the "
            "UI's Resume form or with `secmlops approve <this flow run id> --approve --key KEY`",
            request.model,
            request.version,
            stage,
            len(counted),
            needed,
            remaining,
        )
        form = ApprovalInput.with_initial_data(
            description=_form_description(request, summary, counted, needed), decision="approve"
        )
        received = pause_for_input(form, key=pause_key(stage, attempt), seconds=remaining)
        if received is None:
            raise _timed_out(request, timeout, counted, needed)
        try:
            bundle, decision = _verified(
                received, request, keys=keys, policy=policy, counted=counted
            )
        except ControlRefused as exc:
            audit_ignored_decision(models, request, exc, audit_signer=keys.signer("attestor"))
            _publish_outcome(
                pause_key(stage, attempt),
                accepted=False,
                detail=f"{exc.message} (reason: {exc.reason.value if exc.reason else 'none'})",
            )
            logger.warning("ignored a decision for %s: %s", stage, exc.diagnostics())
            continue
        evidence_key = store_decision(
            models, request, bundle, decision, audit_signer=keys.signer("attestor")
        )
        verb = "approved" if decision.approved else "rejected"
        _publish_outcome(
            pause_key(stage, attempt),
            accepted=True,
            detail=f"{decision.approver} {verb} {request.version} for {stage} ({decision.method})",
        )
        if not decision.approved:
            raise ControlRefused(
                f"{request.model} {request.version} was rejected for {stage} by "
                f"{decision.approver}: {decision.comment or 'no reason given'}",
                where=f"approval:{stage}",
                fix="address the reason and run the pipeline again",
                reason=ApprovalRefusal.REJECTED,
                result=decision,
            )
        counted.append(decision)
        stored.append(evidence_key)
        logger.info(
            "%s approved %s for %s (%s)", decision.approver, version, stage, decision.method
        )
    return Approvals(decisions=counted, evidence_keys=stored)


def pause_for_input(form: type[ApprovalInput], *, key: str, seconds: int) -> ApprovalInput | None:
    """Pause this run until its Resume form is submitted, or ``seconds`` pass (``None``).

    What ``pause_flow_run(wait_for_input=...)`` does, with one difference: the server keeps
    the pause open a grace period longer than this run waits. With equal limits the server
    expires the pause first and overrides the run's own ending with "never resumed", so a
    timed-out approval could not end as the refusal it is.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import State
    from prefect.context import FlowRunContext
    from prefect.input.run_input import keyset_from_paused_state
    from prefect.states import Paused
    from prefect.utilities.engine import propose_state_sync

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise RuntimeError("an approval pause needs a flow run")
    run_id = context.flow_run.id
    proposed: State[Any] = Paused(
        timeout_seconds=seconds + PAUSE_GRACE_SECONDS, reschedule=False, pause_key=key
    )
    keyset = keyset_from_paused_state(proposed)
    proposed.state_details.run_input_keyset = {str(k): v for k, v in keyset.items()}
    with get_client(sync_client=True) as client:
        state = propose_state_sync(client=client, state=proposed, flow_run_id=run_id)
        if state.is_running():  # this pause was resumed already (a retried run)
            return _loaded(form, keyset)
        if not state.is_paused():
            raise RuntimeError(f"the run could not pause for approval: {state}")
        form.save(keyset)
        get_run_logger().info("paused for approval (%s); resume it to decide", key)
        deadline = time.monotonic() + seconds
        poll = POLL_MIN_SECONDS
        while time.monotonic() < deadline:
            time.sleep(poll)
            poll = min(poll * 1.5, POLL_MAX_SECONDS)
            run = client.read_flow_run(run_id)
            if run.state is not None and run.state.is_running():
                return _loaded(form, keyset)
    return None


def _loaded(form: type[ApprovalInput], keyset: Any) -> ApprovalInput:
    """The submitted form (``RunInput.load`` answers sync here; it is async-dispatched)."""
    loaded = form.load(keyset)
    if inspect.isawaitable(loaded):
        from prefect.utilities.asyncutils import run_coro_as_sync

        loaded = run_coro_as_sync(loaded)
    if not isinstance(loaded, ApprovalInput):
        raise RuntimeError(f"the Resume form held {type(loaded).__name__}, not an approval")
    return loaded


def _verified(
    received: object,
    request: ApprovalRequest,
    *,
    keys: KeyDirectory,
    policy: GatePolicy,
    counted: list[ApprovalDecision],
) -> tuple[dict[str, object], ApprovalDecision]:
    """The signed bundle and decision a received form stands for, or ``ControlRefused``."""
    if not isinstance(received, ApprovalInput):
        raise ControlRefused(
            "the decision is not an approval form",
            where=f"approval:{request.stage}",
            reason=ApprovalRefusal.MALFORMED_DECISION,
        )
    signed = received.signed_decision.strip()
    if not signed:
        return anonymous_ui_decision(
            request,
            approve=received.decision == "approve",
            reason=received.reason,
            keys=keys,
            policy=policy,
            counted=counted,
        )
    try:
        bundle = json.loads(signed)
    except ValueError as exc:
        raise ControlRefused(
            f"the signed decision is not JSON: {exc}",
            where=f"approval:{request.stage}",
            reason=ApprovalRefusal.MALFORMED_DECISION,
        ) from exc
    decision = verify_decision(bundle, request, keys=keys, policy=policy, counted=counted)
    return bundle, decision


def _timed_out(
    request: ApprovalRequest, timeout: int, counted: list[ApprovalDecision], needed: int
) -> ControlRefused:
    return ControlRefused(
        f"no valid approval of {request.model} {request.version} for {request.stage} within "
        f"{timeout} s ({len(counted)} of {needed} received)",
        where=f"approval:{request.stage}",
        fix="run the pipeline again and approve in time (policy approval.timeout_seconds)",
        reason=ApprovalRefusal.TIMED_OUT,
        result=counted,
    )


def _publish_request(request: ApprovalRequest) -> None:
    """Publish the request so `secmlops approve` signs exactly what this run waits for."""
    key = REQUEST_KEY.format(stage=request.stage)
    if read_flow_run_input(key) is None:  # one request per stage and run
        create_flow_run_input(key, value=asdict(request))


def _notify(block_ref: str | None, request: ApprovalRequest) -> None:
    """Tell the site's notification block that this run waits, with a link to it.

    Best effort: a notification that cannot be sent is logged (the run waits regardless,
    and nothing is approved by it)."""
    if not block_ref:
        return
    from prefect.blocks.abstract import NotificationBlock
    from prefect.blocks.core import Block
    from prefect.context import FlowRunContext
    from prefect.utilities.asyncutils import run_coro_as_sync
    from prefect.utilities.urls import url_for

    logger = get_run_logger()
    ctx = FlowRunContext.get()
    run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else "unknown"
    link = url_for("flow-run", obj_id=run_id, default_base_url="http://127.0.0.1:4200") or run_id
    try:
        block = Block.load(block_ref)
        if not isinstance(block, NotificationBlock):
            raise TypeError(f"{type(block).__name__} is not a notification block")
        sent = block.notify(
            body=(
                f"{request.model} {request.version} waits for approval for {request.stage}: "
                f"{link} (or `secmlops approve {run_id} --approve --key KEY`)"
            ),
            subject=f"Approval needed: {request.model} {request.version} -> {request.stage}",
        )
        if inspect.isawaitable(sent):  # Prefect dispatches sync or async by context
            run_coro_as_sync(sent)
    except Exception as exc:
        logger.warning("could not send the approval notification through %s: %s", block_ref, exc)


def _publish_outcome(pause: str, *, accepted: bool, detail: str) -> None:
    """Tell `secmlops approve` whether the decision given to ``pause`` counted, and why."""
    create_flow_run_input(
        OUTCOME_KEY.format(pause=pause), value={"accepted": accepted, "detail": detail}
    )


def _form_description(
    request: ApprovalRequest, summary: str, counted: list[ApprovalDecision], needed: int
) -> str:
    got = ", ".join(f"{d.approver} ({d.method})" for d in counted) or "none yet"
    heading = summary or (
        f"### Approve {request.model} {request.version} for **{request.stage}**?\n\n"
        f"Model sha256 `{request.model_digest}`, release manifest sha256 "
        f"`{request.release_sha256}`."
    )
    return (
        f"**Approvals so far: {len(counted)} of {needed}** ({got}).\n\n"
        f"{heading}\n\n"
        "A decision from this form is anonymous; where the policy needs a signed one, run "
        "`secmlops approve <flow run id> --approve --reason TEXT --key APPROVER_KEY`."
    )
