"""What a person sees of a flow run in the Prefect UI: policy warnings and readable refusals.

Every flow is decorated with :func:`visible_run` (below ``@flow``). While the flow runs:

* ``secmlops.*`` warnings (an ``unsafe_*`` policy knob, the curated demo Trivy DB) go to
  the run logger too, so they show in the UI and not only on the worker's stdout;
* a refusal (any :class:`~secmlops.errors.SecMLOpsError`) ends the run as a ``Failed``
  state whose message is the error's diagnostics (what, where, reason, what to do). The
  traceback is logged once, at DEBUG; Prefect's own task-failure record of the same error
  is reduced to the diagnostics instead of a second traceback.

An in-process caller still gets the exception: Prefect raises a ``Failed`` state's
exception to whoever called the flow (the CLI maps it to its exit code).

Example::

    @flow(name="verify")
    @visible_run
    def verify(model: str = "churn-classifier") -> dict[str, Any]: ...
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar, cast
from uuid import UUID

from prefect import get_run_logger
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.states import Failed

from secmlops.errors import SecMLOpsError

P = ParamSpec("P")
R = TypeVar("R")

#: The library's loggers (``secmlops.controls.*``, ``secmlops.demo.*``, ...).
LIBRARY_LOGGER = "secmlops"
#: Prefect's task-run logger, which logs a failing task's exception with its traceback.
TASK_RUN_LOGGER = "prefect.task_runs"


def _current_flow_run_id() -> UUID | None:
    ctx = FlowRunContext.get()
    return ctx.flow_run.id if ctx and ctx.flow_run else None


class _LibraryWarningsToRunLog(logging.Handler):
    """Re-log the library's warnings of one flow run through that run's logger."""

    def __init__(self, flow_run_id: UUID | None) -> None:
        super().__init__(level=logging.WARNING)
        self.flow_run_id = flow_run_id

    def emit(self, record: logging.LogRecord) -> None:
        # Only records of this flow run (its tasks included): another run in the same
        # process has its own handler.
        if _current_flow_run_id() != self.flow_run_id:
            return
        try:
            get_run_logger().log(record.levelno, "%s (%s)", record.getMessage(), record.name)
        except Exception:  # a log line must never break the run
            self.handleError(record)


class _RefusalWithoutTraceback(logging.Filter):
    """Turn Prefect's "task run failed" record of a refusal into its diagnostics.

    The flow logs the traceback once (DEBUG) where it ends the run; a second one here would
    bury the sentence a person needs under a stack trace.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, SecMLOpsError):
            record.msg, record.args = "%s", (exc.diagnostics(),)
            record.exc_info, record.exc_text = None, None
        return True


@contextlib.contextmanager
def run_visibility() -> Iterator[None]:
    """While the block runs: library warnings reach the run log, refusals lose tracebacks."""
    library, task_runs = logging.getLogger(LIBRARY_LOGGER), logging.getLogger(TASK_RUN_LOGGER)
    forward = _LibraryWarningsToRunLog(_current_flow_run_id())
    strip = _RefusalWithoutTraceback()
    library.addHandler(forward)
    task_runs.addFilter(strip)
    try:
        yield
    finally:
        library.removeHandler(forward)
        task_runs.removeFilter(strip)


def refusal_state(exc: SecMLOpsError) -> State[Any]:
    """Log ``exc``'s diagnostics (traceback at DEBUG) and return the run's ``Failed`` state."""
    logger = get_run_logger()
    logger.error("%s", exc.diagnostics())
    logger.debug("traceback of the refusal above", exc_info=exc)
    return Failed(message=exc.diagnostics(), data=exc)


def visible_run(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a flow function (below ``@flow``) with :func:`run_visibility` and
    :func:`refusal_state`; the flow's signature and parameter schema are unchanged."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with run_visibility():
            try:
                return fn(*args, **kwargs)
            except SecMLOpsError as exc:
                # Prefect ends the run in this state and raises ``exc`` to an in-process
                # caller, so a caller never receives the state object itself.
                return cast(R, refusal_state(exc))

    # Prefect validates parameters against the signature's annotations, resolved here: they
    # name types of the flow's module, which this module's globals do not have.
    run.__signature__ = inspect.signature(fn, eval_str=True)  # type: ignore[attr-defined]
    return run
