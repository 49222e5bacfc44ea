"""One error hierarchy for every control, each class mapped to one CLI exit code.

    0  passed
    1  ControlRefused  a gate said no (policy violation, verification failed, approval refused)
    2  InputError      bad usage or bad input (missing file, malformed schema, unknown stage)
    3  ToolError       a tool or piece of infrastructure broke (binary missing, timeout, S3 down)

Every error carries what failed (``where``) and what to do about it (``fix``), so the CLI can
print one clear sentence and exit with the right code. A ``ToolError`` never counts as a pass.

The result contract of every control: an *evaluate* step returns a result (what was looked
at, what was found); an *enforce* step raises :class:`ControlRefused` carrying that result and
a machine-readable ``reason`` (a :class:`RefusalReason` member of the control's own enum, like
pandera's ``SchemaErrorReason``). Callers and tests branch on the reason, never on the prose.

Example::

    class ScanRefusal(RefusalReason):
        BLOCKING_VULNERABILITY = "blocking_vulnerability"

    raise ControlRefused("2 blocking findings", reason=ScanRefusal.BLOCKING_VULNERABILITY,
                         result=verdict)
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any, Self


class RefusalReason(StrEnum):
    """Base of each control's enum of reasons to refuse (values are stable, snake_case).

    Members are declared in order of precedence: when several apply, the first one declared
    is the refusal's ``reason`` (:meth:`first_of`) and all of them go in its result.
    """

    @classmethod
    def first_of(cls, reasons: Iterable[Self]) -> Self | None:
        """The reason that takes precedence (declared first), or ``None`` if there is none."""
        order = list(cls)
        return min(reasons, key=order.index, default=None)


class SecMLOpsError(Exception):
    """Base class: a message, where it happened, what to do, and data for the evidence."""

    exit_code: int = 3
    kind: str = "error"

    def __init__(
        self,
        message: str,
        *,
        where: str | None = None,
        fix: str | None = None,
        details: dict[str, Any] | None = None,
        reason: RefusalReason | None = None,
        result: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.fix = fix
        self.details: dict[str, Any] = dict(details or {})
        #: Why a control refused (``ControlRefused`` only): a member of the control's enum.
        self.reason = reason
        #: The evaluated result the refusal is about (a scan verdict, a gate report, ...).
        self.result = result

    def diagnostics(self) -> str:
        """A human-readable explanation: what failed, where, and what to do."""
        parts = [f"{self.kind}: {self.message}"]
        if self.reason is not None:
            parts.append(f"  reason: {self.reason.value}")
        if self.where:
            parts.append(f"  where: {self.where}")
        if self.fix:
            parts.append(f"  what to do: {self.fix}")
        return "\n".join(parts)

    def __str__(self) -> str:
        text = self.message
        if self.where:
            text = f"{text} ({self.where})"
        return text

    # Prefect and multiprocessing pickle exceptions; keep the keyword arguments.
    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (
                type(self),
                self.message,
                self.where,
                self.fix,
                self.details,
                self.reason,
                self.result,
            ),
        )


def _rebuild(
    cls: type[SecMLOpsError],
    message: str,
    where: str | None,
    fix: str | None,
    details: dict[str, Any],
    reason: RefusalReason | None = None,
    result: Any = None,
) -> SecMLOpsError:
    return cls(message, where=where, fix=fix, details=details, reason=reason, result=result)


class ControlRefused(SecMLOpsError):  # noqa: N818 - the name STYLE.md gives it
    """A security control looked and said no. Exit code 1."""

    exit_code = 1
    kind = "refused"


class InputError(SecMLOpsError):
    """Bad usage or bad input: a missing file, a malformed field, an unknown name. Exit code 2."""

    exit_code = 2
    kind = "bad input"


class ToolError(SecMLOpsError):
    """A tool or service failed, timed out or returned garbage. Exit code 3; never a pass."""

    exit_code = 3
    kind = "tool failure"
