"""Tests of the REST API with Flask's test client on migrated SQLite and PostgreSQL databases.

The Celery app uses kombu's in-memory transport (``memory://``) and no worker
runs: these tests check the API's own behaviour, including the node messages
it sends. The end-to-end path with real workers is covered in
tests/integration. Where a test needs finished nodes, ``run_queued_nodes``
plays the worker's part in this process through the Scheduler. The test of
concurrent health probes runs a threaded Werkzeug server with a Redis broker.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
import yaml
from flask.testing import FlaskClient
from kombu.exceptions import KombuError
from prometheus_client import REGISTRY
from sqlalchemy import select, update
from werkzeug.serving import make_server

from api import create_app
from api.openapi import openapi_document
from orchestrator.agents import AgentRegistry
from orchestrator.dag import parse_dag
from orchestrator.database import Database
from orchestrator.errors import SettingsError
from orchestrator.finalizer import finalize_execution
from orchestrator.hashing import canonical_json
from orchestrator.logs import TextFormatter
from orchestrator.models import CheckpointRow, ExecutionNodeRow, ExecutionRow
from orchestrator.scheduler import Scheduler
from orchestrator.settings import Settings
from workers.app import NODE_TASK, create_celery_app, runtime_of
from workers.dispatch import send_follow_up

PREFIX = "/api/v1/orchestrator"
TOKEN = "test-token-4f1c2a"
SECOND_TOKEN = "second-token-9b7e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXECUTIONS = ExecutionRow.__table__
NODES = ExecutionNodeRow.__table__
CHECKPOINTS = CheckpointRow.__table__
# A probe waits about WORKER_PING_TIMEOUT_SECONDS (1 s) for worker replies, so
# this bound is generous, but a deadlocked server never meets it.
HEALTH_PROBE_BOUND_SECONDS = 15.0


def make_registry() -> AgentRegistry:
    registry = AgentRegistry()
    registry.register("test.source", "1.0.0", lambda inputs, params: {"value": inputs["x"]})
    registry.register("test.constant", "1.0.0", lambda inputs, params: {"value": params["value"]})
    registry.register("test.sum", "1.0.0", lambda inputs, params: {"value": inputs["a"] + inputs["b"]})
    return registry


def dag_document(dag_id: str = "adder", name: str = "Adder") -> dict[str, Any]:
    """Two roots and one child, so an execution queues two nodes at once."""
    return {
        "dag_id": dag_id,
        "name": name,
        "version": "1.0.0",
        "nodes": {
            "left": {"agent_id": "test.source", "input_mapping": {"x": "input.x"}},
            "right": {"agent_id": "test.constant", "params": {"value": 10}},
            "total": {
                "agent_id": "test.sum",
                "depends_on": ["left", "right"],
                "input_mapping": {"a": "results.left.value", "b": "results.right.value"},
            },
        },
    }


def make_settings(tmp_path: Path, database_url: str, queue: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": tmp_path,
        "database_url": database_url,
        "broker_url": "memory://",
        "result_backend": None,
        "embedded": False,
        "api_token_hashes": frozenset(hashlib.sha256(t.encode()).hexdigest() for t in (TOKEN, SECOND_TOKEN)),
        "default_queue": queue,
    }
    values.update(overrides)
    return Settings(**values)


class Api:
    """A test client plus the Celery app and database behind it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = make_registry()
        self.celery_app = create_celery_app(settings, registry=self.registry)
        self.app = create_app(settings, celery_app=self.celery_app, registry=self.registry)
        self.client: FlaskClient = self.app.test_client()
        self.db: Database = runtime_of(self.celery_app).db
        self.scheduler: Scheduler = runtime_of(self.celery_app).scheduler

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.client.get(PREFIX + path, headers={**AUTH, **kwargs.pop("headers", {})}, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.client.post(PREFIX + path, headers={**AUTH, **kwargs.pop("headers", {})}, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.client.put(PREFIX + path, headers={**AUTH, **kwargs.pop("headers", {})}, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.client.delete(PREFIX + path, headers={**AUTH, **kwargs.pop("headers", {})}, **kwargs)

    def register(self, document: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.post("/dags", json=document or dag_document())
        assert response.status_code in (200, 201), response.get_json()
        return dict(response.get_json())

    def execute(self, dag_id: str = "adder", input_data: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        return self.post(f"/dags/{dag_id}/execute", json={"input_data": input_data or {"x": 5}}, **kwargs)

    def execution_count(self) -> int:
        with self.db.connect() as conn:
            return len(conn.execute(select(EXECUTIONS.c.execution_id)).all())

    def sent_messages(self) -> list[Any]:
        """Drain the in-memory queue and return the messages found."""
        messages = []
        with self.celery_app.connection_for_read() as connection:
            queue = connection.SimpleQueue(self.settings.default_queue)
            try:
                while True:
                    message = queue.get(block=False)
                    message.ack()
                    messages.append(message)
            except queue.Empty:
                pass
            finally:
                queue.close()
        return messages

    def close(self) -> None:
        self.celery_app.close()
        self.db.dispose()


@pytest.fixture
def make_api(tmp_path: Path, sqlite_url: str, unique_queue: str) -> Iterator[Callable[..., Api]]:
    """Build an Api on the test's SQLite database unless a database_url is given."""
    built: list[Api] = []

    def make(database_url: str | None = None, **overrides: Any) -> Api:
        api = Api(make_settings(tmp_path, database_url or sqlite_url, unique_queue, **overrides))
        built.append(api)
        return api

    yield make
    for api in built:
        api.close()


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    return make_api()


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """Check the status and the shape of the error body, and return the error object."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert response.headers.get("X-Request-ID")
    return dict(body["error"])


def run_queued_nodes(api: Api, execution_id: str, before_finalize: Callable[[], None] | None = None) -> None:
    """Run every queued node of the execution in this process until it is finalized."""
    while True:
        with api.db.connect() as conn:
            queued = conn.execute(
                select(NODES.c.node_id, NODES.c.task_id)
                .where(NODES.c.execution_id == execution_id, NODES.c.status == "queued")
                .order_by(NODES.c.ordinal)
            ).all()
        if not queued:
            break
        for node_id, task_id in queued:
            claim = api.scheduler.claim(execution_id, node_id, task_id, worker="test")
            prepared = api.scheduler.prepare(claim)
            assert not isinstance(prepared, str)
            outputs = prepared.agent(prepared.inputs, prepared.params)
            follow_up = api.scheduler.record_success(claim, prepared, canonical_json(outputs), outputs)
            if follow_up.finalize:
                if before_finalize is not None:
                    before_finalize()
                finalize_execution(api.db, execution_id, signing_keys=runtime_of(api.celery_app).signing_keys)


def metric_value(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


# -- app factory and auth -----------------------------------------------------


def test_create_app_without_tokens(tmp_path: Path, sqlite_url: str, unique_queue: str) -> None:
    settings = make_settings(tmp_path, sqlite_url, unique_queue, api_token_hashes=frozenset())
    with pytest.raises(SettingsError) as caught:
        create_app(settings, registry=make_registry())
    assert "GL_ORCHESTRATOR_API_TOKENS" in str(caught.value)
    assert "GL_ORCHESTRATOR_API_TOKENS_FILE" in str(caught.value)


def test_auth_missing_header(api: Api) -> None:
    response = api.client.get(f"{PREFIX}/dags")
    error = assert_error(response, 401, "unauthorized")
    assert error["details"] is None
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", [
    f"Bearer {TOKEN}x",
    "Bearer ",
    "Bearer",
    f"Basic {TOKEN}",
    f"Token {TOKEN}",
    TOKEN,
    f"Bearer {hashlib.sha256(TOKEN.encode()).hexdigest()}",
])
def test_auth_rejected(api: Api, header: str) -> None:
    for method, path in (("GET", "/dags"), ("POST", "/dags"), ("GET", "/metrics"), ("GET", "/openapi.json"),
                         ("GET", "/executions/unknown"), ("GET", "/no-such-route")):
        response = api.client.open(PREFIX + path, method=method, headers={"Authorization": header})
        assert_error(response, 401, "unauthorized")


def test_auth_accepts_each_token(api: Api) -> None:
    for token in (TOKEN, SECOND_TOKEN):
        response = api.client.get(f"{PREFIX}/dags", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
    response = api.client.get(f"{PREFIX}/dags", headers={"Authorization": f"bearer   {TOKEN}"})
    assert response.status_code == 200


def test_auth_token_never_logged(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    api.client.get(f"{PREFIX}/dags", headers={"Authorization": f"Bearer {TOKEN}-wrong"})
    api.client.get(f"{PREFIX}/dags", headers=AUTH)
    assert TOKEN not in caplog.text


def test_health_needs_no_token(api: Api) -> None:
    response = api.client.get(f"{PREFIX}/health")
    assert response.status_code == 200
    assert response.headers.get("X-Request-ID")


def test_request_id_echoed_or_generated(api: Api) -> None:
    echoed = api.get("/dags", headers={"X-Request-ID": "abc-123.x:y"})
    assert echoed.headers["X-Request-ID"] == "abc-123.x:y"
    for bad in ("has space", "x" * 200, "semi;colon", ""):
        replaced = api.get("/dags", headers={"X-Request-ID": bad})
        assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["X-Request-ID"])
    unauthorized = api.client.get(f"{PREFIX}/dags", headers={"X-Request-ID": "req-401"})
    assert unauthorized.headers["X-Request-ID"] == "req-401"


# -- DAGs -------------------------------------------------------------------


def test_post_dag_json(api: Api) -> None:
    document = dag_document()
    response = api.post("/dags", json=document)
    assert response.status_code == 201
    body = response.get_json()
    expected = parse_dag(document, api.registry)
    assert body["dag_id"] == "adder"
    assert body["dag_hash"] == expected.dag_hash
    assert body["definition"] == expected.document
    assert body["status"] == "active"
    assert body["registration"] == "created"
    assert response.headers["Location"] == f"{PREFIX}/dags/adder"


def test_post_dag_yaml(api: Api) -> None:
    text = yaml.safe_dump(dag_document())
    for media_type in ("application/yaml", "application/x-yaml"):
        response = api.post("/dags", data=text, headers={"Content-Type": media_type})
        assert response.status_code in (200, 201)
        assert response.get_json()["dag_hash"] == parse_dag(dag_document(), api.registry).dag_hash


def test_post_dag_invalid_yaml(api: Api) -> None:
    response = api.post("/dags", data="dag_id: [unclosed\n", headers={"Content-Type": "application/yaml"})
    error = assert_error(response, 400, "invalid_yaml")
    assert "line" in error["message"]
    assert error["details"]["problems"][0]["code"] == "parse_error"


def test_post_dag_identical_again(api: Api) -> None:
    api.register()
    response = api.post("/dags", json=dag_document())
    assert response.status_code == 200
    assert response.get_json()["registration"] == "unchanged"


def test_post_dag_conflict(api: Api) -> None:
    first = api.register()
    response = api.post("/dags", json=dag_document(name="Something else"))
    error = assert_error(response, 409, "conflict")
    assert error["details"]["stored_dag_hash"] == first["dag_hash"]
    assert "PUT" in error["message"]
    assert api.get("/dags/adder").get_json()["name"] == "Adder"


def test_post_dag_lists_every_problem(api: Api) -> None:
    document = dag_document()
    document["nodes"]["left"]["agent_id"] = "test.missing"
    document["nodes"]["right"]["depends_on"] = ["total"]
    before_agent = metric_value("gl_orchestrator_dag_validation_errors_total", {"error_type": "unknown_agent"})
    response = api.post("/dags", json=document)
    error = assert_error(response, 400, "dag_invalid")
    problems = error["details"]["problems"]
    codes = {problem["code"] for problem in problems}
    assert "unknown_agent" in codes
    assert len(problems) >= 2
    assert all(set(problem) == {"code", "message", "node_ids"} for problem in problems)
    after_agent = metric_value("gl_orchestrator_dag_validation_errors_total", {"error_type": "unknown_agent"})
    assert after_agent == before_agent + 1
    assert api.get("/dags/adder").status_code == 404


@pytest.mark.parametrize(("body", "content_type", "status", "code"), [
    (b"", "application/json", 400, "invalid_request"),
    (b"[1, 2]", "application/json", 400, "invalid_request"),
    (b"{", "application/json", 400, "invalid_json"),
    (b"dag_id: x", "text/plain", 415, "unsupported_media_type"),
])
def test_post_dag_bad_body(api: Api, body: bytes, content_type: str, status: int, code: str) -> None:
    assert_error(api.post("/dags", data=body, headers={"Content-Type": content_type}), status, code)


def test_get_dags(api: Api) -> None:
    api.register()
    api.register(dag_document("other", "Other"))
    body = api.get("/dags").get_json()
    assert [item["dag_id"] for item in body["items"]] == ["adder", "other"]
    assert "definition" not in body["items"][0]
    assert_error(api.get("/dags?include_retired=maybe"), 400, "invalid_parameter")
    assert_error(api.get("/dags?colour=red"), 400, "invalid_parameter")


def test_get_dag(api: Api) -> None:
    stored = api.register()
    body = api.get("/dags/adder").get_json()
    assert body["dag_hash"] == stored["dag_hash"]
    assert body["definition"]["nodes"]["total"]["depends_on"] == ["left", "right"]
    error = assert_error(api.get("/dags/missing"), 404, "dag_not_found")
    assert error["details"] == {"dag_id": "missing"}


def test_put_dag(api: Api) -> None:
    created = api.put("/dags/adder", json=dag_document())
    assert created.status_code == 201
    replaced = api.put("/dags/adder", json=dag_document(name="Renamed"))
    assert replaced.status_code == 200
    assert replaced.get_json()["registration"] == "updated"
    assert replaced.get_json()["dag_hash"] != created.get_json()["dag_hash"]
    assert api.get("/dags/adder").get_json()["name"] == "Renamed"


def test_put_dag_id_mismatch(api: Api) -> None:
    error = assert_error(api.put("/dags/other", json=dag_document()), 400, "invalid_request")
    assert error["details"] == {"path_dag_id": "other", "document_dag_id": "adder"}


def test_delete_dag_without_executions(api: Api) -> None:
    api.register()
    response = api.delete("/dags/adder")
    assert response.status_code == 200
    assert response.get_json() == {"dag_id": "adder", "status": "deleted"}
    assert_error(api.get("/dags/adder"), 404, "dag_not_found")
    assert_error(api.delete("/dags/adder"), 404, "dag_not_found")


def test_delete_dag_with_executions_retires(api: Api) -> None:
    api.register()
    execution_id = api.execute().get_json()["execution_id"]
    response = api.delete("/dags/adder")
    assert response.get_json() == {"dag_id": "adder", "status": "retired"}
    assert api.get("/dags/adder").get_json()["status"] == "retired"
    assert api.get("/dags").get_json()["items"] == []
    assert [d["dag_id"] for d in api.get("/dags?include_retired=true").get_json()["items"]] == ["adder"]
    assert api.get(f"/executions/{execution_id}").status_code == 200
    assert [i["execution_id"] for i in api.get("/executions?dag_id=adder").get_json()["items"]] == [execution_id]
    assert_error(api.execute(), 409, "dag_retired")


def test_validate_stored_dag(api: Api) -> None:
    stored = api.register()
    body = api.post("/dags/adder/validate").get_json()
    assert body == {
        "valid": True, "dag_id": "adder", "source": "stored", "dag_hash": stored["dag_hash"],
        "stored_dag_hash": stored["dag_hash"], "problems": [],
    }


def test_validate_body_with_problems(api: Api) -> None:
    document = dag_document()
    document["nodes"]["total"]["depends_on"] = ["left", "ghost"]
    before = metric_value("gl_orchestrator_dag_validation_errors_total", {"error_type": "unknown_dependency"})
    response = api.post("/dags/adder/validate", json=document)
    assert response.status_code == 200
    body = response.get_json()
    assert body["valid"] is False
    assert body["source"] == "body"
    assert body["dag_hash"] is None
    assert body["stored_dag_hash"] is None
    assert body["problems"]
    assert any("ghost" in problem["message"] for problem in body["problems"])
    after = metric_value("gl_orchestrator_dag_validation_errors_total", {"error_type": "unknown_dependency"})
    assert after > before


def test_validate_against_current_registry(api: Api) -> None:
    api.register()
    # As if the module that registers test.sum were no longer imported.
    api.registry._agents.pop("test.sum")
    body = api.post("/dags/adder/validate").get_json()
    assert body["valid"] is False
    assert [problem["node_ids"] for problem in body["problems"]] == [["total"]]
    error = assert_error(api.execute(), 409, "dag_invalid")
    assert error["details"]["problems"]


def test_validate_unknown_dag(api: Api) -> None:
    assert_error(api.post("/dags/missing/validate"), 404, "dag_not_found")
    assert api.post("/dags/adder/validate", json=dag_document()).get_json()["valid"] is True


# -- execute ----------------------------------------------------------------


def test_execute_accepted(api: Api) -> None:
    stored = api.register()
    response = api.post("/dags/adder/execute", json={
        "input_data": {"x": 5}, "execution_options": {"checkpoint_enabled": True, "deterministic_mode": True},
    })
    assert response.status_code == 202
    body = response.get_json()
    execution_id = body["execution_id"]
    assert body["status"] == "pending"
    assert body["dag_hash"] == stored["dag_hash"]
    assert body["links"] == {
        "self": f"{PREFIX}/executions/{execution_id}",
        "provenance": f"{PREFIX}/executions/{execution_id}/provenance",
        "checkpoints": f"{PREFIX}/executions/{execution_id}/checkpoints",
        "audit_export": f"{PREFIX}/executions/{execution_id}/audit-export",
    }
    assert response.headers["Location"] == body["links"]["self"]

    with api.db.connect() as conn:
        execution = conn.execute(select(EXECUTIONS).where(EXECUTIONS.c.execution_id == execution_id)).mappings().one()
        nodes = {row.node_id: row for row in conn.execute(select(NODES).where(NODES.c.execution_id == execution_id))}
    assert execution["status"] == "pending"
    assert execution["input_data"] == {"x": 5}
    assert execution["execution_options"] == {"checkpoint_enabled": True, "deterministic_mode": True}
    assert nodes["left"].status == "queued"
    assert nodes["right"].status == "queued"
    assert nodes["total"].status == "waiting"

    messages = api.sent_messages()
    assert sorted((m.headers["task"], m.headers["id"]) for m in messages) == sorted(
        (NODE_TASK, nodes[node_id].task_id) for node_id in ("left", "right")
    )
    assert sorted(tuple(m.payload[0]) for m in messages) == [(execution_id, "left"), (execution_id, "right")]


def test_execute_without_body(api: Api) -> None:
    api.register(dag_document("constant", "Constant") | {"nodes": {"c": {"agent_id": "test.constant",
                                                                        "params": {"value": 1}}}})
    response = api.post("/dags/constant/execute")
    assert response.status_code == 202


def test_execute_unknown_dag(api: Api) -> None:
    assert_error(api.execute("missing"), 404, "dag_not_found")


def test_execute_not_accepting(make_api: Callable[..., Api]) -> None:
    accepting = make_api()
    accepting.register()
    execution_id = accepting.execute().get_json()["execution_id"]
    accepting.sent_messages()

    closed = make_api(accept_new_executions=False)
    error = assert_error(closed.execute(), 503, "not_accepting_executions")
    assert "GL_ORCHESTRATOR_ACCEPT_NEW_EXECUTIONS" in error["message"]
    assert closed.execution_count() == 1
    assert closed.sent_messages() == []

    assert closed.get("/dags").status_code == 200
    assert closed.get("/dags/adder").status_code == 200
    assert closed.get("/executions").get_json()["items"][0]["execution_id"] == execution_id
    assert closed.get(f"/executions/{execution_id}").status_code == 200
    assert closed.get(f"/executions/{execution_id}/provenance").status_code == 200
    assert closed.get(f"/executions/{execution_id}/checkpoints").status_code == 200
    assert closed.client.get(f"{PREFIX}/health").get_json()["accepting_new_executions"] is False


@pytest.mark.parametrize(("raw", "path"), [
    ('{"input_data": {"x": NaN}}', "$.input_data.x"),
    ('{"input_data": {"x": Infinity}}', "$.input_data.x"),
    ('{"input_data": {"x": [1, -Infinity]}}', "$.input_data.x[1]"),
    ('{"input_data": {"x": 1e400}}', "$.input_data.x"),
    ('{"input_data": {"x": 9007199254740992}}', "$.input_data.x"),
    ('{"input_data": {"x": -9007199254740992}}', "$.input_data.x"),
    ('{"input_data": {"name": "a\\u0000b"}}', "$.input_data.name"),
    ('{"input_data": {"name": "\\ud800"}}', "$.input_data.name"),
])
def test_execute_outside_json_domain(api: Api, raw: str, path: str) -> None:
    api.register()
    response = api.post("/dags/adder/execute", data=raw, headers={"Content-Type": "application/json"})
    error = assert_error(response, 400, "invalid_json_value")
    assert error["details"]["path"] == path
    assert path in error["message"]
    assert api.execution_count() == 0


def test_execute_largest_safe_integer(api: Api) -> None:
    api.register()
    raw = '{"input_data": {"x": 9007199254740991}}'
    assert api.post("/dags/adder/execute", data=raw, headers={"Content-Type": "application/json"}).status_code == 202


def test_execute_invalid_json(api: Api) -> None:
    api.register()
    response = api.post("/dags/adder/execute", data='{"input_data": {"x": }}', headers={"Content-Type": "application/json"})
    error = assert_error(response, 400, "invalid_json")
    assert "not valid JSON" in error["message"]
    assert error["details"] == {"line": 1, "column": 22, "position": 21}


@pytest.mark.parametrize(("raw", "code", "needle"), [
    ("[1, 2]", "invalid_request", "JSON object"),
    ('"text"', "invalid_request", "JSON object"),
    ('{"input_data": {}, "priority": 5}', "invalid_request", "'priority'"),
    ('{"inputs": {}}', "invalid_request", "'inputs'"),
    ('{"input_data": [1]}', "invalid_request", "input_data"),
    ('{"input_data": {}, "execution_options": {"turbo": true}}', "invalid_request", "'turbo'"),
    ('{"input_data": {}, "execution_options": {"checkpoint_enabled": "yes"}}', "invalid_request", "true or false"),
    ('{"input_data": {}, "input_data": {}}', "invalid_json", "duplicate key"),
    ('{"input_data": {"x": 1' + "0" * 5000 + "}}", "invalid_json", "digits"),
    ("[" * 100000 + "]" * 100000, "invalid_json", "nested"),
])
def test_execute_bad_body(api: Api, raw: str, code: str, needle: str) -> None:
    api.register()
    response = api.post("/dags/adder/execute", data=raw, headers={"Content-Type": "application/json"})
    error = assert_error(response, 400, code)
    assert needle in error["message"]
    assert api.execution_count() == 0


def test_execute_unknown_fields_listed(api: Api) -> None:
    api.register()
    error = assert_error(api.post("/dags/adder/execute", json={"input_data": {}, "b": 1, "a": 2}), 400, "invalid_request")
    assert error["details"] == {"unknown_fields": ["a", "b"], "allowed_fields": ["input_data", "execution_options"]}


def test_execute_body_too_large(make_api: Callable[..., Api]) -> None:
    api = make_api(max_request_bytes=2048)
    api.register()
    response = api.post("/dags/adder/execute", json={"input_data": {"blob": "x" * 4096}})
    error = assert_error(response, 413, "payload_too_large")
    assert error["details"] == {"max_request_bytes": 2048}
    assert "2048" in error["message"]
    assert api.execution_count() == 0
    big_dag = dag_document() | {"description": "y" * 4096}
    assert_error(api.post("/dags", json=big_dag), 413, "payload_too_large")


def test_execute_idempotency_key(api: Api) -> None:
    api.register()
    first = api.execute(headers={"Idempotency-Key": "order-42"})
    again = api.execute(headers={"Idempotency-Key": "order-42"})
    assert first.status_code == 202
    assert again.status_code == 202
    assert again.get_json()["execution_id"] == first.get_json()["execution_id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert api.execution_count() == 1
    # The replay finds the execution still pending, so it sends the same two
    # node messages again; a worker ignores whichever copy arrives second.
    with api.db.connect() as conn:
        task_ids = set(conn.execute(select(NODES.c.task_id).where(NODES.c.status == "queued")).scalars())
    sent = [message.headers["id"] for message in api.sent_messages()]
    assert len(task_ids) == 2
    assert sorted(sent) == sorted(list(task_ids) * 2)

    other = api.execute(headers={"Idempotency-Key": "order-43"})
    assert other.get_json()["execution_id"] != first.get_json()["execution_id"]
    reused = api.execute(input_data={"x": 6}, headers={"Idempotency-Key": "order-42"})
    error = assert_error(reused, 409, "idempotency_key_reused")
    assert error["details"] == {"execution_id": first.get_json()["execution_id"]}
    assert_error(api.execute(headers={"Idempotency-Key": "has space"}), 400, "invalid_request")


def test_execute_replay_sends_unsent_nodes(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    api.register()
    attempts: list[str] = []

    def fail_twice(celery_app: Any, follow_up: Any, **options: Any) -> None:
        attempts.append(follow_up.execution_id)
        if len(attempts) <= 2:
            raise KombuError("broker connection lost")
        send_follow_up(celery_app, follow_up)

    monkeypatch.setattr("api.executions.send_follow_up", fail_twice)
    first = assert_error(api.execute(headers={"Idempotency-Key": "order-7"}), 503, "broker_unavailable")
    execution_id = first["details"]["execution_id"]
    assert "retry with the same Idempotency-Key" in first["message"]
    assert api.sent_messages() == []

    again = assert_error(api.execute(headers={"Idempotency-Key": "order-7"}), 503, "broker_unavailable")
    assert again["details"] == {"execution_id": execution_id}
    assert api.sent_messages() == []

    replayed = api.execute(headers={"Idempotency-Key": "order-7"})
    assert replayed.status_code == 202
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.get_json()["execution_id"] == execution_id
    assert api.execution_count() == 1
    messages = api.sent_messages()
    assert sorted(tuple(m.payload[0]) for m in messages) == [(execution_id, "left"), (execution_id, "right")]

    run_queued_nodes(api, execution_id)
    finished = api.execute(headers={"Idempotency-Key": "order-7"})
    assert finished.get_json()["status"] == "completed"
    assert api.sent_messages() == []
    assert attempts == [execution_id] * 3


def test_execute_idempotency_key_repeated(api: Api) -> None:
    api.register()
    # Werkzeug 3.1's test client joins repeated headers with ", ", and its server
    # and Gunicorn 27 with ",", so each form reaches the app as one value.
    twice = api.client.post(f"{PREFIX}/dags/adder/execute", json={"input_data": {"x": 5}},
                            headers=[*AUTH.items(), ("Idempotency-Key", "order-1"), ("Idempotency-Key", "order-2")])
    error = assert_error(twice, 400, "invalid_request")
    assert "once" in error["message"]
    joined = api.post("/dags/adder/execute", json={"input_data": {"x": 5}},
                      environ_overrides={"HTTP_IDEMPOTENCY_KEY": "order-1,order-2"})
    error = assert_error(joined, 400, "invalid_request")
    assert "once" in error["message"]
    assert api.execution_count() == 0


def test_post_dag_yaml_as_json_hint(api: Api) -> None:
    text = yaml.safe_dump(dag_document())
    for send in (api.post, lambda path, **kwargs: api.put(path + "/adder", **kwargs)):
        error = assert_error(send("/dags", data=text, headers={"Content-Type": "application/json"}), 400,
                             "invalid_json")
        assert "Content-Type: application/yaml" in error["message"]
    broken_json = api.post("/dags", data='{"dag_id": ', headers={"Content-Type": "application/json"})
    error = assert_error(broken_json, 400, "invalid_json")
    assert "yaml" not in error["message"]


def test_auth_rejection_logged_on_one_line(api: Api) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter("%(levelname)s %(message)s"))
    auth_logger = logging.getLogger("api.auth")
    level = auth_logger.level
    auth_logger.addHandler(handler)
    auth_logger.setLevel(logging.INFO)
    try:
        api.client.get(f"{PREFIX}/dags%0AERROR%20forged%20line")
    finally:
        auth_logger.removeHandler(handler)
        auth_logger.setLevel(level)
    lines = stream.getvalue().splitlines()
    # The rejection and the access line, each with the newline escaped.
    assert len(lines) == 2
    assert all("/dags\\nERROR forged line" in line for line in lines)
    assert not any(line.startswith("ERROR forged") for line in lines)


def test_execute_broker_unreachable(make_api: Callable[..., Api]) -> None:
    # Port 1 on loopback refuses connections, so publishing fails at once.
    api = make_api(broker_url="redis://127.0.0.1:1/0")
    api.register()
    error = assert_error(api.execute(), 503, "broker_unavailable")
    execution_id = error["details"]["execution_id"]
    assert "no Idempotency-Key header" in error["message"]
    assert api.get(f"/executions/{execution_id}").get_json()["status"] == "pending"


# -- executions ---------------------------------------------------------------


def seed_executions(api: Api) -> list[dict[str, Any]]:
    """Create seven executions of two DAGs and give them fixed statuses and creation times."""
    api.register()
    api.register(dag_document("other", "Other"))
    now = datetime.now(timezone.utc).replace(microsecond=0)
    plan = [
        ("adder", "completed", now - timedelta(minutes=1)),
        ("adder", "failed", now - timedelta(minutes=2)),
        ("other", "running", now - timedelta(minutes=2)),
        ("adder", "pending", now - timedelta(minutes=2)),
        ("other", "completed", now - timedelta(hours=5)),
        ("adder", "failed", now - timedelta(days=2)),
        ("other", "cancelled", now - timedelta(days=9)),
    ]
    seeded = []
    for dag_id, status, created_at in plan:
        execution_id = api.execute(dag_id).get_json()["execution_id"]
        with api.db.engine.begin() as conn:
            conn.execute(update(EXECUTIONS).where(EXECUTIONS.c.execution_id == execution_id)
                         .values(status=status, created_at=created_at))
        seeded.append({"execution_id": execution_id, "dag_id": dag_id, "status": status, "created_at": created_at})
    seeded.sort(key=lambda item: (item["created_at"], item["execution_id"]), reverse=True)
    return seeded


def list_all(api: Api, query: str) -> list[str]:
    """Follow next_cursor through every page of GET /executions?<query>."""
    ids: list[str] = []
    cursor = None
    while True:
        url = f"/executions?{query}" + (f"&cursor={cursor}" if cursor else "")
        response = api.get(url)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert set(body) == {"items", "next_cursor"}
        ids.extend(item["execution_id"] for item in body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return ids


def test_list_executions_filters_and_cursor(api: Api) -> None:
    seeded = seed_executions(api)

    def expected(keep: Callable[[dict[str, Any]], bool]) -> list[str]:
        return [item["execution_id"] for item in seeded if keep(item)]

    everything = expected(lambda item: True)
    assert list_all(api, "limit=50") == everything
    assert list_all(api, "limit=2") == everything
    assert list_all(api, "limit=1") == everything
    assert list_all(api, "status=failed&limit=1") == expected(lambda item: item["status"] == "failed")
    assert list_all(api, "dag_id=other&limit=2") == expected(lambda item: item["dag_id"] == "other")
    recent = expected(lambda item: item["created_at"] > datetime.now(timezone.utc) - timedelta(hours=24))
    assert list_all(api, "since=24h&limit=2") == recent
    assert list_all(api, "since=30m") == expected(lambda item: item["created_at"] > datetime.now(timezone.utc) - timedelta(minutes=30))
    assert list_all(api, "since=7d&dag_id=adder") == expected(
        lambda item: item["dag_id"] == "adder" and item["created_at"] > datetime.now(timezone.utc) - timedelta(days=7)
    )
    cutoff = (datetime.now(timezone.utc) - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert list_all(api, f"since={cutoff}") == expected(
        lambda item: item["created_at"] >= datetime.now(timezone.utc) - timedelta(days=3)
    )

    page = api.get("/executions?limit=3").get_json()
    assert len(page["items"]) == 3
    assert page["next_cursor"]
    first = page["items"][0]
    assert set(first) >= {"execution_id", "dag_id", "status", "error", "created_at", "started_at", "completed_at",
                          "provenance_chain_hash", "chain_valid", "nodes_total", "nodes_remaining"}
    assert first["created_at"].endswith("Z")


@pytest.mark.parametrize(("query", "parameter"), [
    ("since=yesterday", "since"),
    ("since=24", "since"),
    ("status=done", "status"),
    ("limit=0", "limit"),
    ("limit=501", "limit"),
    ("limit=ten", "limit"),
    ("limit=%201", "limit"),
    ("limit=1%20", "limit"),
    ("limit=%EF%BC%91", "limit"),
    ("limit=1_0", "limit"),
    ("limit=%2B1", "limit"),
    ("limit=" + "9" * 5000, "limit"),
    ("dag_id=a%00b", "dag_id"),
    ("dag_id=%ED%A0%80", "dag_id"),
    ("dag_id=a%0Ab", "dag_id"),
    ("dag_id=..", "dag_id"),
    ("dag_id=" + "x" * 64, "dag_id"),
    ("since=9999-12-31T23:59:59-23:59", "since"),
    ("since=0001-01-01T00:00:00%2B14:00", "since"),
    ("since=999999999w", "since"),
    ("cursor=not-a-cursor", "cursor"),
    ("status=failed&status=running", "status"),
])
def test_list_executions_bad_parameter(api: Api, query: str, parameter: str) -> None:
    error = assert_error(api.get(f"/executions?{query}"), 400, "invalid_parameter")
    assert error["details"]["parameter"] == parameter
    assert parameter in error["message"]


def test_list_executions_long_values_cut(api: Api) -> None:
    for name in ("dag_id", "limit", "status", "since", "cursor"):
        error = assert_error(api.get(f"/executions?{name}={'x' * 5000}"), 400, "invalid_parameter")
        assert "x" * 81 not in error["message"], name
        assert "x" * 81 not in json.dumps(error["details"]), name


def cursor_of(created_at: str, execution_id: str) -> str:
    raw = json.dumps([created_at, execution_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    cursor_of("2026-01-01T00:00:00.000000Z", "a\u0000b"),
    cursor_of("2026-01-01T00:00:00.000000Z", "\ud800"),
    cursor_of("2026-01-01T00:00:00.000000Z", ""),
    cursor_of("2026-01-01T00:00:00.000000Z", "x" * 65),
    cursor_of("0001-01-01T00:00:00+14:00", "abc"),
    cursor_of("9999-12-31T23:59:59-23:59", "abc"),
])
def test_list_executions_bad_cursor(api: Api, cursor: str) -> None:
    error = assert_error(api.get(f"/executions?cursor={cursor}"), 400, "invalid_parameter")
    assert error["details"]["parameter"] == "cursor"


def test_list_executions_since_out_of_range(api: Api) -> None:
    for value in ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00"):
        error = assert_error(api.get(f"/executions?since={quote(value)}"), 400, "invalid_parameter")
        assert repr(value) in error["message"]
        assert "0001-01-01T00:00:00Z" in error["message"]


def test_list_executions_unknown_parameter(api: Api) -> None:
    error = assert_error(api.get("/executions?state=failed"), 400, "invalid_parameter")
    assert error["details"]["parameters"] == ["state"]


def test_get_execution(api: Api) -> None:
    api.register()
    execution_id = api.execute(input_data={"x": 5}).get_json()["execution_id"]
    run_queued_nodes(api, execution_id)
    body = api.get(f"/executions/{execution_id}").get_json()
    assert body["status"] == "completed"
    assert body["chain_valid"] is True
    assert body["input_data"] == {"x": 5}
    assert body["links"]["self"] == f"{PREFIX}/executions/{execution_id}"
    assert [node["node_id"] for node in body["nodes"]] == ["left", "right", "total"]
    for node in body["nodes"]:
        assert node["status"] == "completed"
        assert node["attempt_count"] == 1
        assert node["started_at"].endswith("Z")
        assert node["finished_at"].endswith("Z")
        assert node["duration_seconds"] >= 0
        assert len(node["attempts"]) == 1


def test_unknown_execution(api: Api) -> None:
    for suffix in ("", "/provenance", "/checkpoints"):
        error = assert_error(api.get(f"/executions/missing{suffix}"), 404, "execution_not_found")
        assert error["details"] == {"execution_id": "missing"}


# Path ids outside the id rules, percent-encoded as a client sends them.
# %ED%A0%80 is the lone surrogate U+D800 in UTF-8 form, which Werkzeug decodes
# to replacement characters.
INVALID_DAG_IDS = ("a%00b", "%ED%A0%80", "a%0Ab", "a%20b", "%F0%9F%98%80", "..", ".", "x" * 64, "x" * 300)
INVALID_EXECUTION_IDS = ("a%00b", "%ED%A0%80", "a%0Ab", "a%20b", "%F0%9F%98%80", "x" * 65, "x" * 300)
DAG_ROUTES = (("GET", "/dags/{}"), ("PUT", "/dags/{}"), ("DELETE", "/dags/{}"),
              ("POST", "/dags/{}/validate"), ("POST", "/dags/{}/execute"))
EXECUTION_ROUTES = (("GET", "/executions/{}"), ("GET", "/executions/{}/provenance"),
                    ("GET", "/executions/{}/checkpoints"))


def check_invalid_path_ids(api: Api) -> None:
    """Check that every route rejects an invalid id with a 404 whose message calls it invalid and cuts it."""
    api.register()
    cases = [(method, route, path_id, "dag_not_found") for method, route in DAG_ROUTES for path_id in INVALID_DAG_IDS]
    cases += [(method, route, path_id, "execution_not_found")
              for method, route in EXECUTION_ROUTES for path_id in INVALID_EXECUTION_IDS]
    for method, route, path_id, code in cases:
        response = api.client.open(PREFIX + route.format(path_id), method=method, headers=AUTH, json=dag_document())
        case = f"{method} {route} {path_id[:20]}"
        assert response.status_code == 404, case
        error = response.get_json()["error"]
        assert error["code"] == code, case
        assert "invalid" in error["message"], case
        assert "x" * 81 not in error["message"], case
    assert api.execution_count() == 0
    assert [item["dag_id"] for item in api.get("/dags").get_json()["items"]] == ["adder"]


def test_invalid_path_ids_sqlite(api: Api) -> None:
    check_invalid_path_ids(api)


def test_invalid_path_ids_postgres(make_api: Callable[..., Api], postgres_url: str) -> None:
    check_invalid_path_ids(make_api(database_url=postgres_url))


def test_invalid_path_id_needs_token(api: Api) -> None:
    assert_error(api.client.get(f"{PREFIX}/dags/a%00b"), 401, "unauthorized")
    assert_error(api.client.get(f"{PREFIX}/executions/a%00b"), 401, "unauthorized")


def test_longest_valid_ids_looked_up(api: Api) -> None:
    error = assert_error(api.get(f"/dags/{'d' * 63}"), 404, "dag_not_found")
    assert "invalid" not in error["message"]
    error = assert_error(api.get(f"/executions/{'e' * 64}"), 404, "execution_not_found")
    assert "invalid" not in error["message"]


def test_provenance_and_checkpoints(api: Api) -> None:
    api.register()
    execution_id = api.execute().get_json()["execution_id"]
    run_queued_nodes(api, execution_id)

    provenance = api.get(f"/executions/{execution_id}/provenance").get_json()
    assert provenance["execution_id"] == execution_id
    assert provenance["chain_valid"] is True
    assert provenance["provenance_chain_hash"] == api.get(f"/executions/{execution_id}").get_json()["provenance_chain_hash"]
    nodes = {node["node_id"]: node for node in provenance["nodes"]}
    assert set(nodes) == {"left", "right", "total"}
    assert all(node["valid"] for node in nodes.values())
    assert sorted(nodes["total"]["actual_parent_hashes"]) == sorted(
        [nodes["left"]["chain_hash"], nodes["right"]["chain_hash"]]
    )
    assert nodes["total"]["expected_parent_hashes"] == nodes["total"]["actual_parent_hashes"]

    checkpoints = api.get(f"/executions/{execution_id}/checkpoints").get_json()
    assert checkpoints["all_verified"] is True
    assert {c["node_id"] for c in checkpoints["checkpoints"]} == {"left", "right", "total"}
    for checkpoint in checkpoints["checkpoints"]:
        assert set(checkpoint) >= {"node_id", "status", "output_hash", "attempt_count", "size_bytes", "created_at",
                                   "verified"}
        assert checkpoint["verified"] is True


def test_tampered_checkpoint_reported(api: Api) -> None:
    api.register()
    execution_id = api.execute().get_json()["execution_id"]
    run_queued_nodes(api, execution_id)
    with api.db.engine.begin() as conn:
        conn.execute(update(CHECKPOINTS).where(
            CHECKPOINTS.c.execution_id == execution_id, CHECKPOINTS.c.node_id == "left"
        ).values(outputs={"value": 999}))

    checkpoints = api.get(f"/executions/{execution_id}/checkpoints").get_json()
    assert checkpoints["all_verified"] is False
    by_node = {c["node_id"]: c for c in checkpoints["checkpoints"]}
    assert by_node["left"]["verified"] is False
    assert by_node["right"]["verified"] is True
    provenance = api.get(f"/executions/{execution_id}/provenance").get_json()
    assert provenance["chain_valid"] is False
    broken = [node["node_id"] for node in provenance["nodes"] if not node["valid"]]
    assert broken == ["left"]


# -- operator scripts -------------------------------------------------------

# Scripts from the checkpoint-corruption runbook, verbatim, that operators pipe
# the API's JSON into. They must keep working against these responses.
FIND_AFFECTED_SCRIPT = """
import sys, json
data = json.load(sys.stdin)
for exec in data.get('items', []):
    error = exec.get('error', '')
    if 'checkpoint' in error.lower() or 'provenance' in error.lower() or 'hash' in error.lower():
        print(f\"AFFECTED: {exec['execution_id']} | DAG: {exec['dag_id']} | Error: {error[:120]}\")
"""
SHOW_CHAIN_SCRIPT = """
import sys, json
data = json.load(sys.stdin)
print(f\"Execution: {data.get('execution_id')}\")
print(f\"Chain hash: {data.get('provenance_chain_hash', 'MISSING')}\")
print(f\"Chain valid: {data.get('chain_valid', 'UNKNOWN')}\")
print(f\"Nodes in chain: {len(data.get('nodes', []))}\")
print()
for node in data.get('nodes', []):
    valid = node.get('valid', 'unknown')
    marker = '  ** BROKEN **' if valid == False else ''
    print(f\"  {node['node_id']}: chain_hash={node.get('chain_hash', 'MISSING')[:16]}... valid={valid}{marker}\")
    if not valid:
        print(f\"    Expected parent hashes: {node.get('expected_parent_hashes', [])}\")
        print(f\"    Actual parent hashes:   {node.get('actual_parent_hashes', [])}\")
"""
CHECK_NEW_CHAIN_SCRIPT = """
import sys, json
data = json.load(sys.stdin)
print(f\"Execution: {data.get('execution_id')}\")
print(f\"Chain hash: {data.get('provenance_chain_hash')}\")
print(f\"Chain valid: {data.get('chain_valid')}\")
print(f\"Total nodes: {len(data.get('nodes', []))}\")
all_valid = all(n.get('valid', False) for n in data.get('nodes', []))
print(f\"All nodes valid: {all_valid}\")
"""


def run_script(script: str, response: Any) -> str:
    """Run an operator script with the response body on standard input, as `curl ... | python3 -c` does."""
    assert response.status_code == 200
    result = subprocess.run(
        [sys.executable, "-c", script], input=response.get_data(), capture_output=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def test_operator_scripts_on_broken_chain(api: Api) -> None:
    api.register()
    broken_id = api.execute().get_json()["execution_id"]

    def tamper() -> None:
        with api.db.engine.begin() as conn:
            conn.execute(update(CHECKPOINTS).where(
                CHECKPOINTS.c.execution_id == broken_id, CHECKPOINTS.c.node_id == "right"
            ).values(outputs={"value": -1}))

    run_queued_nodes(api, broken_id, before_finalize=tamper)
    healthy_id = api.execute().get_json()["execution_id"]
    run_queued_nodes(api, healthy_id)
    pending_id = api.execute().get_json()["execution_id"]

    affected = run_script(FIND_AFFECTED_SCRIPT, api.get("/executions?status=failed"))
    assert affected.splitlines() == [line for line in affected.splitlines() if line.startswith("AFFECTED: ")]
    assert len(affected.splitlines()) == 1
    assert f"AFFECTED: {broken_id} | DAG: adder | Error: provenance chain hash verification failed" in affected

    broken = run_script(SHOW_CHAIN_SCRIPT, api.get(f"/executions/{broken_id}/provenance"))
    assert "Chain valid: False" in broken
    assert "Nodes in chain: 3" in broken
    assert re.search(r"  right: chain_hash=[0-9a-f]{16}\.\.\. valid=False  \*\* BROKEN \*\*", broken)
    assert "  left: chain_hash=" in broken

    missing = run_script(SHOW_CHAIN_SCRIPT, api.get(f"/executions/{pending_id}/provenance"))
    assert "  total: chain_hash=MISSING... valid=False  ** BROKEN **" in missing

    healthy = run_script(CHECK_NEW_CHAIN_SCRIPT, api.get(f"/executions/{healthy_id}/provenance"))
    assert "Chain valid: True" in healthy
    assert "Total nodes: 3" in healthy
    assert "All nodes valid: True" in healthy


# -- service routes ---------------------------------------------------------


def test_health_distributed_without_workers(api: Api) -> None:
    body = api.client.get(f"{PREFIX}/health").get_json()
    assert body["status"] == "degraded"
    assert body["mode"] == "distributed"
    assert body["checkpoint_strategy"] == "database"
    assert body["components"]["database"]["status"] == "ok"
    assert body["components"]["broker"]["status"] == "ok"
    assert body["components"]["workers"]["status"] == "error"
    assert "no worker consumes queue" in body["components"]["workers"]["detail"]


def test_health_embedded(make_api: Callable[..., Api]) -> None:
    api = make_api(embedded=True)
    response = api.client.get(f"{PREFIX}/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["mode"] == "embedded"
    assert body["components"]["workers"]["status"] == "ok"
    assert "embedded" in body["components"]["workers"]["detail"]


def test_health_broker_down(make_api: Callable[..., Api]) -> None:
    api = make_api(broker_url="redis://127.0.0.1:1/0")
    response = api.client.get(f"{PREFIX}/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "degraded"
    assert body["components"]["broker"]["status"] == "error"
    assert body["components"]["workers"]["status"] == "error"


def test_health_database_down(make_api: Callable[..., Api], tmp_path: Path) -> None:
    # A directory is not a database file, so every connection attempt fails.
    api = make_api(database_url=f"sqlite:///{tmp_path}", embedded=True)
    response = api.client.get(f"{PREFIX}/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "error"
    assert body["components"]["database"]["status"] == "error"
    assert body["components"]["database"]["detail"]


def test_health_concurrent_probes_threaded_server(make_api: Callable[..., Api], redis_url: str) -> None:
    # 30 probes at once used to deadlock, because each kept a pooled broker
    # connection while waiting for a second one from the same pool of 10.
    api = make_api(broker_url=redis_url)
    broadcasts: list[str] = []
    broadcast = api.celery_app.control.broadcast

    def counting_broadcast(command: str, *args: Any, **kwargs: Any) -> Any:
        broadcasts.append(command)
        return broadcast(command, *args, **kwargs)

    api.celery_app.control.broadcast = counting_broadcast  # type: ignore[method-assign]
    server = make_server("127.0.0.1", 0, api.app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    url = f"http://127.0.0.1:{server.server_port}{PREFIX}/health"

    def probe(_: int) -> tuple[int | str, float]:
        started = time.monotonic()
        try:
            status: int | str = requests.get(url, timeout=HEALTH_PROBE_BOUND_SECONDS).status_code
        except requests.RequestException as exc:
            status = type(exc).__name__
        return status, time.monotonic() - started

    try:
        with ThreadPoolExecutor(max_workers=30) as pool:
            results = list(pool.map(probe, range(30)))
    finally:
        server.shutdown()
        serving.join(timeout=5)

    assert [status for status, _ in results] == [200] * 30
    assert max(elapsed for _, elapsed in results) < HEALTH_PROBE_BOUND_SECONDS
    assert broadcasts == ["active_queues"]


def test_metrics(api: Api) -> None:
    seed_executions(api)
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert "gl_orchestrator_active_executions 1.0" in text
    assert "gl_orchestrator_queued_executions 1.0" in text
    assert "gl_orchestrator_checkpoint_operations_total" in text
    assert_error(api.client.get(f"{PREFIX}/metrics"), 401, "unauthorized")


def test_openapi_lists_every_route(api: Api) -> None:
    document = api.get("/openapi.json").get_json()
    assert document == openapi_document()
    assert document["openapi"].startswith("3.1")

    served: dict[str, set[str]] = {}
    for rule in api.app.url_map.iter_rules():
        assert rule.rule.startswith(PREFIX), rule.rule
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule[len(PREFIX):])
        served.setdefault(path, set()).update(m.lower() for m in rule.methods - {"HEAD", "OPTIONS"})
    documented = {
        path: {method for method in item if method in {"get", "post", "put", "delete", "patch"}}
        for path, item in document["paths"].items()
    }
    assert documented == served
    for item in document["paths"].values():
        for method, operation in item.items():
            if method == "parameters":
                continue
            assert operation["responses"], method
            assert operation["operationId"]


def test_unknown_route_and_method(api: Api) -> None:
    assert_error(api.get("/nothing-here"), 404, "not_found")
    assert_error(api.client.get("/elsewhere", headers=AUTH), 404, "not_found")
    response = api.delete("/executions")
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


def test_unexpected_error_logged_once(api: Api, monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("database exploded")

    monkeypatch.setattr("orchestrator.repository.list_dags", fail)
    caplog.set_level(logging.ERROR)
    response = api.get("/dags", headers={"X-Request-ID": "req-500"})
    error = assert_error(response, 500, "internal_error")
    assert error["details"] == {"request_id": "req-500"}
    assert "database exploded" not in error["message"]
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "request_id=req-500" in errors[0].getMessage()
    assert errors[0].exc_info is not None


# -- PostgreSQL -------------------------------------------------------------


def test_postgres_execute_list_get(make_api: Callable[..., Api], postgres_url: str) -> None:
    api = make_api(database_url=postgres_url)
    api.register()
    first = api.execute(input_data={"x": 1, "label": "ünïcode", "big": 9007199254740991, "ratio": 0.1})
    second = api.execute(input_data={"x": 2})
    assert first.status_code == 202
    assert second.status_code == 202
    ids = [second.get_json()["execution_id"], first.get_json()["execution_id"]]

    assert list_all(api, "limit=1") == ids
    assert list_all(api, "status=pending&dag_id=adder&since=1h") == ids
    body = api.get(f"/executions/{ids[1]}").get_json()
    assert body["status"] == "pending"
    assert body["input_data"] == {"x": 1, "label": "ünïcode", "big": 9007199254740991, "ratio": 0.1}
    assert {node["node_id"]: node["status"] for node in body["nodes"]} == {
        "left": "queued", "right": "queued", "total": "waiting",
    }
    assert len(api.sent_messages()) == 4

    run_queued_nodes(api, ids[0])
    done = api.get(f"/executions/{ids[0]}").get_json()
    assert done["status"] == "completed"
    assert api.get(f"/executions/{ids[0]}/provenance").get_json()["chain_valid"] is True
    assert api.get(f"/executions/{ids[0]}/checkpoints").get_json()["all_verified"] is True
    assert api.get("/health").get_json()["components"]["database"]["detail"].endswith("postgresql")


def test_streamed_body_too_large(make_api: Callable[..., Api]) -> None:
    # A chunked body has no Content-Length, so the limit applies while reading.
    api = make_api(max_request_bytes=2048)
    api.register()
    body = json.dumps({"input_data": {"blob": "x" * 4096}}).encode()
    response = api.client.post(
        f"{PREFIX}/dags/adder/execute",
        input_stream=io.BytesIO(body),
        headers={**AUTH, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert_error(response, 413, "payload_too_large")
    assert api.execution_count() == 0

    yaml_text = yaml.safe_dump(dag_document() | {"description": "y" * 4096}).encode()
    response = api.client.post(
        f"{PREFIX}/dags",
        input_stream=io.BytesIO(yaml_text),
        headers={**AUTH, "Content-Type": "application/yaml", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert_error(response, 413, "payload_too_large")


def test_execute_rejects_past_concurrency_limit(make_api: Callable[..., Api]) -> None:
    api = make_api(max_concurrent_executions=1)
    api.register()
    assert api.execute().status_code == 202
    error = assert_error(api.execute(), 503, "too_many_executions")
    assert "GL_ORCHESTRATOR_MAX_CONCURRENT_EXECUTIONS is 1" in error["message"]
    assert api.execution_count() == 1


def test_execute_rejects_false_options(api: Api) -> None:
    api.register()
    for option in ("checkpoint_enabled", "deterministic_mode"):
        response = api.post("/dags/adder/execute", json={"input_data": {"x": 1}, "execution_options": {option: False}})
        error = assert_error(response, 400, "invalid_request")
        assert option in error["message"]
        assert error["details"]["path"] == f"$.execution_options.{option}"
    assert api.execution_count() == 0


def test_metrics_chain_valid_from_database(api: Api) -> None:
    text_before = api.get("/metrics").get_data(as_text=True)
    assert "gl_orchestrator_provenance_chain_valid 1.0" in text_before
    api.register()
    execution_id = api.execute().get_json()["execution_id"]
    run_queued_nodes(api, execution_id)
    api.db.transaction(lambda conn: conn.execute(
        EXECUTIONS.update().where(EXECUTIONS.c.execution_id == execution_id).values(chain_valid=False)))
    assert "gl_orchestrator_provenance_chain_valid 0.0" in api.get("/metrics").get_data(as_text=True)


def test_cancel_then_resume(api: Api) -> None:
    api.register()
    execution_id = api.execute().get_json()["execution_id"]
    cancelled = api.post(f"/executions/{execution_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.get_json()["status"] == "cancelled"
    assert cancelled.get_json()["revoked_tasks"] == 2
    assert_error(api.post(f"/executions/{execution_id}/cancel"), 409, "execution_conflict")

    resumed = api.post(f"/executions/{execution_id}/resume", json={})
    assert resumed.status_code == 202
    body = resumed.get_json()
    assert body["nodes_skipped"] == []
    assert body["nodes_remaining"] == ["left", "right", "total"]
    assert_error(api.post(f"/executions/{execution_id}/resume"), 409, "execution_conflict")
    run_queued_nodes(api, execution_id)
    assert api.get(f"/executions/{execution_id}").get_json()["status"] == "completed"


def test_resume_refuses_corrupted_checkpoint(api: Api) -> None:
    api.register()
    execution_id = api.execute().get_json()["execution_id"]
    run_queued_nodes(api, execution_id)
    api.db.transaction(lambda conn: conn.execute(
        CHECKPOINTS.update().where(CHECKPOINTS.c.execution_id == execution_id, CHECKPOINTS.c.node_id == "right")
        .values(outputs={"value": 11})))

    error = assert_error(api.post(f"/executions/{execution_id}/resume"), 409, "checkpoint_integrity_failed")
    assert "checkpoint integrity verification failed" in error["message"]
    assert [item["node_id"] for item in error["details"]["corrupted"]] == ["right"]
    assert error["details"]["corrupted"][0]["expected_hash"] != error["details"]["corrupted"][0]["actual_hash"]

    rerun = api.post(f"/executions/{execution_id}/resume", json={"rerun_corrupted": True})
    assert rerun.status_code == 202
    assert rerun.get_json()["nodes_remaining"] == ["right", "total"]
    run_queued_nodes(api, execution_id)
    provenance = api.get(f"/executions/{execution_id}/provenance").get_json()
    assert provenance["chain_valid"] is True


def test_resume_rejects_bad_body(api: Api) -> None:
    api.register()
    execution_id = api.execute().get_json()["execution_id"]
    assert_error(api.post(f"/executions/{execution_id}/resume", json={"rerun": True}), 400, "invalid_request")
    assert_error(api.post(f"/executions/{execution_id}/resume", json={"rerun_corrupted": "yes"}), 400,
                 "invalid_request")
    assert_error(api.post("/executions/no-such-execution/resume"), 404, "execution_not_found")
