"""Issue 12 through a real deployment: whoever can start runs chooses only names.

Runs are created on the session's Prefect server exactly as the UI or the API would create
them (``POST /deployments/{id}/create_flow_run``), once with the server's parameter
validation on (what the UI's "Validate parameters" does) and once with it off (the API
allows that): the worker's flow must refuse on its own, before anything is imported,
pulled, scanned or written.

The attacks are the review's findings as they were made on the code before this change,
with the parameter shapes that code accepted (``data: {schema_spec: ...}``, ``registry:
{uri, s3_endpoint_url}``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.error import HTTPError

import pytest

from tests.conftest import RequestLog
from tests.e2e.conftest import TERMINAL, PrefectServer

pytestmark = pytest.mark.timeout(900)


def _create_run(
    server: PrefectServer, parameters: dict[str, Any], *, enforce: bool
) -> dict[str, Any] | HTTPError:
    deployment = server.deployment("secure-training/secure-training")
    try:
        return dict(
            server.post(
                f"/deployments/{deployment['id']}/create_flow_run",
                {"parameters": parameters, "enforce_parameter_schema": enforce},
            )
        )
    except HTTPError as exc:
        return exc


def _ended(server: PrefectServer, run: dict[str, Any]) -> dict[str, Any]:
    return server.wait_for_run(
        run["id"], lambda r: r["state_type"] in TERMINAL, "finished", timeout=600
    )


def _evil_schema(tmp_path: Path) -> tuple[Path, Path]:
    """A 'schema' file whose import would write a marker (the finding's payload)."""
    marker = tmp_path / "imported.marker"
    evil = tmp_path / "evil_schema.py"
    evil.write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('code ran on the worker')\n"
        "import pandera.pandas as pa\n"
        "class Anything(pa.DataFrameModel):\n"
        "    pass\n"
    )
    return evil, marker


def test_finding1_schema_from_a_run_parameter_never_runs(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    """Issue 12 finding 1: a run named a Python file as the schema and it ran on the worker.

    Now no parameter can name a schema: the old parameter shape is refused by the server's
    validation, and with validation off the worker's flow refuses the unknown parameter;
    a schema path given as the dataset name is refused too. The marker proves nothing was
    imported.
    """
    evil, marker = _evil_schema(tmp_path)
    old_shape = {"data": {"repo": "", "schema_spec": f"{evil}:Anything"}}
    as_a_name = {"dataset": f"{evil}:Anything"}

    refused = _create_run(prefect_server, as_a_name, enforce=True)
    assert isinstance(refused, HTTPError) and refused.code in (409, 422), refused

    for parameters in (old_shape, as_a_name):
        run = _create_run(prefect_server, parameters, enforce=False)
        assert not isinstance(run, HTTPError), run
        ended = _ended(prefect_server, run)
        assert ended["state_type"] in {"FAILED", "CRASHED"}, ended["state"]
        assert not marker.exists(), f"the schema file was imported by run {run['id']}"
    message = ended["state"]["message"] or ""
    assert "dataset" in message, message


def test_finding4_a_registry_endpoint_named_by_a_run_gets_no_request(
    prefect_server: PrefectServer, request_logger: RequestLog, tmp_path: Path
) -> None:
    """Issue 12 finding 4: a RegistryTarget naming an endpoint on 127.0.0.1 received
    requests signed with the worker's AWS credentials. Now a run can only name one of the
    site's registries: the endpoint it names is never called."""
    old_shape = {"registry": {"uri": "s3://stolen/creds", "s3_endpoint_url": request_logger.url}}
    as_a_name = {"registry": request_logger.url}
    refused = _create_run(prefect_server, as_a_name, enforce=True)
    assert isinstance(refused, HTTPError) and refused.code in (409, 422), refused
    for parameters in (old_shape, as_a_name):
        run = _create_run(prefect_server, parameters, enforce=False)
        assert not isinstance(run, HTTPError), run
        ended = _ended(prefect_server, run)
        assert ended["state_type"] in {"FAILED", "CRASHED"}, ended["state"]
    assert request_logger.requests == [], request_logger.requests


def test_registry_names_resolve_to_the_sites_locations_only(
    prefect_server: PrefectServer,
) -> None:
    """Issue 12 finding 7: a registry URI could be any writable directory on the worker.
    A name outside the site's list is refused by the worker even without server-side
    validation, with the allowed names in the message."""
    run = _create_run(prefect_server, {"registry": "tmp"}, enforce=False)
    assert not isinstance(run, HTTPError), run
    ended = _ended(prefect_server, run)
    assert ended["state_type"] in {"FAILED", "CRASHED"}, ended["state"]
    assert not Path("/tmp/churn-classifier").exists()
