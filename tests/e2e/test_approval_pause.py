"""The approval pause against a real Prefect server: every way a decision can arrive.

A small flow runs only the approval step (``flows.approval.await_approval``) for a version
the session's pipeline registered, against the session's real ``prefect server`` (SQLite,
127.0.0.1). Decisions arrive the two ways they do in production: the UI's Resume form (the
same ``POST /flow_runs/{id}/resume`` the UI sends, no signature) and ``secmlops approve``
(``secmlops.remote_approval.submit_decision``: signed with an approver's key). Each
scenario has its own policy, so the flow runs in the test process (the deployed pipeline
on a worker is exercised in test_prefect_deployment.py).
"""

from __future__ import annotations

import contextvars
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from secmlops.audit import verify_audit_log
from secmlops.controls.approval import ApprovalPolicy, ApprovalRefusal
from secmlops.errors import ControlRefused
from secmlops.evidence.keys import KeyDirectory
from secmlops.gate import GatePolicy
from secmlops.registry.models import ModelRegistry
from secmlops.registry.stores import open_registry
from secmlops.remote_approval import submit_decision
from tests.conftest import sign_site_policy, write_site_policy
from tests.e2e.conftest import PipelineWorld, PrefectServer

MODEL = "churn-classifier"
PEOPLE = ("alice", "bob", "carol", "demo-approver")


@dataclass
class Probe:
    """One run of the approval step in a background thread, and what came of it."""

    server: PrefectServer
    thread: threading.Thread | None = None
    run_id: str | None = None
    result: Any = None
    error: BaseException | None = None
    seen_pauses: list[str] = field(default_factory=list)

    def wait_paused(self, attempt: int, timeout: float = 120) -> str:
        """Wait until the run pauses for the ``attempt``-th time; return its id."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error is not None:
                raise AssertionError(f"the run ended early: {self.error!r}")
            if self.run_id:
                run = self.server.get(f"/flow_runs/{self.run_id}")
                key = run["state"]["state_details"].get("pause_key") or ""
                if run["state_type"] == "PAUSED" and key.endswith(f"-{attempt}"):
                    return self.run_id
            time.sleep(0.3)
        raise AssertionError(f"the run did not pause a {attempt}. time")

    def finish(self, timeout: float = 120) -> Any:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the approval step did not end"
        return self.result

    def form(self, decision: str, reason: str = "", signed: str = "") -> None:
        """What the UI's Resume form sends (anonymous unless ``signed`` is given)."""
        import urllib.error

        assert self.run_id
        body = {"run_input": {"decision": decision, "reason": reason, "signed_decision": signed}}
        for attempt in range(5):  # a busy SQLite server answers 503; the UI user clicks again
            try:
                self.server.post(f"/flow_runs/{self.run_id}/resume", body)
                return
            except urllib.error.HTTPError as exc:
                if exc.code != 503 or attempt == 4:
                    raise
                time.sleep(2)


@pytest.fixture(scope="module")
def approval_world(
    pipeline_world: PipelineWorld, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, KeyDirectory]]:
    """A copy of the pipeline's registry (v1 and v2 registered) and its keys plus approvers."""
    root = tmp_path_factory.mktemp("approval")
    shutil.copytree(pipeline_world.registry, root / "registry")
    shutil.copytree(pipeline_world.home / "keys", root / "keys")
    keys = KeyDirectory(root / "keys")
    keys.ensure(approvers=PEOPLE)
    yield root / "registry", keys


@pytest.fixture
def start(
    prefect_server: PrefectServer,
    approval_world: tuple[Path, KeyDirectory],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Any]:
    """``start(policy, stage=..., version=..., requested_by=...) -> Probe``."""
    from prefect import flow
    from prefect.context import FlowRunContext
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_LOGGING_TO_API_ENABLED,
        temporary_settings,
    )

    from flows.approval import await_approval

    registry, keys = approval_world
    probes: list[Probe] = []
    monkeypatch.setenv("SECMLOPS_KEYS", str(keys.root))

    def begin(
        policy: GatePolicy,
        *,
        stage: str = "staging",
        version: str = "v1",
        requested_by: str = "",
    ) -> Probe:
        probe = Probe(prefect_server)

        @flow(name="approval-probe", timeout_seconds=600)
        def approval_probe() -> list[str]:
            ctx = FlowRunContext.get()
            assert ctx is not None
            probe.run_id = str(ctx.flow_run.id)
            models = ModelRegistry(open_registry(str(registry)), MODEL)
            approvals = await_approval(
                models, version, stage, keys=keys, policy=policy, requested_by=requested_by
            )
            return [d.approver for d in approvals.decisions]

        def body() -> None:
            with temporary_settings(settings):
                try:
                    probe.result = approval_probe()
                except BaseException as exc:
                    probe.error = exc

        probe.thread = threading.Thread(target=contextvars.copy_context().run, args=(body,))
        probe.thread.start()
        probes.append(probe)
        return probe

    # The probe's logs stay local: nothing would read them on the server, and a log worker
    # still sending to a server the session has stopped delays the exit of pytest.
    settings = {PREFECT_API_URL: prefect_server.api, PREFECT_LOGGING_TO_API_ENABLED: False}
    with temporary_settings(settings):
        yield begin
        for probe in probes:
            if probe.thread is not None:
                probe.thread.join(60)
        drain_prefect_workers()


def drain_prefect_workers() -> None:
    """Flush and stop this process's Prefect event workers.

    They are process-wide singletons bound to the API they were first used with: left
    running, a later test's flows under ``prefect_test_harness`` would send their task-run
    events to this session's server, and their task runs would never show up there."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    drained = EventsWorker.drain_all()
    if inspect.isawaitable(drained):
        run_coro_as_sync(drained)  # type: ignore[arg-type]


def _policy(**approval: Any) -> GatePolicy:
    base: dict[str, Any] = {
        "approvers": {"staging": PEOPLE, "production": PEOPLE},
        "timeout_seconds": 120,
    }
    return GatePolicy(approval=ApprovalPolicy.model_validate({**base, **approval}))


def _signed(
    probe: Probe, keys: KeyDirectory, who: str, *, approve: bool = True, key: Path | None = None
) -> Any:
    assert probe.run_id
    return submit_decision(
        probe.run_id,
        private_key=key or keys.approver_private(who),
        approver=who,
        approve=approve,
        reason=f"{who} decided",
        wait_seconds=60,
    )


def _ignored(registry: Path, keys: KeyDirectory) -> list[str]:
    """The reasons of the ``decision-ignored`` entries of the model's (verified) audit log."""
    models = ModelRegistry(open_registry(str(registry)), MODEL)
    return [
        str(e.fields.get("reason"))
        for e in verify_audit_log(models, keys).entries
        if e.event == "decision-ignored"
    ]


def test_approval_in_the_form_approves_staging(start: Any) -> None:
    probe = start(_policy())
    probe.wait_paused(1)
    probe.form("approve", "looks right")
    assert probe.finish() == ["prefect-ui"]


def test_approval_rejected_in_the_form_ends_refused(start: Any) -> None:
    probe = start(_policy())
    probe.wait_paused(1)
    probe.form("reject", "metrics regressed")
    probe.finish()
    assert isinstance(probe.error, ControlRefused)
    assert probe.error.reason is ApprovalRefusal.REJECTED
    assert "rejected for staging by prefect-ui: metrics regressed" in probe.error.message


def test_approval_timeout_ends_refused(start: Any) -> None:
    probe = start(_policy(timeout_seconds=3))
    probe.finish()
    assert isinstance(probe.error, ControlRefused)
    assert probe.error.reason is ApprovalRefusal.TIMED_OUT


def test_approval_signed_decision_required_for_production(
    start: Any, approval_world: tuple[Path, KeyDirectory]
) -> None:
    registry, keys = approval_world
    probe = start(_policy(), stage="production")
    probe.wait_paused(1)
    probe.form("approve", "anonymous")  # production needs a signed decision: ignored
    probe.wait_paused(2)
    assert "anonymous_not_allowed" in _ignored(registry, keys)
    outcome = _signed(probe, keys, "alice")
    assert outcome.accepted and "alice approved v1 for production" in outcome.detail
    assert probe.finish() == ["alice"]


def test_approval_with_the_wrong_key_is_ignored_until_a_valid_one(
    start: Any, approval_world: tuple[Path, KeyDirectory]
) -> None:
    _, keys = approval_world
    probe = start(_policy(), stage="production")
    probe.wait_paused(1)
    with pytest.raises(ControlRefused) as ignored:
        _signed(probe, keys, "alice", key=keys.approver_private("bob"))
    assert ignored.value.reason is ApprovalRefusal.DECISION_IGNORED
    assert "bad_signature" in ignored.value.message
    probe.wait_paused(2)
    assert _signed(probe, keys, "alice").accepted
    assert probe.finish() == ["alice"]


def test_approval_by_someone_the_policy_does_not_list_is_ignored(
    start: Any, approval_world: tuple[Path, KeyDirectory]
) -> None:
    _, keys = approval_world
    policy = _policy(approvers={"staging": ("alice",), "production": ("alice",)})
    probe = start(policy)
    probe.wait_paused(1)
    with pytest.raises(ControlRefused, match="approver_not_allowed"):
        _signed(probe, keys, "carol")
    probe.wait_paused(2)
    assert _signed(probe, keys, "alice").accepted
    assert probe.finish() == ["alice"]


def test_approval_self_approval_is_refused_under_separation_of_duties(
    start: Any, approval_world: tuple[Path, KeyDirectory]
) -> None:
    _, keys = approval_world
    probe = start(_policy(separation_of_duties=True), requested_by="alice")
    probe.wait_paused(1)
    with pytest.raises(ControlRefused, match="self_approval"):
        _signed(probe, keys, "alice")
    probe.wait_paused(2)
    assert _signed(probe, keys, "bob").accepted
    assert probe.finish() == ["bob"]


def test_approval_two_person_rule_needs_two_different_people(
    start: Any, approval_world: tuple[Path, KeyDirectory]
) -> None:
    _, keys = approval_world
    probe = start(_policy(required_approvals={"staging": 2, "production": 2}))
    probe.wait_paused(1)
    assert _signed(probe, keys, "alice").accepted
    probe.wait_paused(2)  # one approval is not enough: the run waits for a second person
    with pytest.raises(ControlRefused, match="duplicate_approver"):
        _signed(probe, keys, "alice")
    probe.wait_paused(3)
    assert _signed(probe, keys, "bob").accepted
    assert probe.finish() == ["alice", "bob"]


def test_approval_two_person_rule_with_one_approval_times_out(
    start: Any, approval_world: tuple[Path, KeyDirectory]
) -> None:
    _, keys = approval_world
    probe = start(_policy(required_approvals={"staging": 2, "production": 2}, timeout_seconds=20))
    probe.wait_paused(1)
    assert _signed(probe, keys, "alice").accepted
    probe.finish()
    assert isinstance(probe.error, ControlRefused)
    assert probe.error.reason is ApprovalRefusal.TIMED_OUT
    assert "(1 of 2 received)" in probe.error.message


def test_approval_garbage_then_a_valid_decision(
    start: Any, approval_world: tuple[Path, KeyDirectory]
) -> None:
    registry, keys = approval_world
    probe = start(_policy(), stage="production")
    probe.wait_paused(1)
    probe.form("approve", "x", signed="{not json")
    probe.wait_paused(2)
    probe.form("approve", "x", signed='{"dsseEnvelope": 7}')
    probe.wait_paused(3)
    assert "malformed_decision" in _ignored(registry, keys)
    assert _signed(probe, keys, "carol").accepted
    assert probe.finish() == ["carol"]


def test_approval_waiting_is_notified_through_the_sites_webhook_block(start: Any) -> None:
    """The policy names a saved notification block; a run that pauses posts to it."""
    import json
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    received: list[dict[str, Any]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        CustomWebhookNotificationBlock(
            name="approvals",
            url=f"http://127.0.0.1:{httpd.server_port}/hook",
            json_data={"text": "{{subject}}: {{body}}"},
        ).save("approvals", overwrite=True)
        probe = start(_policy(notify_block="custom-webhook/approvals"))
        run_id = probe.wait_paused(1)
        deadline = time.monotonic() + 30
        while not received and time.monotonic() < deadline:
            time.sleep(0.2)
        probe.form("approve", "seen the notification")
        assert probe.finish() == ["prefect-ui"]
    finally:
        httpd.shutdown()
    (message,) = received
    assert "Approval needed: churn-classifier v1 -> staging" in message["text"]
    assert f"runs/flow-run/{run_id}" in message["text"]


def test_approval_operator_promote_waits_for_an_approval(
    prefect_server: PrefectServer,
    approval_world: tuple[Path, KeyDirectory],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The `promote` operator flow on a version nobody approved for the stage yet: the gate
    refuses for want of approvals only, so the run pauses, is approved, and promotes."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_LOGGING_TO_API_ENABLED,
        temporary_settings,
    )

    from flows.operations import promote

    source, keys = approval_world
    registry = tmp_path / "registry"
    shutil.copytree(source, registry)
    for approval in (registry / MODEL / "versions" / "v2" / "evidence").glob("approval-*"):
        approval.unlink()
    monkeypatch.setenv("SECMLOPS_KEYS", str(keys.root))
    monkeypatch.setenv("SECMLOPS_REGISTRY", str(registry))  # the site's default registry
    # Site keys: the policy must be signed by the site's owner (nothing is auto-signed).
    policy = sign_site_policy(write_site_policy(tmp_path / "policy.yaml"), keys.root)
    monkeypatch.setenv("SECMLOPS_POLICY", str(policy))
    probe = Probe(prefect_server)
    settings = {PREFECT_API_URL: prefect_server.api, PREFECT_LOGGING_TO_API_ENABLED: False}

    def body() -> None:
        with temporary_settings(settings):
            try:
                state = promote(
                    version="v2",
                    stage="staging",
                    return_state=True,
                )
                probe.run_id = str(state.state_details.flow_run_id)
                probe.result = state.result()
            except BaseException as exc:
                probe.error = exc

    probe.thread = threading.Thread(target=contextvars.copy_context().run, args=(body,))
    probe.thread.start()
    with temporary_settings(settings):
        deadline = time.monotonic() + 180
        while probe.run_id is None and time.monotonic() < deadline:
            runs = prefect_server.post(
                "/flow_runs/filter",
                {"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}, "sort": "START_TIME_DESC"},
            )
            mine = [r for r in runs if r["parameters"].get("version") == "v2"]
            if mine:
                probe.run_id = mine[0]["id"]
            time.sleep(0.5)
        probe.wait_paused(1)
        probe.form("approve", "promote by hand")
        result = probe.finish()
        drain_prefect_workers()
    assert probe.error is None, probe.error
    assert result["version"] == "v2"
    pointer, _ = ModelRegistry(open_registry(str(registry)), MODEL).read_pointer("staging")
    assert pointer is not None and pointer.version == "v2"
