"""The per-model stage lock (issue 11 finding 1: concurrent runs lost stage-pointer races).

Against a real Prefect API (the session's ephemeral server on its own PREFECT_HOME): the lock
is created once as an active 1-slot global concurrency limit, a second mover waits for the
first and says so, and a lock that would not lock or an API that cannot be reached stops the
move before it starts (fail closed)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from flows.stage_lock import ensure_stage_lock, lock_name, stage_lock
from secmlops.errors import InputError, ToolError
from tests.conftest import free_port


@pytest.fixture(scope="module", autouse=True)
def _api_up() -> None:
    """Start this process's Prefect API once, before any test's threads race to start it
    (three threads starting the ephemeral server at once on a loaded machine: "Server
    process did not start")."""
    with get_client(sync_client=True) as client:
        client.read_global_concurrency_limits(limit=1, offset=0)


def _model() -> str:
    return f"lock-test-{uuid.uuid4().hex[:8]}"


def test_the_lock_is_created_once_as_an_active_one_slot_limit() -> None:
    """Two runs creating a model's lock at once both get it (a 409 is fine); it locks."""
    model = _model()
    errors: list[BaseException] = []

    def create() -> None:
        try:
            ensure_stage_lock(model)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(lock_name(model))
    assert limit.name == f"secmlops-stage-moves-{model}"
    assert (limit.limit, limit.active, limit.active_slots) == (1, True, 0)


def test_a_second_pointer_move_waits_for_the_first_and_says_so() -> None:
    """Issue 11 finding 1: two runs of one model resuming together no longer move its stage
    pointer at once: the second takes the lock only after the first let it go, and its
    hold says it waited; other models are not held up."""
    model = _model()
    first_in, events = threading.Event(), []

    def first() -> None:
        with stage_lock(model) as hold:
            events.append(("first in", time.monotonic(), hold.waited))
            first_in.set()
            time.sleep(2)
            events.append(("first out", time.monotonic(), False))

    thread = threading.Thread(target=first)
    thread.start()
    assert first_in.wait(60)
    with stage_lock(_model()) as other:  # another model's lock is free
        assert not other.waited and other.note() == ""
    with stage_lock(model) as second:
        events.append(("second in", time.monotonic(), second.waited))
    thread.join()
    names = [name for name, _, _ in events]
    assert names == ["first in", "first out", "second in"], names
    assert events[0][2] is False and second.waited
    assert "waited" in second.note() and lock_name(model) in second.note()
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(lock_name(model)).active_slots == 0


@pytest.mark.parametrize(
    ("update", "shown"),
    [({"active": False}, "inactive"), ({"limit": 2}, "2 slots")],
)
def test_a_lock_that_would_not_lock_stops_the_move(update: dict[str, object], shown: str) -> None:
    """A lock an operator deactivated or widened would let two moves through: refused,
    and the pointer move (the block) never runs."""
    model = _model()
    name = ensure_stage_lock(model)
    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(
            name, GlobalConcurrencyLimitUpdate.model_validate(update)
        )
    ran = False
    with pytest.raises(InputError, match=shown) as info, stage_lock(model):
        ran = True
    assert not ran
    assert "prefect gcl update" in (info.value.fix or "")


def test_an_unreachable_api_stops_the_move() -> None:
    """No Prefect API, no lock, no pointer move (never proceed unlocked)."""
    ran = False
    with (
        temporary_settings(
            {
                PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api",
                PREFECT_CLIENT_MAX_RETRIES: 0,
            }
        ),
        pytest.raises(ToolError, match="stage lock"),
        stage_lock(_model()),
    ):
        ran = True
    assert not ran
