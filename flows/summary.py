"""Stage-by-stage record of one pipeline run: passed/refused, time taken, evidence."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from secmlops.errors import ControlRefused, InputError, SecMLOpsError


@dataclass
class StageRecord:
    name: str
    status: str = "running"
    seconds: float = 0.0
    detail: str = ""
    evidence: list[str] = field(default_factory=list)

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
