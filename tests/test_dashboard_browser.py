"""Browser tests of the execution dashboard: headless Chromium driven by Selenium against a real server.

The API app, with the dashboard mounted at ``/dashboard``, runs in a thread
with Werkzeug's ``make_server`` on 127.0.0.1, on a migrated SQLite database
and kombu's in-memory broker (the ``Api`` of test_api.py). No worker runs:
between browser steps the test plays the worker's part in this process
through the Scheduler, so the page must show each state change by polling.

The tests need Debian's ``chromium`` and ``chromium-driver`` packages and the
``selenium`` package. Without them they skip, or fail when
GL_ORCHESTRATOR_REQUIRE_SERVICES=1. They write screenshots to
``docs/images/dashboard-*.png``, which docs/dashboard.md shows.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from sqlalchemy import select, update
from werkzeug.serving import make_server

from orchestrator.finalizer import finalize_execution
from orchestrator.hashing import canonical_json
from orchestrator.scheduler import Claim, FollowUp, Prepared
from tests.conftest import service_unavailable
from tests.test_api import (  # noqa: F401  (make_api is a fixture)
    CHECKPOINTS, EXECUTIONS, NODES, PREFIX, TOKEN, Api, dag_document, make_api,
)
from tests.test_ghg_example import _import_agents
from workers.app import runtime_of

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "docs" / "images"
MONTAGE_103 = REPO / "tests" / "data" / "montage-103.json"
MONTAGE_2122 = REPO / "tests" / "data" / "montage-2122.json"
GHG_EXAMPLE = REPO / "examples" / "ghg-inventory"
# The GHG example's nodes in an order that its depends_on allows.
GHG_NODE_ORDER = ("load_activity", "load_emission_factors", "co2", "ch4", "n2o", "co2e", "scope1_totals")
WINDOW_SIZE = (1440, 960)
# Generous bounds for a page on a loaded machine. The page polls every 1.5 s, or 2 s above 300 nodes.
WAIT_SECONDS = 20
LARGE_DAG_WAIT_SECONDS = 60
# The state colours of dashboard.css, as Chromium reports a computed fill.
STATE_COLORS = {
    "waiting": "rgb(218, 220, 224)",
    "ready": "rgb(194, 231, 255)",
    "queued": "rgb(124, 172, 248)",
    "running": "rgb(26, 115, 232)",
    "retrying": "rgb(249, 171, 0)",
    "completed": "rgb(24, 128, 56)",
    "failed": "rgb(217, 48, 37)",
    "skipped": "rgb(179, 157, 219)",
}
# An agent error with markup in it: the page must show it as text.
MARKUP_ERROR = 'meter offline <img src=x onerror="window.injected=1"><b>bold</b>'


# -- browser and server -------------------------------------------------------


def _chromium_binaries() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        service_unavailable(
            "Chromium", "chromium or chromedriver is not on PATH; "
            "install them with apt-get install -y --no-install-recommends chromium chromium-driver",
        )
    assert browser is not None and driver is not None
    return browser, driver


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads: Path) -> Iterator[Any]:
    """One headless Chromium for the module; each test opens its own server, so its own origin and storage."""
    browser_path, driver_path = _chromium_binaries()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        service_unavailable("selenium", f"{exc}; install the test extra with pip install -e '.[test]'")

    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={WINDOW_SIZE[0]},{WINDOW_SIZE[1]}", "--force-device-scale-factor=1",
                     "--disable-extensions", "--no-first-run", "--lang=en-US"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    try:
        yield driver
    finally:
        driver.quit()


class Switch:
    """A node agent that fails with MARKUP_ERROR while ``broken`` is set."""

    def __init__(self) -> None:
        self.broken = True

    def __call__(self, inputs: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        if self.broken:
            raise RuntimeError(MARKUP_ERROR)
        return {"value": inputs["a"] * 2}


@dataclass
class Dashboard:
    """A served API with the dashboard, and the browser that shows it."""

    api: Api
    base_url: str
    driver: Any
    switch: Switch
    worker_threads: list[threading.Thread] = field(default_factory=list)

    @property
    def dashboard_url(self) -> str:
        return f"{self.base_url}/dashboard/"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {TOKEN}", **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.base_url}{PREFIX}{path}", headers=headers, timeout=30, **kwargs)

    def register(self, document: dict[str, Any]) -> None:
        response = self.request("POST", "/dags", json=document)
        assert response.status_code in (200, 201), response.text

    def execute(self, dag_id: str, input_data: dict[str, Any] | None = None) -> str:
        response = self.request("POST", f"/dags/{dag_id}/execute", json={"input_data": input_data or {"x": 5}})
        assert response.status_code == 202, response.text
        return str(response.json()["execution_id"])

    def execution(self, execution_id: str) -> dict[str, Any]:
        response = self.request("GET", f"/executions/{execution_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def sign_in(self, token: str = TOKEN) -> None:
        self.driver.get(self.dashboard_url)
        field_ = wait_for_element(self.driver, "#login-token")
        field_.send_keys(token)
        self.driver.find_element("css selector", "#login-submit").click()

    def open_execution(self, execution_id: str) -> None:
        self.driver.get(f"{self.dashboard_url}#/executions/{execution_id}")
        wait_until(self.driver, lambda d: d.find_element("css selector", "#graph").get_attribute("data-renderer"),
                   "the graph to be drawn")

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"dashboard-{name}.png"
        assert self.driver.save_screenshot(str(path)), path
        return path


@pytest.fixture
def dashboard(make_api: Callable[..., Api], browser: Any) -> Iterator[Dashboard]:  # noqa: F811
    api = make_api()
    switch = Switch()
    api.registry.register("test.flaky", "1.0.0", switch)
    api.registry.register("test.collect", "1.0.0", lambda inputs, params: {"node": params["node"]})
    api.registry.register("test.breakable", "1.0.0", _breakable)

    server = make_server("127.0.0.1", 0, api.app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    served = Dashboard(api, f"http://127.0.0.1:{server.server_port}", browser, switch)
    try:
        yield served
    finally:
        for thread in served.worker_threads:
            thread.join(timeout=60)
        # Stop the page's polling before the server goes away.
        browser.get("about:blank")
        server.shutdown()
        serving.join(timeout=5)


def _breakable(inputs: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    if params.get("fail"):
        raise RuntimeError(f"{params['node']}: input image missing")
    return {"node": params["node"]}


# -- waiting --------------------------------------------------------------------


def wait_until(driver: Any, condition: Callable[[Any], Any], description: str, timeout: float = WAIT_SECONDS) -> Any:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
    try:
        return wait.until(condition)
    except Exception as exc:
        banner = driver.execute_script(
            "const b = document.getElementById('error-banner'); return b && !b.hidden ? b.textContent : null;")
        raise AssertionError(f"timed out after {timeout} s waiting for {description}; error banner: {banner!r}") from exc


def wait_for_element(driver: Any, selector: str, timeout: float = WAIT_SECONDS) -> Any:
    return wait_until(driver, lambda d: _visible(d, selector), f"{selector} to be visible", timeout)


def _visible(driver: Any, selector: str) -> Any:
    elements = [element for element in driver.find_elements("css selector", selector) if element.is_displayed()]
    return elements[0] if elements else False


def text_of(driver: Any, selector: str) -> str:
    return str(driver.find_element("css selector", selector).text)


def node_element(driver: Any, node_id: str) -> Any:
    return driver.find_element("css selector", f'#graph g.node[data-node-id="{node_id}"]')


def node_fill(driver: Any, node_id: str) -> str:
    rect = node_element(driver, node_id).find_element("css selector", "rect")
    return str(driver.execute_script("return getComputedStyle(arguments[0]).fill;", rect))


def click_node(driver: Any, node_id: str) -> None:
    """Fit the graph into view, so that every node can be clicked, and click one."""
    driver.find_element("css selector", "#graph-fit").click()
    node_element(driver, node_id).click()


def confirm_dialog(driver: Any, *, check_option: bool = False) -> None:
    dialog = wait_for_element(driver, "#confirm-dialog")
    if check_option:
        checkbox = dialog.find_element("css selector", "#confirm-checkbox")
        assert checkbox.is_displayed()
        checkbox.click()
    dialog.find_element("css selector", "#confirm-ok").click()
    wait_until(driver, lambda d: not d.find_element("css selector", "#confirm-dialog").is_displayed(),
               "the dialog to close")


def browser_errors(driver: Any) -> list[str]:
    """Return the SEVERE console entries, such as script errors and CSP violations.

    Failed requests are left out: the tests expect some API errors (401, 409).
    """
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and entry.get("source") != "network"]


# -- playing the worker -----------------------------------------------------------


def work_queued_nodes(
    api: Api,
    execution_id: str,
    *,
    max_nodes: int | None = None,
    pause_seconds: float = 0.0,
) -> int:
    """Run queued nodes as a worker does, recording an agent's RuntimeError as a failed attempt.

    Stop after ``max_nodes`` nodes, or when nothing is queued; finalize the
    execution when its last node ends. Return the number of nodes run.
    """
    ran = 0
    while max_nodes is None or ran < max_nodes:
        queued = _queued_nodes(api, execution_id)
        if not queued:
            return ran
        for node_id, task_id in queued:
            if max_nodes is not None and ran >= max_nodes:
                return ran
            claim = api.scheduler.claim(execution_id, node_id, task_id, worker="browser-test pid=1 host=test")
            if claim.run:
                finish_claim(api, claim)
                ran += 1
                time.sleep(pause_seconds)
    return ran


def _queued_nodes(api: Api, execution_id: str, limit: int | None = None) -> list[Any]:
    with api.db.connect() as conn:
        return list(conn.execute(
            select(NODES.c.node_id, NODES.c.task_id)
            .where(NODES.c.execution_id == execution_id, NODES.c.status == "queued")
            .order_by(NODES.c.ordinal).limit(limit)
        ).all())


def claim_queued_nodes(api: Api, execution_id: str, count: int) -> list[Claim]:
    """Mark ``count`` queued nodes running, as a worker that has started them, and return the claims."""
    claims = []
    for node_id, task_id in _queued_nodes(api, execution_id, count):
        claim = api.scheduler.claim(execution_id, node_id, task_id, worker="worker1@host-3 pid=4711 host=host-3")
        assert claim.run, node_id
        claims.append(claim)
    return claims


def claim_node(api: Api, execution_id: str, node_id: str) -> Claim:
    """Mark one queued node running, as a worker that has started it, and return the claim."""
    queued = dict(_queued_nodes(api, execution_id))
    assert node_id in queued, f"{node_id} is not queued; queued: {sorted(queued)}"
    claim = api.scheduler.claim(execution_id, node_id, queued[node_id], worker="worker1@host-3 pid=4711 host=host-3")
    assert claim.run, node_id
    return claim


def finish_claim(api: Api, claim: Claim) -> None:
    """Run a claimed node's agent and record the result; finalize the execution after its last node."""
    prepared = api.scheduler.prepare(claim)
    assert isinstance(prepared, Prepared)
    try:
        outputs = prepared.agent(prepared.inputs, prepared.params)
    except RuntimeError as exc:
        follow_up = api.scheduler.record_failure(claim, f"RuntimeError: {exc}", prepared=prepared, retryable=False)
    else:
        follow_up = api.scheduler.record_success(claim, prepared, canonical_json(outputs), outputs)
    if isinstance(follow_up, FollowUp) and follow_up.finalize:
        finalize_execution(api.db, claim.execution_id, signing_keys=runtime_of(api.celery_app).signing_keys)


def flaky_document(dag_id: str = "flaky") -> dict[str, Any]:
    """The adder DAG with ``total`` replaced by an agent that fails while the Switch is broken."""
    document = dag_document(dag_id, "Flaky")
    document["nodes"]["total"] = {
        "agent_id": "test.flaky", "depends_on": ["left", "right"], "input_mapping": {"a": "results.left.value"},
    }
    document["nodes"]["report"] = {
        "agent_id": "test.sum", "depends_on": ["total", "right"],
        "input_mapping": {"a": "results.total.value", "b": "results.right.value"},
    }
    return document


def montage_document(path: Path, dag_id: str, failing: frozenset[str] = frozenset()) -> dict[str, Any]:
    tasks = json.loads(path.read_text(encoding="utf-8"))["tasks"]
    nodes = {}
    for task in tasks:
        params: dict[str, Any] = {"node": task["id"]}
        if task["id"] in failing:
            params["fail"] = True
        nodes[task["id"]] = {"agent_id": "test.breakable", "params": params, "depends_on": sorted(task["parents"])}
    return {"dag_id": dag_id, "on_failure": "continue", "max_parallel_nodes": 16, "nodes": nodes}


# -- the page without a browser --------------------------------------------------------


def test_page_public_but_data_needs_token(make_api: Callable[..., Api]) -> None:  # noqa: F811
    api = make_api()
    api.register()
    execution_id = api.execute().get_json()["execution_id"]

    page = api.client.get("/dashboard/")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert f'<meta name="gl-api-base" content="{PREFIX}">' in html
    assert execution_id not in html
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"

    for name in ("app.js", "api.js", "graph.js", "layout.js", "dashboard.css"):
        with api.client.get(f"/dashboard/static/{name}") as asset:
            assert asset.status_code == 200, name
            assert asset.headers["Content-Security-Policy"] == policy

    assert api.client.get("/dashboard").status_code == 308
    assert api.client.get(f"{PREFIX}/executions").status_code == 401
    assert api.client.get(f"{PREFIX}/executions/{execution_id}").status_code == 401
    # The API app's own routes are unchanged: the dashboard is a separate app.
    assert all(rule.rule.startswith(PREFIX) for rule in api.app.url_map.iter_rules())


def test_page_under_path_prefix(make_api: Callable[..., Api]) -> None:  # noqa: F811
    api = make_api()
    page = api.client.get("/dashboard/", environ_overrides={"SCRIPT_NAME": "/orchestrator"})
    html = page.get_data(as_text=True)
    assert f'<meta name="gl-api-base" content="/orchestrator{PREFIX}">' in html
    assert 'src="/orchestrator/dashboard/static/app.js"' in html


# -- sign-in and the list ----------------------------------------------------------------


def test_login_rejects_wrong_token(dashboard: Dashboard) -> None:
    driver = dashboard.driver
    dashboard.register(dag_document())
    execution_id = dashboard.execute("adder")

    dashboard.sign_in("not-the-token")
    message = wait_for_element(driver, "#login-error")
    assert "401" in message.text
    assert driver.execute_script("return sessionStorage.length") == 0
    assert execution_id not in driver.page_source

    field_ = driver.find_element("css selector", "#login-token")
    field_.clear()
    field_.send_keys(TOKEN)
    driver.find_element("css selector", "#login-submit").click()
    wait_for_element(driver, f'tr[data-execution-id="{execution_id}"]')
    assert driver.execute_script("return sessionStorage.length") == 1

    driver.find_element("css selector", "#sign-out").click()
    wait_for_element(driver, "#login-token")
    assert driver.execute_script("return sessionStorage.length") == 0
    assert browser_errors(driver) == []


def test_list_shows_filters_and_pages(dashboard: Dashboard) -> None:
    driver = dashboard.driver
    api = dashboard.api
    dashboard.register(dag_document())
    dashboard.register(flaky_document())

    completed = dashboard.execute("adder")
    work_queued_nodes(api, completed)
    failed = dashboard.execute("flaky")
    work_queued_nodes(api, failed)
    running = dashboard.execute("adder", {"x": 7})
    claim_queued_nodes(api, running, 1)
    cancelled = dashboard.execute("adder", {"x": 8})
    assert dashboard.request("POST", f"/executions/{cancelled}/cancel").status_code == 200
    tampered = dashboard.execute("adder", {"x": 9})
    work_queued_nodes(api, tampered)
    api.db.transaction(lambda conn: conn.execute(
        update(EXECUTIONS).where(EXECUTIONS.c.execution_id == tampered).values(chain_valid=False)))
    pending = dashboard.execute("adder", {"x": 10})

    dashboard.sign_in()
    expected = {completed: "completed", failed: "failed", running: "running", cancelled: "cancelled",
                tampered: "completed", pending: "pending"}
    for execution_id in expected:
        wait_for_element(driver, f'tr[data-execution-id="{execution_id}"]')
    rows = driver.find_elements("css selector", "#executions tbody tr")
    assert [row.get_attribute("data-execution-id") for row in rows] == list(reversed(list(expected)))
    for row in rows:
        assert row.get_attribute("data-status") == expected[row.get_attribute("data-execution-id")]

    completed_row = driver.find_element("css selector", f'tr[data-execution-id="{completed}"]')
    assert completed_row.find_element("css selector", "td.dag").text == "adder"
    assert completed_row.find_element("css selector", "td.nodes").text.startswith("3/3")
    assert completed_row.find_element("css selector", "td.chain").get_attribute("data-chain-valid") == "true"
    assert re.fullmatch(r"\d+ ms|\d+\.\d s", completed_row.find_element("css selector", "td.age").text)
    tampered_row = driver.find_element("css selector", f'tr[data-execution-id="{tampered}"]')
    assert tampered_row.find_element("css selector", "td.chain").get_attribute("data-chain-valid") == "false"
    running_row = driver.find_element("css selector", f'tr[data-execution-id="{running}"]')
    assert running_row.find_element("css selector", "td.nodes").text.startswith("0/3")
    dashboard.screenshot("list")

    # Filters go into the address, so the filtered list can be shared.
    driver.find_element("css selector", "#filter-status option[value='failed']").click()
    driver.find_element("css selector", "#filters button[type='submit']").click()
    wait_until(driver, lambda d: len(d.find_elements("css selector", "#executions tbody tr[data-execution-id]")) == 1,
               "the failed filter")
    assert driver.find_element("css selector", "#executions tbody tr").get_attribute("data-execution-id") == failed
    assert "status=failed" in driver.current_url

    driver.get(f"{dashboard.dashboard_url}#/executions?dag_id=flaky&since=1h")
    wait_until(driver, lambda d: [r.get_attribute("data-execution-id")
                                  for r in d.find_elements("css selector", "#executions tbody tr")] == [failed],
               "the DAG and time filters")

    # An invalid filter gets the API's 400 in the error banner.
    driver.get(f"{dashboard.dashboard_url}#/executions?since=yesterday")
    banner = wait_for_element(driver, "#error-banner")
    assert banner.get_attribute("data-code") == "invalid_parameter"
    assert "since" in banner.text

    # Auto-refresh shows a new execution without a reload.
    driver.get(f"{dashboard.dashboard_url}#/executions")
    wait_for_element(driver, f'tr[data-execution-id="{pending}"]')
    driver.execute_script("window.sameDocument = true;")
    newest = dashboard.execute("adder", {"x": 11})
    wait_for_element(driver, f'tr[data-execution-id="{newest}"]')
    assert driver.execute_script("return window.sameDocument === true")

    # Pages of 50: 51 executions of one DAG make two pages.
    dashboard.register(dag_document("bulk", "Bulk"))
    bulk = [dashboard.execute("bulk", {"x": index}) for index in range(51)]
    driver.get(f"{dashboard.dashboard_url}#/executions?dag_id=bulk")
    wait_until(driver, lambda d: len(d.find_elements("css selector", "#executions tbody tr")) == 50, "the first page")
    first_page = [row.get_attribute("data-execution-id")
                  for row in driver.find_elements("css selector", "#executions tbody tr")]
    assert first_page == list(reversed(bulk))[:50]
    assert driver.find_element("css selector", "#page-newer").get_attribute("disabled") is not None
    driver.find_element("css selector", "#page-older").click()
    wait_until(driver, lambda d: len(d.find_elements("css selector", "#executions tbody tr")) == 1, "the second page")
    assert driver.find_element("css selector", "#executions tbody tr").get_attribute("data-execution-id") == bulk[0]
    assert driver.find_element("css selector", "#page-older").get_attribute("disabled") is not None
    driver.find_element("css selector", "#page-newer").click()
    wait_until(driver, lambda d: len(d.find_elements("css selector", "#executions tbody tr")) == 50, "the first page again")
    assert browser_errors(driver) == []


# -- the execution page --------------------------------------------------------------------


def test_execution_graph_colors_and_node_panel(dashboard: Dashboard) -> None:
    driver = dashboard.driver
    api = dashboard.api
    document = montage_document(MONTAGE_103, "montage-103", failing=frozenset({"mDiffFit_ID0000009"}))
    dashboard.register(document)
    execution_id = dashboard.execute("montage-103", {})
    work_queued_nodes(api, execution_id, max_nodes=60)
    claims = claim_queued_nodes(api, execution_id, 3)
    running = [claim.node_id for claim in claims]
    execution = dashboard.execution(execution_id)
    statuses = {node["node_id"]: node["status"] for node in execution["nodes"]}
    assert {"completed", "failed", "running", "queued", "waiting"} <= set(statuses.values())

    dashboard.sign_in()
    dashboard.open_execution(execution_id)
    graph = driver.find_element("css selector", "#graph")
    assert graph.get_attribute("data-renderer") == "svg"
    assert graph.get_attribute("data-node-count") == "103"
    assert graph.get_attribute("data-edge-count") == "231"
    assert text_of(driver, "#execution-status") == "running"

    drawn = {element.get_attribute("data-node-id"): element.get_attribute("data-status")
             for element in driver.find_elements("css selector", "#graph g.node")}
    assert drawn == statuses
    for status in set(statuses.values()):
        node_id = next(node for node, value in statuses.items() if value == status)
        assert node_fill(driver, node_id) == STATE_COLORS[status], (node_id, status)
    legend = {item.get_attribute("data-status"): item.find_element("css selector", ".legend-count").text
              for item in driver.find_elements("css selector", "#legend li")}
    assert legend["completed"] == str(list(statuses.values()).count("completed"))

    # A failed node shows its error as text, never as markup.
    click_node(driver, "mDiffFit_ID0000009")
    panel = wait_for_element(driver, "#node-panel")
    wait_until(driver, lambda d: d.find_element("css selector", "#node-panel").get_attribute("data-node-id")
               == "mDiffFit_ID0000009", "the failed node's panel")
    error_text = panel.find_element("css selector", "[data-field='error']").text
    assert error_text == "RuntimeError: mDiffFit_ID0000009: input image missing"
    assert "node=mDiffFit_ID0000009" in driver.current_url

    click_node(driver, running[0])
    wait_until(driver, lambda d: d.find_element("css selector", "#node-panel").get_attribute("data-node-id")
               == running[0], "the running node's panel")
    assert text_of(driver, "#node-panel [data-field='worker']") == "worker1@host-3 pid=4711 host=host-3"
    assert "No provenance record yet" in text_of(driver, "#node-provenance")

    # A search finds a node by part of its id, and the address selects one too.
    driver.find_element("css selector", "#node-search").send_keys("ID0000050\n")
    wait_until(driver, lambda d: d.find_element("css selector", "#node-panel").get_attribute("data-node-id")
               == "mDiffFit_ID0000050", "the searched node")
    assert text_of(driver, "#node-search-result") == "1 of 1"
    driver.execute_script("window.location.hash = arguments[0];",
                          f"#/executions/{execution_id}?node=mBgModel_ID0000024")
    wait_until(driver, lambda d: d.find_element("css selector", "#node-panel").get_attribute("data-node-id")
               == "mBgModel_ID0000024", "the node named in the address")

    # A completed node shows the hashes of its provenance record, verified.
    provenance = dashboard.request("GET", f"/executions/{execution_id}/provenance").json()
    record = next(node for node in provenance["nodes"] if node["node_id"] == "mProject_ID0000001")
    click_node(driver, "mProject_ID0000001")
    wait_until(driver, lambda d: d.find_element("css selector", "#node-panel [data-field='chain_hash']").text
               == record["chain_hash"], "the node's chain hash")
    assert text_of(driver, "#node-panel [data-field='input_hash']") == record["input_hash"]
    assert text_of(driver, "#node-panel [data-field='output_hash']") == record["output_hash"]
    assert text_of(driver, "#node-panel [data-field='valid']") == "✓ valid"
    assert text_of(driver, "#node-panel [data-field='worker']") == "browser-test pid=1 host=test"
    assert driver.find_element("css selector", "#node-panel #node-attempts tbody tr").get_attribute("data-attempt") == "1"
    selected = node_element(driver, "mProject_ID0000001").get_attribute("class")
    assert "selected" in selected.split()
    dashboard.screenshot("execution")

    # States update live: finish the run and watch the colours change without
    # a reload. Polls recolour the drawn nodes; they never draw them anew.
    driver.execute_script("window.sameDocument = true;")
    driver.execute_script("document.querySelectorAll('#graph g.node').forEach((node) => { node.drawnOnce = true; });")
    for claim in claims:
        finish_claim(api, claim)
    work_queued_nodes(api, execution_id)
    final = dashboard.execution(execution_id)
    assert final["status"] == "failed"
    wait_until(driver, lambda d: text_of(d, "#execution-status") == "failed", "the failed status")
    final_statuses = {node["node_id"]: node["status"] for node in final["nodes"]}
    wait_until(driver, lambda d: {element.get_attribute("data-node-id"): element.get_attribute("data-status")
                                  for element in d.find_elements("css selector", "#graph g.node")} == final_statuses,
               "every node's final state")
    assert node_fill(driver, running[0]) == STATE_COLORS["completed"]
    assert driver.execute_script("return window.sameDocument === true")
    assert driver.execute_script(
        "return [...document.querySelectorAll('#graph g.node')].every((node) => node.drawnOnce === true)")
    assert driver.execute_script("return window.injected === undefined")
    assert browser_errors(driver) == []


def test_cancel_running_execution(dashboard: Dashboard) -> None:
    driver = dashboard.driver
    dashboard.register(dag_document())
    execution_id = dashboard.execute("adder")
    claim_queued_nodes(dashboard.api, execution_id, 1)

    dashboard.sign_in()
    dashboard.open_execution(execution_id)
    assert text_of(driver, "#execution-status") == "running"
    assert node_element(driver, "left").get_attribute("data-status") == "running"
    assert node_fill(driver, "left") == STATE_COLORS["running"]
    assert driver.find_element("css selector", "#action-resume").get_attribute("disabled") is not None

    # Back closes the dialog and sends nothing.
    driver.find_element("css selector", "#action-cancel").click()
    dialog = wait_for_element(driver, "#confirm-dialog")
    assert execution_id in dialog.text
    dialog.find_element("css selector", "#confirm-back").click()
    wait_until(driver, lambda d: not d.find_element("css selector", "#confirm-dialog").is_displayed(), "the dialog")
    time.sleep(0.5)
    assert dashboard.execution(execution_id)["status"] == "running"

    driver.find_element("css selector", "#action-cancel").click()
    confirm_dialog(driver)
    wait_until(driver, lambda d: text_of(d, "#execution-status") == "cancelled", "the cancelled status")
    assert "Cancelled (was running)" in text_of(driver, "#notice")
    assert dashboard.execution(execution_id)["status"] == "cancelled"
    assert driver.find_element("css selector", "#action-cancel").get_attribute("disabled") is not None
    assert driver.find_element("css selector", "#action-resume").get_attribute("disabled") is None
    assert browser_errors(driver) == []


def test_resume_failed_execution_live(dashboard: Dashboard) -> None:
    driver = dashboard.driver
    api = dashboard.api
    dashboard.register(flaky_document())
    execution_id = dashboard.execute("flaky")
    work_queued_nodes(api, execution_id)
    assert dashboard.execution(execution_id)["status"] == "failed"

    dashboard.sign_in()
    dashboard.open_execution(execution_id)
    assert text_of(driver, "#execution-status") == "failed"
    assert node_fill(driver, "total") == STATE_COLORS["failed"]
    assert node_element(driver, "report").get_attribute("data-status") == "skipped"
    assert node_fill(driver, "report") == STATE_COLORS["skipped"]

    # The agent's error contains markup, which the panel shows as text.
    click_node(driver, "total")
    panel = wait_for_element(driver, "#node-panel")
    wait_until(driver, lambda d: d.find_element("css selector", "#node-panel").get_attribute("data-node-id") == "total",
               "the failed node's panel")
    assert panel.find_element("css selector", "[data-field='error']").text == f"RuntimeError: {MARKUP_ERROR}"
    assert panel.find_elements("css selector", "img, b") == []
    assert driver.execute_script("return window.injected === undefined")
    assert "<img" in text_of(driver, "#execution-fields [data-field='error']")
    assert driver.find_elements("css selector", "#execution-fields img, #execution-fields b") == []

    dashboard.switch.broken = False
    driver.execute_script("window.sameDocument = true;")
    driver.find_element("css selector", "#action-resume").click()
    dialog = wait_for_element(driver, "#confirm-dialog")
    assert dialog.find_element("css selector", "#confirm-checkbox").is_selected() is False
    assert "Re-run nodes whose checkpoint is corrupted" in dialog.text
    confirm_dialog(driver)
    wait_until(driver, lambda d: "Resumed: 2 node(s) run again, 2 reused" in text_of(d, "#notice"), "the resume notice")
    wait_until(driver, lambda d: node_element(d, "total").get_attribute("data-status") == "queued",
               "the resumed node to be queued")

    # A worker runs the nodes slowly; the page follows without a reload.
    worker = threading.Thread(target=work_queued_nodes, args=(api, execution_id), kwargs={"pause_seconds": 1.0})
    dashboard.worker_threads.append(worker)
    worker.start()
    wait_until(driver, lambda d: node_element(d, "total").get_attribute("data-status") == "completed",
               "the resumed node to complete")
    wait_until(driver, lambda d: text_of(d, "#execution-status") == "completed", "the completed status")
    worker.join(timeout=30)
    assert node_fill(driver, "total") == STATE_COLORS["completed"]
    assert node_fill(driver, "report") == STATE_COLORS["completed"]
    assert text_of(driver, "#execution-fields [data-field='chain_valid']") == "✓ valid"
    # The open panel follows the node: a second attempt, and now hashes.
    wait_until(driver, lambda d: len(d.find_elements("css selector", "#node-attempts tbody tr[data-attempt]")) == 2,
               "the second attempt in the panel")
    wait_until(driver, lambda d: len(text_of(d, "#node-panel [data-field='chain_hash']")) == 64, "the chain hash")
    assert driver.execute_script("return window.sameDocument === true")
    assert browser_errors(driver) == []


def test_verify_and_resume_corrupted_checkpoint(dashboard: Dashboard) -> None:
    driver = dashboard.driver
    api = dashboard.api
    dashboard.register(dag_document())
    execution_id = dashboard.execute("adder")
    work_queued_nodes(api, execution_id)
    api.db.transaction(lambda conn: conn.execute(
        update(CHECKPOINTS).where(CHECKPOINTS.c.execution_id == execution_id, CHECKPOINTS.c.node_id == "right")
        .values(outputs={"value": 11})))

    dashboard.sign_in()
    dashboard.open_execution(execution_id)
    driver.find_element("css selector", "#action-verify").click()
    result = wait_for_element(driver, "#verify-result")
    assert result.get_attribute("data-chain-valid") == "false"
    broken = driver.find_elements("css selector", "#broken-nodes li")
    assert [item.get_attribute("data-node-id") for item in broken] == ["right"]
    assert "output altered" in broken[0].text
    assert "broken" in node_element(driver, "right").get_attribute("class").split()
    broken[0].find_element("css selector", "button").click()
    wait_until(driver, lambda d: text_of(d, "#node-panel [data-field='valid']") == "✗ invalid", "the invalid node")
    assert "output altered" in text_of(driver, "#node-panel [data-field='reasons']")

    # Without rerun_corrupted, resume stops with the API's 409, shown as it is.
    driver.find_element("css selector", "#action-resume").click()
    confirm_dialog(driver)
    banner = wait_for_element(driver, "#error-banner")
    assert banner.get_attribute("data-code") == "checkpoint_integrity_failed"
    assert "checkpoint integrity verification failed" in banner.text
    assert "request id" in banner.text
    assert dashboard.execution(execution_id)["status"] == "completed"

    driver.find_element("css selector", "#action-resume").click()
    confirm_dialog(driver, check_option=True)
    wait_until(driver, lambda d: "Resumed: 2 node(s) run again, 1 reused" in text_of(d, "#notice"), "the resume notice")
    assert not driver.find_element("css selector", "#error-banner").is_displayed()
    work_queued_nodes(api, execution_id)
    wait_until(driver, lambda d: text_of(d, "#execution-status") == "completed", "the completed status")
    driver.find_element("css selector", "#action-verify").click()
    wait_until(driver, lambda d: d.find_element("css selector", "#verify-result").get_attribute("data-chain-valid")
               == "true", "a valid chain")
    assert driver.find_elements("css selector", "#broken-nodes li") == []
    assert browser_errors(driver) == []


def test_export_downloads_audit_bundle(dashboard: Dashboard, downloads: Path) -> None:
    driver = dashboard.driver
    dashboard.register(dag_document())
    execution_id = dashboard.execute("adder")
    work_queued_nodes(dashboard.api, execution_id)

    dashboard.sign_in()
    dashboard.open_execution(execution_id)
    driver.find_element("css selector", "#action-export").click()
    target = downloads / f"audit-{execution_id}.json"
    wait_until(driver, lambda d: target.exists() and target.stat().st_size > 0, f"{target.name} to be downloaded")
    bundle = json.loads(target.read_text(encoding="utf-8"))
    assert bundle["bundle_format"] == "gl-audit-bundle-v1"
    assert bundle["execution"]["execution_id"] == execution_id
    assert sorted(node["node_id"] for node in bundle["nodes"]) == ["left", "right", "total"]
    assert f"audit-{execution_id}.json" in text_of(driver, "#notice")


def test_expired_token_returns_to_login(dashboard: Dashboard) -> None:
    driver = dashboard.driver
    dashboard.register(dag_document())
    execution_id = dashboard.execute("adder")
    dashboard.sign_in()
    wait_for_element(driver, f'tr[data-execution-id="{execution_id}"]')

    # A token that the API stops accepting, such as one removed from its settings.
    driver.execute_script("sessionStorage.setItem('gl-orchestrator.token', 'revoked-token');")
    driver.get(f"{dashboard.dashboard_url}#/executions/{execution_id}")
    message = wait_for_element(driver, "#login-error")
    assert "rejected the stored token" in message.text
    assert driver.execute_script("return sessionStorage.length") == 0


# -- the GHG example ----------------------------------------------------------------------------


def page_statuses(driver: Any) -> dict[str, str]:
    return {element.get_attribute("data-node-id"): element.get_attribute("data-status")
            for element in driver.find_elements("css selector", "#graph g.node")}


def test_ghg_example_live(dashboard: Dashboard) -> None:
    """Run the GHG inventory example one node at a time while its execution page is open."""
    driver = dashboard.driver
    api = dashboard.api
    _import_agents(GHG_EXAMPLE, api.registry, "ghg_inventory_agents_for_dashboard")
    document = yaml.safe_load((GHG_EXAMPLE / "dag.yaml").read_text(encoding="utf-8"))
    assert tuple(document["nodes"]) == GHG_NODE_ORDER
    dashboard.register(document)
    input_data = json.loads((GHG_EXAMPLE / "input.json").read_text(encoding="utf-8"))
    execution_id = dashboard.execute("ghg-inventory", input_data)

    dashboard.sign_in()
    dashboard.open_execution(execution_id)
    assert text_of(driver, "#execution-status") == "pending"
    assert page_statuses(driver) == {
        "load_activity": "queued", "load_emission_factors": "queued", "co2": "waiting", "ch4": "waiting",
        "n2o": "waiting", "co2e": "waiting", "scope1_totals": "waiting",
    }
    driver.execute_script("window.sameDocument = true;")
    driver.execute_script("document.querySelectorAll('#graph g.node').forEach((node) => { node.drawnOnce = true; });")

    # One node runs at a time. Each step ends the running node and starts the
    # next one, and the page must show both changes before the next step.
    running: Claim | None = None
    for node_id in (*GHG_NODE_ORDER, None):
        ended = None
        if running is not None:
            finish_claim(api, running)
            ended = running.node_id
        running = claim_node(api, execution_id, node_id) if node_id is not None else None
        expected = {node["node_id"]: node["status"] for node in dashboard.execution(execution_id)["nodes"]}
        if ended is not None:
            assert expected[ended] == "completed"
        if node_id is not None:
            assert expected[node_id] == "running"
        step = f"the node states after ended={ended} started={node_id}"
        wait_until(driver, lambda d: page_statuses(d) == expected, step)
        for drawn_id, status in expected.items():
            assert node_fill(driver, drawn_id) == STATE_COLORS[status], (step, drawn_id, status)
        if node_id == "co2":
            assert text_of(driver, "#execution-status") == "running"
            assert sorted(expected.values()) == ["completed", "completed", "queued", "queued", "running",
                                                 "waiting", "waiting"]
            dashboard.screenshot("ghg-live")

    final = dashboard.execution(execution_id)
    assert final["status"] == "completed"
    assert final["chain_valid"] is True
    wait_until(driver, lambda d: text_of(d, "#execution-status") == "completed", "the completed status")
    assert text_of(driver, "#execution-fields [data-field='chain_valid']") == "✓ valid"
    assert text_of(driver, "#execution-fields [data-field='nodes_done']") == "7 of 7"
    assert text_of(driver, "#execution-fields [data-field='provenance_chain_hash']") == final["provenance_chain_hash"]
    assert driver.execute_script("return window.sameDocument === true")
    assert driver.execute_script(
        "return [...document.querySelectorAll('#graph g.node')].every((node) => node.drawnOnce === true)")
    assert browser_errors(driver) == []


# -- a large DAG -------------------------------------------------------------------------------


def test_large_montage_dag(dashboard: Dashboard, record_property: Callable[[str, object], None]) -> None:
    driver = dashboard.driver
    api = dashboard.api
    document = montage_document(MONTAGE_2122, "montage-2122", failing=frozenset({"mDiffFit_ID0000120"}))
    assert len(document["nodes"]) == 2122
    dashboard.register(document)
    execution_id = dashboard.execute("montage-2122", {})
    work_queued_nodes(api, execution_id, max_nodes=220)
    claim_queued_nodes(api, execution_id, 8)
    failed = [node["node_id"] for node in dashboard.execution(execution_id)["nodes"] if node["status"] == "failed"]
    assert failed == ["mDiffFit_ID0000120"]

    dashboard.sign_in()
    wait_for_element(driver, f'tr[data-execution-id="{execution_id}"]')
    started = time.monotonic()
    driver.get(f"{dashboard.dashboard_url}#/executions/{execution_id}")
    wait_until(driver, lambda d: d.find_element("css selector", "#graph").get_attribute("data-render-ms"),
               "the large graph to be drawn", timeout=LARGE_DAG_WAIT_SECONDS)
    page_seconds = time.monotonic() - started
    graph = driver.find_element("css selector", "#graph")
    assert graph.get_attribute("data-renderer") == "canvas"
    assert graph.get_attribute("data-node-count") == "2122"
    assert graph.get_attribute("data-edge-count") == "6114"
    render_ms = float(graph.get_attribute("data-render-ms"))
    record_property("large_dag_render_ms", render_ms)
    record_property("large_dag_page_seconds", round(page_seconds, 2))
    print(f"\nmontage-2122: layout and first drawing {render_ms:.0f} ms in the page; "
          f"{page_seconds:.2f} s from navigation to a drawn graph")

    legend = {item.get_attribute("data-status"): int(item.find_element("css selector", ".legend-count").text)
              for item in driver.find_elements("css selector", "#legend li")}
    assert sum(legend.values()) == 2122
    assert legend["running"] == 8
    assert legend["failed"] == 1

    # The failed node's pixels have the failed colour: a search centres it.
    driver.find_element("css selector", "#node-search").send_keys("mDiffFit_ID0000120\n")
    wait_until(driver, lambda d: d.find_element("css selector", "#node-panel").get_attribute("data-node-id")
               == "mDiffFit_ID0000120", "the searched node's panel")
    assert text_of(driver, "#node-search-result") == "1 of 1"
    assert driver.find_element("css selector", "#node-panel").get_attribute("data-status") == "failed"
    centre = driver.execute_script("""
        const canvas = document.querySelectorAll('#graph canvas')[1];
        const context = canvas.getContext('2d');
        // Above the middle of the box, where the label is not drawn.
        const ratio = window.devicePixelRatio || 1;
        const x = Math.floor(canvas.width / 2);
        const y = Math.floor(canvas.height / 2 - 15 * ratio);
        const pixel = context.getImageData(x, y, 1, 1).data;
        return `rgb(${pixel[0]}, ${pixel[1]}, ${pixel[2]})`;
    """)
    assert centre == STATE_COLORS["failed"]

    # A partial id matches many nodes; Enter steps through them.
    search = driver.find_element("css selector", "#node-search")
    search.clear()
    search.send_keys("mConcatFit\n")
    wait_until(driver, lambda d: text_of(d, "#node-search-result") == "1 of 3", "three matches")
    search.send_keys("\n")
    wait_until(driver, lambda d: text_of(d, "#node-search-result") == "2 of 3", "the second match")
    assert driver.find_element("css selector", "#node-panel").get_attribute("data-node-id").startswith("mConcatFit")

    # A poll repaints the nodes that changed and leaves the edge layer alone.
    driver.find_element("css selector", "#node-panel .panel-close").click()
    driver.find_element("css selector", "#graph-fit").click()
    driver.execute_async_script("const done = arguments[0]; "
                                "requestAnimationFrame(() => requestAnimationFrame(() => done()));")
    driver.execute_script("""
        const [edges, nodes] = document.querySelectorAll('#graph canvas');
        window.edgeStrokes = 0;
        window.nodeClears = { whole: 0, part: 0 };
        const edgeContext = edges.getContext('2d');
        const stroke = edgeContext.stroke.bind(edgeContext);
        edgeContext.stroke = (...args) => { window.edgeStrokes += 1; return stroke(...args); };
        const nodeContext = nodes.getContext('2d');
        const clearRect = nodeContext.clearRect.bind(nodeContext);
        nodeContext.clearRect = (x, y, width, height) => {
            window.nodeClears[width >= nodes.clientWidth ? 'whole' : 'part'] += 1;
            return clearRect(x, y, width, height);
        };
    """)
    done_before = legend["completed"]
    work_queued_nodes(api, execution_id, max_nodes=40)
    wait_until(driver, lambda d: int(d.find_element("css selector", "#legend li[data-status='completed'] .legend-count")
                                     .text) >= done_before + 40, "the new completed nodes", timeout=LARGE_DAG_WAIT_SECONDS)
    assert driver.execute_script("return window.edgeStrokes") == 0
    clears = driver.execute_script("return window.nodeClears")
    assert clears["whole"] == 0
    assert clears["part"] > 0
    dashboard.screenshot("large-dag")
    assert browser_errors(driver) == []


def test_montage_replay_page(dashboard: Dashboard, record_property: Callable[[str, object], None]) -> None:
    """Run montage-2122 to its end, replay it, and open the finished replay's page."""
    driver = dashboard.driver
    api = dashboard.api
    dashboard.register(montage_document(MONTAGE_2122, "montage-2122"))
    original_id = dashboard.execute("montage-2122", {})
    started = time.monotonic()
    assert work_queued_nodes(api, original_id) == 2122
    original_seconds = time.monotonic() - started
    original = dashboard.execution(original_id)
    assert original["status"] == "completed"

    response = dashboard.request("POST", f"/executions/{original_id}/replay")
    assert response.status_code == 202, response.text
    assert response.json()["replay_of"] == original_id
    replay_id = str(response.json()["execution_id"])
    started = time.monotonic()
    assert work_queued_nodes(api, replay_id) == 2122
    replay_seconds = time.monotonic() - started
    record_property("montage_original_run_seconds", round(original_seconds, 1))
    record_property("montage_replay_run_seconds", round(replay_seconds, 1))
    print(f"\nmontage-2122 in this process: original run {original_seconds:.1f} s, replay run {replay_seconds:.1f} s "
          f"({2 * 2122 / (original_seconds + replay_seconds):.0f} nodes per second)")
    replay = dashboard.execution(replay_id)
    assert replay["status"] == "completed"
    assert replay["chain_valid"] is True
    report = dashboard.request("GET", f"/executions/{replay_id}/replay-report")
    assert report.status_code == 200, report.text
    assert report.json()["matches"] is True

    dashboard.sign_in()
    wait_for_element(driver, f'tr[data-execution-id="{replay_id}"]')
    driver.get(f"{dashboard.dashboard_url}#/executions/{replay_id}")
    wait_until(driver, lambda d: d.find_element("css selector", "#graph").get_attribute("data-render-ms"),
               "the large graph to be drawn", timeout=LARGE_DAG_WAIT_SECONDS)
    assert text_of(driver, "#execution-status") == "completed"
    assert text_of(driver, "#execution-fields [data-field='nodes_done']") == "2122 of 2122"
    assert text_of(driver, "#execution-fields [data-field='chain_valid']") == "✓ valid"
    assert text_of(driver, "#execution-fields [data-field='provenance_chain_hash']") == replay["provenance_chain_hash"]
    graph = driver.find_element("css selector", "#graph")
    assert graph.get_attribute("data-renderer") == "canvas"
    assert graph.get_attribute("data-node-count") == "2122"
    legend = {item.get_attribute("data-status"): item.find_element("css selector", ".legend-count").text
              for item in driver.find_elements("css selector", "#legend li")}
    assert legend["completed"] == "2122"
    assert sum(int(count) for count in legend.values()) == 2122
    link = driver.find_element("css selector", "#execution-fields [data-field='replay_of'] a")
    assert link.text == original_id
    assert link.get_attribute("href") == f"{dashboard.dashboard_url}#/executions/{original_id}"
    dashboard.screenshot("montage-replay")

    # The link opens the original, which is not a replay itself.
    link.click()
    wait_until(driver, lambda d: text_of(d, "h1 code") == original_id, "the original's page")
    wait_until(driver, lambda d: d.find_element("css selector", "#graph").get_attribute("data-render-ms"),
               "the original's graph to be drawn", timeout=LARGE_DAG_WAIT_SECONDS)
    assert text_of(driver, "#execution-status") == "completed"
    assert driver.find_elements("css selector", "#execution-fields [data-field='replay_of']") == []
    assert browser_errors(driver) == []
