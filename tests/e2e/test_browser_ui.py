"""The Prefect UI in a real browser (Debian's chromium driven by Playwright), against the
session's real Prefect server and worker: what an operator clicks, checked through the API.

Screenshots go to ``tests/.artifacts/browser/`` (git-ignored); each test prints where.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from secmlops.registry.models import ModelRegistry
from secmlops.registry.stores import LocalRegistry
from tests.e2e.conftest import PROJECT, SITE_REGISTRIES, TERMINAL, PrefectServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
ARTIFACTS = PROJECT / "tests" / ".artifacts" / "browser"
# A busy 2-core machine: the UI's first load and every API round trip can take long.
UI_TIMEOUT_MS = 90_000
MODEL = "churn-classifier"


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserContext]:
    """Debian's chromium, headless, with a new empty profile (never a downloaded browser)."""
    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run does it in CI)"
    )
    profile = tempfile.mkdtemp(prefix="secmlops-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                args=CHROMIUM_ARGS,
                headless=True,
                viewport={"width": 1400, "height": 1100},
            )
            context.set_default_timeout(UI_TIMEOUT_MS)
            expect.set_options(timeout=UI_TIMEOUT_MS)
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    page = browser.new_page()
    try:
        yield page
    finally:
        page.close()


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Path:
    """This test's screenshot directory (emptied first)."""
    path = ARTIFACTS / re.sub(r"[^\w.-]+", "_", request.node.name)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    print(f"screenshots: {path}")
    return path


def _cancel(server: PrefectServer, run_id: str) -> None:
    """Cancel a run left paused or running, so later tests get the deployment's slot."""
    run = server.get(f"/flow_runs/{run_id}")
    if run["state_type"] in TERMINAL:
        return
    server.post(
        f"/flow_runs/{run_id}/set_state",
        {"state": {"type": "CANCELLING", "message": "test cleanup"}, "force": True},
    )


def _paused_for(stage: str) -> Callable[[dict[str, Any]], bool]:
    """Whether a flow run is paused at the approval of ``stage``."""

    def reached(run: dict[str, Any]) -> bool:
        key = (run["state"] or {}).get("state_details", {}).get("pause_key") or ""
        return run["state_type"] == "PAUSED" and key.startswith(f"approval-{stage}-")

    return reached


def _past_staging(run: dict[str, Any]) -> bool:
    """Whether a run got past staging: finished, or paused for production."""
    return run["state_type"] == "COMPLETED" or _paused_for("production")(run)


def _start_custom_run(
    page: Page, server: PrefectServer, shots: Path, *, registry: str
) -> dict[str, Any]:
    """Open secure-training's Custom run form, pick one of the site's registries by name,
    submit with "Validate parameters" ticked; return the flow run the UI created."""
    deployment = server.deployment("secure-training/secure-training")
    page.goto(f"{server.ui}/deployments/deployment/{deployment['id']}")
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run", exact=True).click()
    expect(page).to_have_url(re.compile(r"/run(\?|$)"))

    expect(page.get_by_text("Validate parameters")).to_be_visible()
    page.screenshot(path=shots / "0-custom-run-form-open.png", full_page=True)
    field = page.locator(".schema-form-property").filter(
        has=page.get_by_text(re.compile(r"^registry\b"))
    )
    picker = field.locator(".p-select-button").first
    picker.click()
    option = page.get_by_role("option", name=registry, exact=True)
    if not option.is_visible():
        page.keyboard.press("ArrowDown")  # the combobox opens on the keyboard reliably
    option.click()
    expect(picker).to_contain_text(registry)
    expect(page.get_by_label("Validate parameters")).to_be_checked()
    page.screenshot(path=shots / "1-custom-run-form.png", full_page=True)

    for _attempt in range(3):
        with page.expect_response(
            lambda r: r.request.method == "POST" and r.url.endswith("/create_flow_run")
        ) as created:
            page.get_by_role("button", name="Submit", exact=True).click()
        response = created.value
        body = response.json()
        if response.status != 503:  # retryable (a busy SQLite): a person clicks again
            break
        page.wait_for_timeout(3000)
    if response.status != 201:
        page.screenshot(path=shots / "1-custom-run-refused.png", full_page=True)
    assert response.status == 201, f"the UI could not create the run: {body}"
    sent = response.request.post_data_json or {}
    assert sent.get("enforce_parameter_schema") is True, sent
    return dict(body)


def _decide_in_resume_form(
    page: Page, server: PrefectServer, run_id: str, shots: Path, *, decision: str, reason: str
) -> None:
    """On the paused run's page: Resume, fill the approval form, submit."""
    page.goto(f"{server.ui}/runs/flow-run/{run_id}")
    page.get_by_role("button", name="Resume", exact=True).click()
    form = page.get_by_role("dialog")
    expect(form.get_by_text("Resume Flow Run")).to_be_visible()
    expect(form.get_by_text(re.compile(r"Approve .* for staging\?")).first).to_be_visible()

    chosen = form.locator(".schema-form-property").filter(
        has=page.get_by_text(re.compile(r"^Decision\b"))
    )
    picker = chosen.locator(".p-select-button")
    if decision not in picker.inner_text():
        picker.click()
        option = page.get_by_role("option", name=decision, exact=True)
        if not option.is_visible():
            page.keyboard.press("ArrowDown")
        option.click()
    expect(picker).to_contain_text(decision)
    form.locator(".schema-form-property").filter(
        has=page.get_by_text(re.compile(r"^Reason\b"))
    ).locator("textarea").fill(reason)
    form.screenshot(path=shots / f"3-resume-form-{decision}.png")

    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.endswith(f"/flow_runs/{run_id}/resume")
    ) as resumed:
        form.get_by_role("button", name="Submit", exact=True).click()
    assert resumed.value.ok, resumed.value.text()


def _screenshot_run(page: Page, server: PrefectServer, run: dict[str, Any], path: Path) -> None:
    """The run's page once it shows the run's state, task runs and logs."""
    page.goto(f"{server.ui}/runs/flow-run/{run['id']}")
    expect(page.get_by_text(run["name"]).first).to_be_visible()
    expect(page.get_by_text(run["state_name"], exact=True).first).to_be_visible()
    expect(page.get_by_text(re.compile(r"^\d+ Task runs?$")).first).to_be_visible()
    expect(page.get_by_text(re.compile(r"Beginning flow run")).first).to_be_visible()
    page.screenshot(path=path, full_page=True)


def test_browser_custom_run_picks_a_site_registry_by_name_and_reaches_the_run(
    prefect_server: PrefectServer, page: Page, shots: Path
) -> None:
    """The run form offers the site's registries by name; the run carries the name, and the
    worker writes where the site's policy says that name is."""
    run = _start_custom_run(page, prefect_server, shots, registry="site-registry")
    try:
        stored = prefect_server.get(f"/flow_runs/{run['id']}")
        assert stored["parameters"]["registry"] == "site-registry", stored["parameters"]
        reached = prefect_server.wait_for_run(
            run["id"],
            lambda r: r["state_type"] in {"PAUSED", "COMPLETED"},
            "paused or completed",
        )
        where = prefect_server.registry_dir("site-registry")
        assert (where / MODEL / "versions" / "v1").is_dir(), (
            f"nothing registered in {where}: {reached['state']}"
        )
        _screenshot_run(page, prefect_server, reached, shots / "2-flow-run-page.png")
        page.get_by_text("Parameters", exact=True).first.click()
        expect(page.get_by_text("site-registry").first).to_be_visible()
        page.screenshot(path=shots / "3-flow-run-parameters.png", full_page=True)
    finally:
        _cancel(prefect_server, run["id"])


def test_browser_approve_in_the_resume_form_deploys_to_staging(
    prefect_server: PrefectServer, page: Page, shots: Path
) -> None:
    registry = prefect_server.registry_dir("approved-registry")
    run = _start_custom_run(page, prefect_server, shots, registry="approved-registry")
    try:
        paused = prefect_server.wait_for_run(
            run["id"], _paused_for("staging"), "paused for staging approval"
        )
        _screenshot_run(page, prefect_server, paused, shots / "2-paused-for-staging.png")
        assert not (registry / MODEL / "stages" / "staging.json").exists()

        _decide_in_resume_form(
            page, prefect_server, run["id"], shots, decision="approve", reason="looks good"
        )
        resumed = prefect_server.wait_for_run(run["id"], _past_staging, "past staging")
        pointer, _ = ModelRegistry(LocalRegistry(registry), MODEL).read_pointer("staging")
        assert pointer is not None and pointer.version == "v1", pointer
        _screenshot_run(page, prefect_server, resumed, shots / "4-run-after-approval.png")
    finally:
        _cancel(prefect_server, run["id"])


def test_browser_reject_in_the_resume_form_refuses_the_run(
    prefect_server: PrefectServer, page: Page, shots: Path
) -> None:
    registry = prefect_server.registry_dir("rejected-registry")
    run = _start_custom_run(page, prefect_server, shots, registry="rejected-registry")
    try:
        prefect_server.wait_for_run(
            run["id"], _paused_for("staging"), "paused for staging approval"
        )
        _decide_in_resume_form(
            page, prefect_server, run["id"], shots, decision="reject", reason="not this one"
        )
        ended = prefect_server.wait_for_run(
            run["id"], lambda r: r["state_type"] in TERMINAL, "finished"
        )
        assert ended["state_type"] == "FAILED", ended["state"]
        assert "rejected" in ended["state"]["message"], ended["state"]["message"]
        assert "not this one" in ended["state"]["message"], ended["state"]["message"]
        assert not (registry / MODEL / "stages" / "staging.json").exists()
        _screenshot_run(page, prefect_server, ended, shots / "4-run-after-rejection.png")
    finally:
        _cancel(prefect_server, run["id"])


def test_browser_ui_serves_the_deployments(prefect_server: PrefectServer, page: Page) -> None:
    page.goto(f"{prefect_server.ui}/deployments")
    for name in ("secure-training", "promote", "rollback", "verify"):
        expect(page.get_by_role("link", name=name, exact=True).first).to_be_visible()


def test_run_form_schemas_offer_only_the_sites_names(prefect_server: PrefectServer) -> None:
    """What the run form asks the server (``/ui/schemas/validate``): the site's names are
    valid for every selecting parameter, anything else (a path, a URL, an old-style block
    value) is refused before a run exists."""
    checked = []
    for deployment in prefect_server.post("/deployments/filter"):
        schema = deployment["parameter_openapi_schema"]
        for param in ("dataset", "image", "registry"):
            if param not in schema["properties"]:
                continue
            good = {"registry": SITE_REGISTRIES[0], "dataset": "churn-demo", "image": "demo"}
            for value, ok in (
                (good[param], True),
                ("/etc", False),
                ("http://127.0.0.1:9/evil", False),
                ({"uri": "/tmp/elsewhere"}, False),
            ):
                answer = prefect_server.post(
                    "/ui/schemas/validate", {"schema": schema, "values": {param: value}}
                )
                errors = [e for e in answer["errors"] if e.get("property") == param]
                assert bool(errors) != ok, (deployment["name"], param, value, errors)
            checked.append((deployment["name"], param))
    assert {("secure-training", p) for p in ("dataset", "image", "registry")} <= set(checked)
    assert ("promote", "registry") in checked, checked
