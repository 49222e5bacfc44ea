"""One stage-pointer move per model at a time (issue 11, "Many runs on one server").

Runs of one model that resume from their approval pauses together would otherwise race to
move the same stage pointer: the loser is refused (``pointer_race_lost``, fail closed) and
its run fails. The deployment's concurrency limit cannot prevent that (a run gives its slot
up when it pauses and does not take it again on resume), so the flows take this lock around
each pointer move instead, and never while paused for an approval:

* ``secure-training``: around deploy-staging + smoke-test-staging (the smoke test checks
  that staging serves the run's version), and around promote-production;
* the ``promote`` and ``rollback`` operator flows: around each gate-and-move.

The lock is a Prefect global concurrency limit of 1 slot named
``secmlops-stage-moves-<model>``, created by the first run that needs it (so it works on a
``secmlops server start`` server, a site's server and the embedded ``secmlops run`` alike),
taken with a lease the holder renews while it holds it: a run that crashes frees it when its
lease expires (:data:`LEASE_SECONDS`, then the server's repossessor pass). If the limit cannot
be created, read or taken, or is not an active 1-slot limit, the move does not happen
(fail closed): the run never moves a pointer unlocked.

Example::

    with stage_lock(models.model) as lock:
        promote_to_stage_task(...)
    print(lock.note())   # "; waited 12 s for the stage lock" (or "")
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency.asyncio import (
    AcquireConcurrencySlotTimeoutError,
    ConcurrencySlotAcquisitionError,
)
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from secmlops.errors import InputError, ToolError

LOCK_PREFIX = "secmlops-stage-moves-"
#: The lease on the held slot (the server's minimum): renewed every 45 s while held; a
#: crashed holder's slot is freed once it expires and the server's repossessor runs.
LEASE_SECONDS = 60
#: How long a run waits for another run's pointer move before it gives up (fails closed).
WAIT_SECONDS = 1800


def lock_name(model: str) -> str:
    """The global concurrency limit that serialises ``model``'s stage-pointer moves."""
    return f"{LOCK_PREFIX}{model}"


@dataclass
class LockHold:
    """What taking the lock took: its name and how long the run waited for it."""

    name: str
    waited_seconds: float = 0.0
    waited: bool = False

    def note(self) -> str:
        """``"; waited N s for the stage lock"`` when the run had to wait, else ``""``."""
        if not self.waited:
            return ""
        return f"; waited {self.waited_seconds:.0f} s for the stage lock ({self.name})"


def ensure_stage_lock(model: str) -> str:
    """Create ``model``'s lock (an active 1-slot global concurrency limit) if it is missing.

    Idempotent; a concurrent creator's 409 is fine. Returns the lock's name. Raises
    ``InputError`` if a limit of that name exists but is not an active 1-slot limit (it
    would not serialise anything) and ``ToolError`` if the Prefect API cannot be used.
    """
    name = lock_name(model)
    try:
        with get_client(sync_client=True) as client:
            try:
                client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                with contextlib.suppress(ObjectAlreadyExists):
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(name=name, limit=1, active=True)
                    )
    except (httpx.HTTPError, OSError, RuntimeError) as exc:
        raise ToolError(
            f"could not create the stage lock {name} on the Prefect API: {exc}",
            where=name,
            fix="check that the Prefect server is up and reachable (PREFECT_API_URL); "
            "no stage pointer was moved",
        ) from exc
    _check_limit(name)
    return name


def _check_limit(name: str) -> None:
    """Refuse a lock that would not lock: missing, inactive or more than one slot."""
    try:
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound as exc:
        raise ToolError(
            f"the stage lock {name} disappeared from the Prefect server",
            where=name,
            fix="re-run; if it keeps happening, find what deletes the global concurrency "
            "limit (`prefect gcl ls`); no stage pointer was moved",
        ) from exc
    except (httpx.HTTPError, OSError, RuntimeError) as exc:
        raise ToolError(
            f"could not read the stage lock {name} on the Prefect API: {exc}",
            where=name,
            fix="check that the Prefect server is up and reachable (PREFECT_API_URL); "
            "no stage pointer was moved",
        ) from exc
    if not limit.active or limit.limit != 1:
        state = "inactive" if not limit.active else f"{limit.limit} slots"
        raise InputError(
            f"the stage lock {name} is a global concurrency limit that is {state}, so it "
            "would not serialise stage-pointer moves",
            where=f"Prefect global concurrency limit {name}",
            fix=f"make it an active limit of 1 slot (`prefect gcl update {name} --limit 1 "
            f"--enable`) or delete it (`prefect gcl delete {name}`) and let the next run "
            "create it; no stage pointer was moved",
        )


def _holder() -> ConcurrencyLeaseHolder | None:
    """The flow run holding the lease, shown by the server for the held slot."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None
    return ConcurrencyLeaseHolder(type="flow_run", id=context.flow_run.id)


def _locked(exc: ConcurrencySlotAcquisitionError) -> bool:
    """True when the acquisition failed only because another holder has the slot (423)."""
    cause = exc.__cause__
    return isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423


@contextlib.contextmanager
def stage_lock(model: str, *, wait_seconds: float = WAIT_SECONDS) -> Iterator[LockHold]:
    """Hold ``model``'s stage lock for the block: one stage-pointer move of it at a time.

    Creates the lock if missing; waits (up to ``wait_seconds``) while another run holds it,
    and logs that it does. Never yields unlocked: ``InputError`` for a lock that would not
    lock, ``ToolError`` when the API fails or the wait times out. A holder whose lease
    cannot be renewed is cancelled rather than left moving a pointer unlocked.
    """
    name = ensure_stage_lock(model)
    hold = LockHold(name)
    holder = _holder()
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(_take(name, holder, max_retries=0, timeout=None))
        except ConcurrencySlotAcquisitionError as exc:
            if not _locked(exc):
                raise _acquire_failed(name, exc) from exc
            _log(f"waiting for the stage lock {name}: another run is moving a stage pointer")
            start = time.monotonic()
            try:
                held.enter_context(_take(name, holder, max_retries=None, timeout=wait_seconds))
            except AcquireConcurrencySlotTimeoutError as timeout:
                raise ToolError(
                    f"gave up after {wait_seconds:.0f} s waiting for the stage lock {name}",
                    where=name,
                    fix="another run has held it all that time: see `prefect gcl inspect "
                    f"{name}` and that run; a crashed holder frees it within "
                    f"{LEASE_SECONDS} s; no stage pointer was moved",
                ) from timeout
            except ConcurrencySlotAcquisitionError as again:
                raise _acquire_failed(name, again) from again
            hold.waited, hold.waited_seconds = True, time.monotonic() - start
            _log(f"took the stage lock {name} after waiting {hold.waited_seconds:.0f} s")
        # Checked while held: a limit deactivated or widened meanwhile would not lock.
        _check_limit(name)
        yield hold


def _take(
    name: str,
    holder: ConcurrencyLeaseHolder | None,
    *,
    max_retries: int | None,
    timeout: float | None,
) -> contextlib.AbstractContextManager[None]:
    return concurrency(
        name,
        occupy=1,
        timeout_seconds=timeout,
        max_retries=max_retries,
        lease_duration=LEASE_SECONDS,
        strict=True,
        holder=holder,
        raise_on_lease_renewal_failure=True,
    )


def _acquire_failed(name: str, exc: Exception) -> ToolError:
    return ToolError(
        f"could not take the stage lock {name}: {exc}",
        where=name,
        fix="check that the Prefect server is up and reachable (PREFECT_API_URL); "
        "no stage pointer was moved",
    )


def _log(message: str) -> None:
    try:
        get_run_logger().info(message)
    except Exception:  # outside a run (tests, scripts): nothing to log to
        return
