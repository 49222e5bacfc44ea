"""Stage-by-stage record of one pipeline run: passed/refused, time taken, evidence."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from secmlops.errors import ControlRefused, InputError, SecMLOpsError
from secmlops.gate import GateReport


@dataclass
class StageRecord:
    """One stage: its result, time, a one-line detail, and where its evidence is."""

    name: str
    status: str = "running"
    seconds: float = 0.0
    detail: str = ""
    #: Evidence locations as the registry describes them (a path, or an s3:// URI).
    evidence: list[str] = field(default_factory=list)
    #: The deploy gate's report, for a stage that ran the gate (passed or refused).
    gate: GateReport | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.name,
            "status": self.status,
            "seconds": round(self.seconds, 2),
            "detail": self.detail,
            "evidence": self.evidence,
        }


@dataclass
class RunSummary:
    """What a run did, stage by stage."""

    model: str
    registry: str
    version: str = ""
    stages: list[StageRecord] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[StageRecord]:
        record = StageRecord(name)
        self.stages.append(record)
        start = time.monotonic()
        try:
            yield record
        except ControlRefused as exc:
            record.status, record.detail = "REFUSED", str(exc)
            if isinstance(exc.result, GateReport):
                record.gate = exc.result
            raise
        except InputError as exc:
            record.status, record.detail = "BAD INPUT", str(exc)
            raise
        except SecMLOpsError as exc:
            record.status, record.detail = "FAILED", str(exc)
            raise
        except BaseException as exc:
            record.status, record.detail = "FAILED", f"{type(exc).__name__}: {exc}"
            raise
        else:
            record.status = "passed"
        finally:
            record.seconds = time.monotonic() - start

    def gate_reports(self) -> list[GateReport]:
        """The deploy gate's report of every stage that ran the gate, in run order."""
        return [s.gate for s in self.stages if s.gate is not None]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "registry": self.registry,
            "seconds": round(time.monotonic() - self.started, 2),
            "stages": [s.to_json() for s in self.stages],
        }

    def render(self) -> str:
        lines = [
            f"SecMLOps pipeline: model {self.model} {self.version or '(no version registered)'}",
            f"registry: {self.registry}",
            f"{'stage':<22} {'result':<10} {'time':>8}  detail / evidence",
        ]
        for s in self.stages:
            lines.append(f"{s.name:<22} {s.status:<10} {s.seconds:>7.2f}s  {s.detail}")
            lines.extend(f"{'':<43}{e}" for e in s.evidence)
        lines.append(f"total {time.monotonic() - self.started:.1f}s")
        return "\n".join(lines)
