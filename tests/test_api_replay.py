"""The replay, replay-report and diff routes, with Flask's test client and no worker.

The fixtures and helpers come from tests/test_api.py: kombu's in-memory
broker, and ``run_queued_nodes`` playing the worker's part in this process.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from api import create_app
from api.openapi import openapi_document
from orchestrator.agents import AgentRegistry
from tests.test_api import AUTH, PREFIX, Api, assert_error, dag_document, make_settings, run_queued_nodes
from workers.app import create_celery_app, runtime_of

REPLAY_PATHS = (
    "/executions/{execution_id}/diff/{other_execution_id}",
    "/executions/{execution_id}/replay",
    "/executions/{execution_id}/replay-report",
)


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


def finished_execution(api: Api, dag_id: str = "adder") -> str:
    """Run one execution of ``dag_id`` to its end in this process and return its id."""
    response = api.execute(dag_id)
    assert response.status_code == 202, response.get_json()
    execution_id = str(response.get_json()["execution_id"])
    run_queued_nodes(api, execution_id)
    return execution_id


def start_replay(api: Api, execution_id: str) -> dict[str, Any]:
    response = api.post(f"/executions/{execution_id}/replay")
    assert response.status_code == 202, response.get_json()
    body: dict[str, Any] = response.get_json()
    assert response.headers["Location"] == body["links"]["self"]
    return body


def clock_document() -> dict[str, Any]:
    """The adder DAG with a node whose agent returns a new value on every call, and a reader of it."""
    document = dag_document("clocked")
    document["nodes"]["tick"] = {"agent_id": "test.tick", "depends_on": ["left"], "input_mapping": {"x": "results.left"}}
    document["nodes"]["after_tick"] = {"agent_id": "test.source", "depends_on": ["tick"],
                                       "input_mapping": {"x": "results.tick.call"}}
    return document


def register_tick(api: Api) -> None:
    calls = count(1)
    api.registry.register("test.tick", "1.0.0", lambda inputs, params: {"call": next(calls)})


def check_replay_matches(api: Api) -> None:
    api.register()
    original = finished_execution(api)
    api.sent_messages()

    body = start_replay(api, original)
    replay_id = body["execution_id"]
    assert replay_id != original
    assert body["replay_of"] == original
    assert body["status"] == "pending"
    assert body["dag_id"] == "adder"
    assert body["dag_hash"] == api.get(f"/executions/{original}").get_json()["dag_hash"]
    assert body["links"]["replay_report"] == f"{PREFIX}/executions/{replay_id}/replay-report"
    assert body["links"]["replay_of"] == f"{PREFIX}/executions/{original}"
    assert body["links"]["diff"] == f"{PREFIX}/executions/{original}/diff/{replay_id}"
    assert sorted(tuple(message.payload[0]) for message in api.sent_messages()) == [
        (replay_id, "left"), (replay_id, "right"),
    ]

    execution = api.get(f"/executions/{replay_id}").get_json()
    assert execution["execution_options"] == {"replay_of": original}
    assert execution["input_data"] == {"x": 5}

    pending = api.get(f"/executions/{replay_id}/replay-report").get_json()
    assert pending["matches"] is None
    assert pending["status"] == "pending"
    assert pending["nodes_differing"] == []

    run_queued_nodes(api, replay_id)
    report = api.get(f"/executions/{replay_id}/replay-report").get_json()
    assert report["matches"] is True
    assert report["status"] == "completed"
    assert report["original_status"] == "completed"
    assert report["provenance_chain_hash"]["original"] == report["provenance_chain_hash"]["replay"]
    assert report["nodes_differing"] == []
    assert report["links"]["replay_of"] == f"{PREFIX}/executions/{original}"

    diff = api.get(f"/executions/{original}/diff/{replay_id}").get_json()
    assert diff["identical"] is True
    assert [node["node_id"] for node in diff["nodes"]] == ["left", "right", "total"]


def test_replay_matches_sqlite(api: Api) -> None:
    check_replay_matches(api)


def test_replay_matches_postgres(make_api: Callable[..., Api], postgres_url: str) -> None:
    check_replay_matches(make_api(database_url=postgres_url))


def test_replay_names_nondeterministic_node(api: Api) -> None:
    register_tick(api)
    api.register(clock_document())
    original = finished_execution(api, "clocked")
    replay_id = start_replay(api, original)["execution_id"]
    run_queued_nodes(api, replay_id)

    report = api.get(f"/executions/{replay_id}/replay-report").get_json()
    assert report["matches"] is False
    assert report["nodes_nondeterministic"] == ["tick"]
    differing = {node["node_id"]: node for node in report["nodes_differing"]}
    assert list(differing) == ["tick", "after_tick"]
    assert differing["tick"]["differences"] == ["output"]
    assert differing["tick"]["nondeterministic"] is True
    assert differing["after_tick"]["differences"] == ["input", "output"]
    assert differing["after_tick"]["nondeterministic"] is False

    diff = api.get(f"/executions/{original}/diff/{replay_id}").get_json()
    assert diff["identical"] is False
    assert diff["same_dag_hash"] is True
    assert diff["same_input_hash"] is True
    assert diff["same_provenance_chain_hash"] is False
    assert diff["nodes_differing"] == ["tick", "after_tick"]
    assert diff["nodes_nondeterministic"] == ["tick"]


def test_replay_runs_stored_document_of_replaced_dag(api: Api) -> None:
    api.register()
    original = finished_execution(api)
    original_hash = api.get(f"/executions/{original}").get_json()["dag_hash"]
    changed = dag_document()
    changed["nodes"]["right"]["params"] = {"value": 11}
    assert api.put("/dags/adder", json=changed).status_code == 200
    assert api.delete("/dags/adder").get_json()["status"] == "retired"

    body = start_replay(api, original)
    assert body["dag_hash"] == original_hash
    run_queued_nodes(api, body["execution_id"])
    assert api.get(f"/executions/{body['execution_id']}/replay-report").get_json()["matches"] is True


def test_replay_rejects_unfinished_original(api: Api) -> None:
    api.register()
    pending = api.execute().get_json()["execution_id"]
    error = assert_error(api.post(f"/executions/{pending}/replay"), 409, "execution_conflict")
    assert "is pending" in error["message"]
    assert error["details"] == {"execution_id": pending}
    assert api.execution_count() == 1


def test_replay_unknown_or_invalid_id(api: Api) -> None:
    error = assert_error(api.post("/executions/missing/replay"), 404, "execution_not_found")
    assert error["details"] == {"execution_id": "missing"}
    assert_error(api.get("/executions/missing/replay-report"), 404, "execution_not_found")
    assert_error(api.post("/executions/a%00b/replay"), 404, "execution_not_found")
    assert_error(api.get(f"/executions/{'x' * 65}/replay-report"), 404, "execution_not_found")


def test_replay_rejects_body_fields(api: Api) -> None:
    api.register()
    original = finished_execution(api)
    error = assert_error(api.post(f"/executions/{original}/replay", json={"input_data": {"x": 1}}), 400,
                         "invalid_request")
    assert error["details"]["unknown_fields"] == ["input_data"]
    assert_error(api.post(f"/executions/{original}/replay", json=[]), 400, "invalid_request")
    assert api.post(f"/executions/{original}/replay", json={}).status_code == 202


def test_replay_report_of_non_replay(api: Api) -> None:
    api.register()
    original = finished_execution(api)
    error = assert_error(api.get(f"/executions/{original}/replay-report"), 404, "not_a_replay")
    assert "was not started as a replay" in error["message"]
    assert error["details"] == {"execution_id": original}


def test_replay_not_accepting(make_api: Callable[..., Api]) -> None:
    accepting = make_api()
    accepting.register()
    original = finished_execution(accepting)

    closed = make_api(accept_new_executions=False)
    error = assert_error(closed.post(f"/executions/{original}/replay"), 503, "not_accepting_executions")
    assert "GL_ORCHESTRATOR_ACCEPT_NEW_EXECUTIONS" in error["message"]
    assert closed.execution_count() == 1


def test_replay_past_concurrency_limit(make_api: Callable[..., Api]) -> None:
    api = make_api(max_concurrent_executions=1)
    api.register()
    original = finished_execution(api)
    api.execute()
    error = assert_error(api.post(f"/executions/{original}/replay"), 503, "too_many_executions")
    assert "GL_ORCHESTRATOR_MAX_CONCURRENT_EXECUTIONS is 1" in error["message"]
    assert_error(api.post("/executions/missing/replay"), 404, "execution_not_found")
    assert api.execution_count() == 2


def test_replay_broker_unreachable(make_api: Callable[..., Api]) -> None:
    reachable = make_api()
    reachable.register()
    original = finished_execution(reachable)

    # Port 1 on loopback refuses connections, so publishing fails at once.
    unreachable = make_api(broker_url="redis://127.0.0.1:1/0")
    error = assert_error(unreachable.post(f"/executions/{original}/replay"), 503, "broker_unavailable")
    replay_id = error["details"]["execution_id"]
    assert error["details"]["replay_of"] == original
    assert f"replay {replay_id} was stored" in error["message"]
    assert unreachable.get(f"/executions/{replay_id}").get_json()["status"] == "pending"


def test_replay_unregistered_agent(api: Api, tmp_path: Path, sqlite_url: str, unique_queue: str) -> None:
    api.register()
    original = finished_execution(api)

    settings = make_settings(tmp_path, sqlite_url, unique_queue)
    empty = AgentRegistry()
    celery_app = create_celery_app(settings, registry=empty)
    client = create_app(settings, celery_app=celery_app, registry=empty).test_client()
    try:
        response = client.post(f"{PREFIX}/executions/{original}/replay", headers=AUTH)
    finally:
        runtime_of(celery_app).db.dispose()
        celery_app.close()
    error = assert_error(response, 409, "dag_invalid")
    assert "GL_ORCHESTRATOR_AGENT_MODULES" in error["message"]
    assert error["details"]["execution_id"] == original
    assert error["details"]["problems"]
    assert api.execution_count() == 1


def test_diff_unknown_or_invalid_other_id(api: Api) -> None:
    api.register()
    original = finished_execution(api)
    error = assert_error(api.get(f"/executions/{original}/diff/missing"), 404, "execution_not_found")
    assert error["details"] == {"execution_id": "missing"}
    error = assert_error(api.get(f"/executions/{original}/diff/a%00b"), 404, "execution_not_found")
    assert error["details"] == {"invalid_path_parameter": "other_execution_id"}
    assert "other_execution_id" in error["message"]
    error = assert_error(api.get(f"/executions/{'x' * 65}/diff/{original}"), 404, "execution_not_found")
    assert error["details"] == {"invalid_path_parameter": "execution_id"}
    assert_error(api.client.get(f"{PREFIX}/executions/{original}/diff/{original}"), 401, "unauthorized")


def test_diff_of_different_inputs(api: Api) -> None:
    api.register()
    first = finished_execution(api)
    response = api.execute(input_data={"x": 6})
    second = response.get_json()["execution_id"]
    run_queued_nodes(api, second)

    diff = api.get(f"/executions/{first}/diff/{second}").get_json()
    assert diff["identical"] is False
    assert diff["same_input_hash"] is False
    assert diff["nodes_differing"] == ["left", "total"]
    assert diff["nodes_nondeterministic"] == []
    left = diff["nodes"][0]
    assert left["node_id"] == "left"
    assert left["differences"] == ["input", "output"]
    assert len(left["input"]["a"]) == 64


def test_openapi_documents_replay_routes(api: Api) -> None:
    document = openapi_document()
    served: dict[str, set[str]] = {}
    for rule in api.app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule[len(PREFIX):])
        if path in REPLAY_PATHS:
            served.setdefault(path, set()).update(m.lower() for m in rule.methods - {"HEAD", "OPTIONS"})
    assert served == {
        REPLAY_PATHS[0]: {"get"},
        REPLAY_PATHS[1]: {"post"},
        REPLAY_PATHS[2]: {"get"},
    }
    for path, methods in served.items():
        assert set(document["paths"][path]) - {"parameters"} == methods
