"""Who and what ran this flow, as the Prefect server knows it: recorded in the provenance.

Prefect's open-source server keeps no user identity: a run started from the UI or the API
has no ``created_by`` (Prefect Cloud fills it in; an automation records itself). The record
then says so (``startedBy`` null with a note) instead of guessing; a run started in this
process (``secmlops run``) records the OS user who started it. The worker's own OS user is
recorded apart, as the worker, never as the person who started the run.
"""

from __future__ import annotations

import getpass
import socket

from prefect.context import FlowRunContext
from prefect.runtime import deployment

from secmlops.evidence.predicates import RunRecord


def current_run_record() -> RunRecord:
    """The current flow run: ids, deployment, work pool, who started it, which worker."""
    ctx = FlowRunContext.get()
    flow_run = ctx.flow_run if ctx else None
    created = flow_run.created_by if flow_run else None
    deployment_id = deployment.id
    if created is not None and (created.display_value or created.id):
        started_by: str | None = created.display_value or str(created.id)
        started_kind = created.type or "unknown"
        note = ""
    elif not deployment_id:
        started_by, started_kind = getpass.getuser(), "os-user"
        note = "started in the worker's own process (secmlops run)"
    else:
        started_by, started_kind = None, None
        note = "the Prefect server records no identity for runs started from its UI or API"
    return RunRecord(
        flow_run_id=str(flow_run.id) if flow_run else None,
        flow_run_name=flow_run.name if flow_run else None,
        deployment_id=str(deployment_id) if deployment_id else None,
        deployment_name=deployment.name if deployment_id else None,
        work_pool=flow_run.work_pool_name if flow_run else None,
        started_by=started_by,
        started_by_kind=started_kind,
        started_by_note=note,
        worker=f"{getpass.getuser()}@{socket.gethostname()}",
    )
