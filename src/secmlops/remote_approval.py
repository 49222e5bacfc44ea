"""Signed approval decisions for a paused pipeline run, submitted through the Prefect API.

A run waiting for approval (``flows/approval.py``) is *paused* with a pause key
``approval-<stage>-<n>`` and has published what it waits for under the flow-run-input key
``secmlops-approval-request-<stage>``. :func:`submit_decision` reads that request, signs a
decision about exactly that release with the approver's own key, resumes the run with it,
and reports whether the run counted it (the run publishes the outcome under
``secmlops-approval-outcome-<pause key>``). The run verifies every decision itself; this
module only makes and delivers one. Prefect is imported only when a decision is submitted.

Example::

    outcome = submit_decision("0b8c…", private_key=Path("keys/approvers/alice.pem"),
                              approver="alice", approve=True, reason="metrics look right")
    print(outcome.detail)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from secmlops.errors import ControlRefused, InputError, ToolError

REQUEST_KEY = "secmlops-approval-request-{stage}"
OUTCOME_KEY = "secmlops-approval-outcome-{pause}"
PAUSE_PREFIX = "approval-"


def pause_key(stage: str, attempt: int) -> str:
    """The pause key of the ``attempt``-th approval pause for ``stage``."""
    return f"{PAUSE_PREFIX}{stage}-{attempt}"


def stage_of_pause(key: str | None) -> str | None:
    """The stage an approval pause key waits for (``None`` for other pauses)."""
    if not key or not key.startswith(PAUSE_PREFIX):
        return None
    stage, _, attempt = key[len(PAUSE_PREFIX) :].rpartition("-")
    return stage if stage and attempt.isdigit() else None


@dataclass(frozen=True)
class DecisionOutcome:
    """What the paused run did with a submitted decision."""

    flow_run_id: str
    stage: str
    pause: str
    accepted: bool
    detail: str


def submit_decision(
    flow_run_id: str,
    *,
    private_key: Path,
    approver: str,
    approve: bool,
    reason: str,
    wait_seconds: float = 120,
) -> DecisionOutcome:
    """Sign a decision about what run ``flow_run_id`` waits for and resume it with it.

    ``InputError`` if the run is not waiting for an approval or the key is unusable;
    ``ToolError`` if the Prefect API cannot be reached; ``ControlRefused`` if the run
    ignored the decision (it says why: not an allowed approver, a duplicate, ...).
    """
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run
    from prefect.input.actions import read_flow_run_input

    from secmlops.controls.approval import ApprovalRefusal
    from secmlops.controls.approval_decisions import sign_decision

    run_id = _run_uuid(flow_run_id)
    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(run_id)
    except Exception as exc:
        raise ToolError(
            f"cannot read flow run {flow_run_id} from the Prefect API: {exc}",
            where="PREFECT_API_URL",
            fix="point PREFECT_API_URL at the Prefect server the run belongs to",
        ) from exc
    state = run.state
    pause = state.state_details.pause_key if state is not None else None
    stage = stage_of_pause(pause) if state is not None and state.is_paused() else None
    if stage is None or pause is None:
        raise InputError(
            f"flow run {flow_run_id} is not waiting for an approval "
            f"(state {state.name if state else 'unknown'})",
            where=flow_run_id,
            fix="pass the id of a paused secure-training run (see the UI's Paused runs)",
        )
    raw = read_flow_run_input(REQUEST_KEY.format(stage=stage), flow_run_id=run_id)
    request = _request(raw, flow_run_id)
    bundle = sign_decision(
        request, approver=approver, approve=approve, reason=reason, private_key=private_key
    )
    resume_flow_run(
        run_id,
        run_input={
            "decision": "approve" if approve else "reject",
            "reason": reason,
            "signed_decision": json.dumps(bundle, sort_keys=True),
        },
    )
    outcome = _wait_for_outcome(run_id, pause, wait_seconds)
    result = DecisionOutcome(
        flow_run_id=flow_run_id,
        stage=stage,
        pause=pause,
        accepted=bool(outcome.get("accepted")),
        detail=str(outcome.get("detail", "")),
    )
    if not result.accepted:
        raise ControlRefused(
            f"the run did not count the decision: {result.detail}",
            where=f"{flow_run_id}:{stage}",
            reason=ApprovalRefusal.DECISION_IGNORED,
            result=result,
        )
    return result


def _run_uuid(flow_run_id: str) -> UUID:
    try:
        return UUID(flow_run_id)
    except ValueError as exc:
        raise InputError(
            f"{flow_run_id!r} is not a flow run id",
            where="FLOW_RUN_ID",
            fix="copy the id from the run's page in the Prefect UI",
        ) from exc


def _request(raw: Any, flow_run_id: str) -> Any:
    from secmlops.controls.approval import ApprovalRequest

    try:
        return ApprovalRequest(**raw)
    except TypeError as exc:
        raise InputError(
            f"flow run {flow_run_id} published no readable approval request",
            where=flow_run_id,
            fix="approve a run of this project's secure-training flow",
        ) from exc


def _wait_for_outcome(run_id: UUID, pause: str, wait_seconds: float) -> dict[str, Any]:
    from prefect.input.actions import read_flow_run_input

    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        outcome = read_flow_run_input(OUTCOME_KEY.format(pause=pause), flow_run_id=run_id)
        if isinstance(outcome, dict):
            return outcome
        time.sleep(0.25)
    raise ToolError(
        f"the run did not say within {wait_seconds:.0f} s whether it counted the decision",
        where=str(run_id),
        fix="look at the run in the Prefect UI; is its worker running?",
    )


class ApprovalAgent:
    """Answers the approval pauses of the flow run named ``run_name`` (this process's run).

    What ``secmlops run --approve-as NAME`` uses: the person running the pipeline decided up
    front, so each pause gets a decision signed with NAME's key, through the same path as
    ``secmlops approve`` (the run verifies it like any other). Without an approver it only
    prints, once per pause, how to approve from another shell.
    """

    def __init__(
        self,
        run_name: str,
        *,
        approver: str | None,
        private_key: Path | None,
        reason: str,
        say: Any = print,
        poll_seconds: float = 0.25,
    ) -> None:
        import threading

        # A unique flow run name finds the run (tags would make Prefect check tag
        # concurrency limits for every task run: seconds per pipeline).
        self.run_name = run_name
        self.approver = approver
        self.private_key = private_key
        self.reason = reason
        self.say = say
        self.poll_seconds = poll_seconds
        self.errors: list[BaseException] = []
        self._handled: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="secmlops-approval", daemon=True)

    def __enter__(self) -> ApprovalAgent:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                for run_id, pause in self._paused_runs():
                    if (run_id, pause) not in self._handled:
                        self._handled.add((run_id, pause))
                        self._answer(run_id, pause)
            except Exception as exc:
                self.errors.append(exc)

    def _paused_runs(self) -> list[tuple[str, str]]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterName,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    name=FlowRunFilterName(any_=[self.run_name]),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])),
                )
            )
        found = []
        for run in runs:
            key = run.state.state_details.pause_key if run.state else None
            if key and stage_of_pause(key):
                found.append((str(run.id), key))
        return found

    def _answer(self, run_id: str, pause: str) -> None:
        if self.approver is None or self.private_key is None:
            from prefect.settings import PREFECT_API_URL

            from secmlops.local_prefect import local_api_url

            api = PREFECT_API_URL.value() or local_api_url() or "<this run's Prefect API>"
            self.say(
                f"waiting for approval ({stage_of_pause(pause)}) of flow run {run_id}; "
                f"from another shell: PREFECT_API_URL={api} secmlops approve {run_id} "
                "--approve --reason TEXT --key APPROVER_KEY"
            )
            return
        outcome = submit_decision(
            run_id,
            private_key=self.private_key,
            approver=self.approver,
            approve=True,
            reason=self.reason,
        )
        self.say(outcome.detail)
