"""The hand-written OpenAPI 3.1 document of the REST API.

It is written by hand so that it describes what each route means, not only its shape.
``tests/test_api.py`` checks that it lists exactly the routes the app serves.
"""

from __future__ import annotations

import copy
from typing import Any

from api.state import API_PREFIX

__all__ = ["openapi_document"]

_HASH = {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "Lowercase hex SHA-256 (gl-prov-v1)."}
_NULLABLE_HASH = {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"}
_TIMESTAMP = {"type": "string", "format": "date-time", "description": "ISO 8601 UTC, ending in Z."}
_NULLABLE_TIMESTAMP = {"type": ["string", "null"], "format": "date-time"}
_EXECUTION_STATUSES = ["pending", "running", "completed", "failed", "cancelled"]
_NODE_STATUSES = ["waiting", "ready", "queued", "running", "retrying", "completed", "failed", "skipped"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    """Reference the error responses of ``statuses``, and of 500, which any route can return."""
    return {str(status): {"$ref": f"#/components/responses/Error{status}"} for status in (*statuses, 500)}


def _object(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, **extra}
    if required is not None:
        schema["required"] = required
    return schema


_SCHEMAS: dict[str, Any] = {
    "ResumeReport": _object({
        "execution_id": {"type": "string"},
        "status": {"type": "string"},
        "nodes_skipped": {"type": "array", "items": {"type": "string"}},
        "nodes_remaining": {"type": "array", "items": {"type": "string"}},
        "nodes": {"type": "array", "items": _object({
            "node_id": {"type": "string"}, "action": {"enum": ["skip", "run"]}, "reason": {"type": "string"},
        })},
        "archived_records": {"type": "array", "items": {"type": "string"}},
    }),
    "Error": _object(
        {
            "error": _object(
                {
                    "code": {"type": "string", "description": "Stable machine-readable code, e.g. dag_not_found."},
                    "message": {"type": "string", "description": "What failed, on which value, and what to do."},
                    "details": {"description": "Structured context such as the JSON path or the DAG problems."},
                },
                ["code", "message", "details"],
            )
        },
        ["error"],
    ),
    "DagProblem": _object(
        {
            "code": {"type": "string", "description": "Problem kind, e.g. cycle, unknown_agent, parse_error."},
            "message": {"type": "string"},
            "node_ids": {"type": "array", "items": {"type": "string"}},
        },
        ["code", "message", "node_ids"],
    ),
    "DagDocument": {
        "type": "object",
        "description": "A DAG document: dag_id, name, version, on_failure, default policies, "
                       "max_parallel_nodes and nodes (node id to agent_id, depends_on, params, "
                       "input_mapping, condition, retry_policy, timeout_policy, on_failure).",
        "required": ["dag_id", "nodes"],
        "additionalProperties": True,
    },
    "DagSummary": _object(
        {
            "dag_id": {"type": "string"},
            "name": {"type": "string"},
            "version": {"type": "string"},
            "description": {"type": "string"},
            "dag_hash": _HASH,
            "status": {"type": "string", "enum": ["active", "retired"]},
            "created_at": _TIMESTAMP,
            "updated_at": _TIMESTAMP,
        },
        ["dag_id", "name", "version", "dag_hash", "status", "created_at", "updated_at"],
    ),
    "Dag": {
        "allOf": [
            _ref("DagSummary"),
            _object({
                "definition": {**_ref("DagDocument"), "description": "The normalized document that dag_hash covers."},
                "registration": {
                    "type": "string", "enum": ["created", "updated", "unchanged"],
                    "description": "Only on POST and PUT: what the request changed.",
                },
            }, ["definition"]),
        ],
    },
    "DagList": _object({"items": {"type": "array", "items": _ref("DagSummary")}}, ["items"]),
    "DagRemoval": _object(
        {"dag_id": {"type": "string"}, "status": {"type": "string", "enum": ["retired", "deleted"]}},
        ["dag_id", "status"],
    ),
    "ValidationResult": _object(
        {
            "valid": {"type": "boolean"},
            "dag_id": {"type": "string"},
            "source": {"type": "string", "enum": ["stored", "body"]},
            "dag_hash": {**_NULLABLE_HASH, "description": "Hash of the normalized document; null when invalid."},
            "stored_dag_hash": {**_NULLABLE_HASH, "description": "Hash of the stored DAG; null when none is stored."},
            "problems": {"type": "array", "items": _ref("DagProblem")},
        },
        ["valid", "dag_id", "source", "dag_hash", "stored_dag_hash", "problems"],
    ),
    "ExecuteRequest": _object(
        {
            "input_data": {"type": "object", "description": "Execution input; must lie in the JSON domain."},
            "execution_options": _object(
                {"checkpoint_enabled": {"type": "boolean"}, "deterministic_mode": {"type": "boolean"}},
                additionalProperties=False,
            ),
        },
        additionalProperties=False,
    ),
    "ExecutionLinks": _object(
        {"self": {"type": "string"}, "provenance": {"type": "string"}, "checkpoints": {"type": "string"},
         "audit_export": {"type": "string"}},
        ["self", "provenance", "checkpoints", "audit_export"],
    ),
    "ExecutionAccepted": _object(
        {
            "execution_id": {"type": "string", "format": "uuid"},
            "dag_id": {"type": "string"},
            "dag_hash": _HASH,
            "status": {"type": "string", "enum": _EXECUTION_STATUSES,
                       "description": "pending for a new execution; the current status on an idempotent replay."},
            "links": _ref("ExecutionLinks"),
        },
        ["execution_id", "dag_id", "dag_hash", "status", "links"],
    ),
    "ExecutionSummary": _object(
        {
            "execution_id": {"type": "string", "format": "uuid"},
            "dag_id": {"type": "string"},
            "status": {"type": "string", "enum": _EXECUTION_STATUSES},
            "error": {"type": ["string", "null"]},
            "dag_hash": _HASH,
            "created_at": _TIMESTAMP,
            "started_at": _NULLABLE_TIMESTAMP,
            "completed_at": _NULLABLE_TIMESTAMP,
            "provenance_chain_hash": _NULLABLE_HASH,
            "chain_valid": {"type": ["boolean", "null"]},
            "nodes_total": {"type": "integer"},
            "nodes_remaining": {"type": "integer"},
        },
        ["execution_id", "dag_id", "status", "error", "created_at", "started_at", "completed_at"],
    ),
    "RunningNode": _object(
        {
            "node_id": {"type": "string"},
            "worker": {"type": ["string", "null"],
                       "description": "The pool process that claimed the node: <node name> pid=<pid> host=<host>."},
            "started_at": _NULLABLE_TIMESTAMP,
        },
        ["node_id", "worker", "started_at"],
    ),
    "ExecutionListItem": {
        "allOf": [
            _ref("ExecutionSummary"),
            _object({
                "age_seconds": {"type": "number", "description": "Seconds since started_at, or since created_at "
                                "while the execution has not started."},
                "running_nodes": {"type": "array", "items": _ref("RunningNode"),
                                  "description": "Nodes in state running, in canonical topological order."},
            }, ["age_seconds", "running_nodes"]),
        ],
    },
    "ExecutionPage": _object(
        {
            "items": {"type": "array", "items": _ref("ExecutionListItem")},
            "next_cursor": {"type": ["string", "null"], "description": "Pass as cursor for the next page."},
        },
        ["items", "next_cursor"],
    ),
    "NodeAttempt": _object({
        "attempt": {"type": "integer"},
        "status": {"type": "string"},
        "worker": {"type": ["string", "null"]},
        "error": {"type": ["string", "null"]},
        "started_at": _TIMESTAMP,
        "finished_at": _NULLABLE_TIMESTAMP,
        "duration_seconds": {"type": ["number", "null"]},
    }),
    "NodeState": _object(
        {
            "node_id": {"type": "string"},
            "ordinal": {"type": "integer", "description": "Position in canonical topological order."},
            "status": {"type": "string", "enum": _NODE_STATUSES},
            "attempt_count": {"type": "integer"},
            "error": {"type": ["string", "null"]},
            "worker": {"type": ["string", "null"]},
            "queued_at": _NULLABLE_TIMESTAMP,
            "started_at": _NULLABLE_TIMESTAMP,
            "finished_at": _NULLABLE_TIMESTAMP,
            "duration_seconds": {"type": ["number", "null"]},
            "attempts": {"type": "array", "items": _ref("NodeAttempt")},
        },
        ["node_id", "status", "attempt_count", "error", "queued_at", "started_at", "finished_at"],
    ),
    "Execution": {
        "allOf": [
            _ref("ExecutionSummary"),
            _object({
                "input_data": {"type": "object"},
                "input_hash": _HASH,
                "execution_options": {"type": "object"},
                "stop_reason": {"type": ["string", "null"]},
                "verified_at": {"type": ["string", "null"], "format": "date-time",
                                "description": "When the integrity sweep last verified the chain again."},
                "superseded_by": {"type": ["string", "null"],
                                  "description": "The execution that regenerated this one, if any."},
                "superseded_at": {"type": ["string", "null"], "format": "date-time"},
                "superseded_reason": {"type": ["string", "null"]},
                "nodes": {"type": "array", "items": _ref("NodeState")},
                "links": _ref("ExecutionLinks"),
            }, ["input_data", "nodes"]),
        ],
    },
    "NodeProvenance": _object(
        {
            "node_id": {"type": "string"},
            "valid": {"type": "boolean"},
            "status": {"type": "string"},
            "chain_hash": _HASH,
            "input_hash": _HASH,
            "output_hash": _HASH,
            "expected_parent_hashes": {"type": "array", "items": _HASH},
            "actual_parent_hashes": {"type": "array", "items": _HASH},
            "reasons": {"type": "array", "items": {"type": "string"}},
            "notes": {"type": "array", "items": {"type": "string"},
                      "description": "Facts that do not make the node invalid, e.g. outputs removed by retention."},
        },
        ["node_id", "valid", "expected_parent_hashes", "actual_parent_hashes", "reasons"],
        description="status, chain_hash, input_hash and output_hash are absent when the node has no "
                    "provenance record; reasons then says so.",
    ),
    "Provenance": _object(
        {
            "execution_id": {"type": "string"},
            "scheme": {"type": "string", "const": "gl-prov-v1"},
            "dag_hash": _HASH,
            "provenance_chain_hash": {**_HASH, "description": "Recomputed from the stored records."},
            "stored_provenance_chain_hash": _NULLABLE_HASH,
            "chain_valid": {"type": "boolean"},
            "chain_length": {"type": "integer"},
            "problems": {"type": "array", "items": {"type": "string"}},
            "signature": _ref("SignatureCheck"),
            "nodes": {"type": "array", "items": _ref("NodeProvenance")},
        },
        ["execution_id", "provenance_chain_hash", "chain_valid", "signature", "nodes"],
    ),
    "SignatureCheck": _object(
        {
            "status": {"type": "string", "enum": ["valid", "invalid", "unsigned", "unknown-key", "missing"],
                       "description": "invalid, unknown-key and missing (unsigned while signatures are "
                                      "required) make chain_valid false; unsigned leaves it as is."},
            "key_id": {"type": ["string", "null"], "description": "ed25519:<16 hex digits>; null when unsigned."},
            "detail": {"type": "string", "description": "Why the signature has this status."},
        },
        ["status", "key_id", "detail"],
        description="The Ed25519 signature of {execution_id, dag_hash, provenance_chain_hash, finalized_at}, "
                    "checked against the recomputed provenance_chain_hash and the trusted keys.",
    ),
    "SigningKey": _object(
        {
            "key_id": {"type": "string", "pattern": "^ed25519:[0-9a-f]{16}$",
                       "description": "ed25519: and the first 16 hex digits of SHA-256 of the raw public key."},
            "algorithm": {"type": "string", "const": "ed25519"},
            "public_key": {"type": "string", "description": "Standard base64 of the raw 32-byte public key."},
            "current": {"type": "boolean", "description": "Whether the finalizer signs with this key now."},
        },
        ["key_id", "algorithm", "public_key", "current"],
    ),
    "SigningKeys": _object(
        {
            "current_key_id": {"type": ["string", "null"],
                               "description": "null when no signing key is configured."},
            "keys": {"type": "array", "items": _ref("SigningKey"),
                     "description": "The current key first, then the trusted keys of earlier rotations."},
        },
        ["current_key_id", "keys"],
    ),
    "Checkpoint": _object(
        {
            "node_id": {"type": "string"},
            "status": {"type": "string"},
            "output_hash": _NULLABLE_HASH,
            "actual_output_hash": {**_NULLABLE_HASH, "description": "Hash of the stored outputs, recomputed now."},
            "attempt_count": {"type": "integer"},
            "size_bytes": {"type": "integer"},
            "created_at": _TIMESTAMP,
            "verified": {"type": ["boolean", "null"], "description": "Whether the outputs re-hash to output_hash; "
                         "null when retention removed the outputs (payload_removed_at set) or a memory store "
                         "forgot them (note set)."},
            "payload_removed_at": _NULLABLE_TIMESTAMP,
            "verification_error": {"type": ["string", "null"]},
            "strategy": {"type": "string", "enum": ["database", "file", "memory"],
                         "description": "The checkpoint strategy of the process that answered."},
            "note": {"type": ["string", "null"], "description": "Why the outputs could not be re-hashed "
                     "although nothing suggests they were altered."},
        },
        ["node_id", "status", "output_hash", "attempt_count", "size_bytes", "created_at", "verified"],
    ),
    "CheckpointList": _object(
        {
            "execution_id": {"type": "string"},
            "all_verified": {"type": "boolean"},
            "checkpoints": {"type": "array", "items": _ref("Checkpoint")},
        },
        ["execution_id", "all_verified", "checkpoints"],
    ),
    "ValuePair": _object(
        {
            "differs": {"type": "boolean"},
            "a": {"description": "The value in execution A; null when A has none."},
            "b": {"description": "The value in execution B; null when B has none."},
        },
        ["differs", "a", "b"],
    ),
    "NodeDiff": _object(
        {
            "node_id": {"type": "string"},
            "in_a": {"type": "boolean", "description": "Whether A's DAG has the node."},
            "in_b": {"type": "boolean", "description": "Whether B's DAG has the node."},
            "differs": {"type": "boolean"},
            "differences": {"type": "array", "items": {"enum": ["input", "agent", "params", "output", "status"]}},
            "nondeterministic": {"type": "boolean", "description": "Same input_hash in both executions but a "
                                 "different output_hash: the agent returned something else for the same input."},
            "input": {**_ref("ValuePair"), "description": "input_hash of the provenance records."},
            "agent": {**_ref("ValuePair"), "description": "agent_id and agent_version; a null version is unknown "
                      "and does not differ from a known one."},
            "params": {**_ref("ValuePair"), "description": "params of the input document, or of the DAG "
                       "document's node when the record has no input document."},
            "output": {**_ref("ValuePair"), "description": "output_hash of the provenance records."},
            "status": {**_ref("ValuePair"), "description": "The record's status, or the node's current state "
                       "while it has no record."},
        },
        ["node_id", "in_a", "in_b", "differs", "differences", "nondeterministic",
         "input", "agent", "params", "output", "status"],
    ),
    "ExecutionDiff": _object(
        {
            "execution_a": {"type": "string"},
            "execution_b": {"type": "string"},
            "identical": {"type": "boolean", "description": "Same dag_hash, input_hash and provenance_chain_hash, "
                          "and no node differs."},
            "same_dag_hash": {"type": "boolean"},
            "same_input_hash": {"type": "boolean"},
            "same_provenance_chain_hash": {"type": "boolean",
                                           "description": "False while either execution has no chain hash."},
            "status": _ref("ValuePair"),
            "dag_hash": _ref("ValuePair"),
            "input_hash": _ref("ValuePair"),
            "provenance_chain_hash": _ref("ValuePair"),
            "nodes_differing": {"type": "array", "items": {"type": "string"}},
            "nodes_nondeterministic": {"type": "array", "items": {"type": "string"}},
            "nodes": {"type": "array", "items": _ref("NodeDiff"),
                      "description": "Every node: A's canonical topological order, then the nodes only B has."},
        },
        ["execution_a", "execution_b", "identical", "same_dag_hash", "same_input_hash",
         "same_provenance_chain_hash", "nodes_differing", "nodes_nondeterministic", "nodes"],
    ),
    "ReplayLinks": {
        "allOf": [
            _ref("ExecutionLinks"),
            _object({"replay_report": {"type": "string"}, "replay_of": {"type": "string"},
                     "diff": {"type": "string"}}, ["replay_report", "replay_of", "diff"]),
        ],
    },
    "ReplayAccepted": _object(
        {
            "execution_id": {"type": "string", "description": "The new execution: the replay."},
            "replay_of": {"type": "string", "description": "The original execution."},
            "dag_id": {"type": "string"},
            "dag_hash": _HASH,
            "status": {"const": "pending"},
            "links": _ref("ReplayLinks"),
        },
        ["execution_id", "replay_of", "dag_id", "dag_hash", "status", "links"],
    ),
    "ReplayReport": _object(
        {
            "execution_id": {"type": "string"},
            "replay_of": {"type": "string"},
            "status": {"type": "string", "enum": _EXECUTION_STATUSES, "description": "Status of the replay."},
            "original_status": {"type": "string", "enum": _EXECUTION_STATUSES},
            "matches": {"type": ["boolean", "null"], "description": "Whether the replay's provenance_chain_hash "
                        "equals the original's; null while the replay is pending or running."},
            "provenance_chain_hash": _object({"original": _NULLABLE_HASH, "replay": _NULLABLE_HASH},
                                             ["original", "replay"]),
            "nodes_differing": {"type": "array", "items": _ref("NodeDiff"),
                                "description": "A is the original, B the replay. While the replay runs, only "
                                               "nodes it has recorded are listed."},
            "nodes_nondeterministic": {"type": "array", "items": {"type": "string"}},
            "links": _ref("ReplayLinks"),
        },
        ["execution_id", "replay_of", "status", "matches", "provenance_chain_hash", "nodes_differing"],
    ),
    "ComponentHealth": _object(
        {"status": {"type": "string", "enum": ["ok", "error"]}, "detail": {"type": "string"}},
        ["status", "detail"],
    ),
    "Health": _object(
        {
            "status": {"type": "string", "enum": ["ok", "degraded", "error"]},
            "accepting_new_executions": {"type": "boolean"},
            "mode": {"type": "string", "enum": ["embedded", "distributed"]},
            "checkpoint_strategy": {"type": "string", "enum": ["database", "file", "memory"],
                                    "description": "Where completed nodes' outputs are kept."},
            "components": _object(
                {name: _ref("ComponentHealth") for name in ("database", "broker", "workers")},
                ["database", "broker", "workers"],
            ),
        },
        ["status", "components"],
    ),
}

_ERROR_DESCRIPTIONS = {
    400: "Invalid request: bad JSON or YAML, a value outside the JSON domain (details.path names it), "
         "unknown fields or an invalid query parameter (details.parameter names it).",
    401: "Missing or invalid bearer token.",
    404: "Unknown DAG, execution or route.",
    409: "Conflict with the stored state: a different DAG under the same id, a retired DAG, "
         "or a reused idempotency key.",
    413: "Request body larger than GL_ORCHESTRATOR_MAX_REQUEST_BYTES.",
    415: "Unsupported Content-Type.",
    503: "Not accepting new executions, or the broker is unreachable.",
    500: "Unexpected server error; details.request_id names the server log entry.",
}

_PARAMETERS: dict[str, Any] = {
    "DagId": {"name": "dag_id", "in": "path", "required": True,
              "description": "Neither . nor ..; an id outside the pattern gets a 404.",
              "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.\\-]{1,63}$"}},
    "OtherExecutionId": {"name": "other_execution_id", "in": "path", "required": True,
                         "description": "Execution B of the diff; an id outside the pattern gets a 404.",
                         "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.\\-]{1,64}$"}},
    "ExecutionId": {"name": "execution_id", "in": "path", "required": True,
                    "description": "An id outside the pattern gets a 404.",
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.\\-]{1,64}$"}},
}

_DAG_BODY = {
    "required": True,
    "description": "The DAG document as JSON, or as YAML with Content-Type application/yaml or application/x-yaml.",
    "content": {
        "application/json": {"schema": _ref("DagDocument")},
        "application/yaml": {"schema": _ref("DagDocument")},
        "application/x-yaml": {"schema": _ref("DagDocument")},
    },
}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _paths() -> dict[str, Any]:
    dag_id = [{"$ref": "#/components/parameters/DagId"}]
    execution_id = [{"$ref": "#/components/parameters/ExecutionId"}]
    return {
        "/dags": {
            "post": {
                "operationId": "createDag", "summary": "Register a DAG",
                "description": "Validates the document against the registered agents. Sending the same document "
                               "again returns 200; a different document under a registered dag_id is a 409.",
                "requestBody": _DAG_BODY,
                "responses": {
                    "201": _json(_ref("Dag"), "Registered."),
                    "200": _json(_ref("Dag"), "The same document was already registered."),
                    **_errors(400, 401, 409, 413, 415),
                },
            },
            "get": {
                "operationId": "listDags", "summary": "List DAGs",
                "parameters": [_query("include_retired", {"type": "boolean", "default": False},
                                      "Include retired DAGs.")],
                "responses": {"200": _json(_ref("DagList"), "DAGs ordered by dag_id."), **_errors(400, 401)},
            },
        },
        "/dags/{dag_id}": {
            "parameters": dag_id,
            "get": {
                "operationId": "getDag", "summary": "Read a DAG with its normalized definition",
                "responses": {"200": _json(_ref("Dag"), "The DAG."), **_errors(401, 404)},
            },
            "put": {
                "operationId": "replaceDag", "summary": "Register or replace a DAG",
                "description": "The document's dag_id must equal the path's. Replacing makes a retired DAG "
                               "active again; earlier executions keep the document they ran.",
                "requestBody": _DAG_BODY,
                "responses": {
                    "201": _json(_ref("Dag"), "Registered."),
                    "200": _json(_ref("Dag"), "Replaced or unchanged."),
                    **_errors(400, 401, 413, 415),
                },
            },
            "delete": {
                "operationId": "deleteDag", "summary": "Retire or delete a DAG",
                "description": "A DAG with executions is retired and keeps its history; one without is deleted.",
                "responses": {"200": _json(_ref("DagRemoval"), "Retired or deleted."), **_errors(401, 404)},
            },
        },
        "/dags/{dag_id}/validate": {
            "parameters": dag_id,
            "post": {
                "operationId": "validateDag", "summary": "Validate a DAG against the registered agents",
                "description": "Validates the document in the body, or the stored DAG when the body is empty. "
                               "Returns 200 whether or not the DAG is valid.",
                "requestBody": {**_DAG_BODY, "required": False},
                "responses": {"200": _json(_ref("ValidationResult"), "The validation result."),
                              **_errors(400, 401, 404, 413, 415)},
            },
        },
        "/dags/{dag_id}/execute": {
            "parameters": dag_id,
            "post": {
                "operationId": "executeDag", "summary": "Start an execution",
                "description": "Stores a pending execution, sends its first nodes and returns at once. "
                               "With an Idempotency-Key header, repeating the request returns the same "
                               "execution (header Idempotent-Replayed: true), and sends its first nodes again "
                               "while it is still pending, such as after a 503 broker_unavailable.",
                "parameters": [{
                    "name": "Idempotency-Key", "in": "header", "required": False,
                    "description": "Given once; a comma is rejected, because servers join repeated headers with commas.",
                    "schema": {"type": "string", "pattern": "^[\\x21-\\x2b\\x2d-\\x7e]{1,255}$"},
                }],
                "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("ExecuteRequest")}}},
                "responses": {"202": _json(_ref("ExecutionAccepted"), "Accepted."),
                              **_errors(400, 401, 404, 409, 413, 415, 503)},
            },
        },
        "/executions": {
            "get": {
                "operationId": "listExecutions", "summary": "List executions, newest first",
                "parameters": [
                    _query("status", {"type": "string", "enum": _EXECUTION_STATUSES}, "Only this status."),
                    _query("dag_id", {"type": "string", "pattern": "^[A-Za-z0-9_.\\-]{1,63}$"},
                           "Only executions of this DAG."),
                    _query("since", {"type": "string", "examples": ["30m", "24h", "7d", "2026-01-31T00:00:00Z"]},
                           "Created within this duration (1-9 digits and s, m, h, d or w, at most 999999999d) "
                           "or at or after this ISO 8601 time (UTC when no offset is given)."),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                           "Page size, in the digits 0-9 only."),
                    _query("cursor", {"type": "string"}, "next_cursor of the previous page."),
                ],
                "responses": {"200": _json(_ref("ExecutionPage"), "One page."), **_errors(400, 401)},
            },
        },
        "/executions/{execution_id}": {
            "parameters": execution_id,
            "get": {
                "operationId": "getExecution", "summary": "Read an execution with per-node states and timings",
                "responses": {"200": _json(_ref("Execution"), "The execution."), **_errors(401, 404)},
            },
        },
        "/executions/{execution_id}/provenance": {
            "parameters": execution_id,
            "get": {
                "operationId": "getProvenance", "summary": "Verify an execution's provenance chain",
                "description": "Recomputes every output, input, chain and execution hash from stored data, "
                               "and checks the execution's signature, when one is stored, against the "
                               "recomputed provenance_chain_hash and the trusted keys.",
                "responses": {"200": _json(_ref("Provenance"), "The verification report."), **_errors(401, 404)},
            },
        },
        "/executions/{execution_id}/checkpoints": {
            "parameters": execution_id,
            "get": {
                "operationId": "getCheckpoints", "summary": "List checkpoints with their verification result",
                "responses": {"200": _json(_ref("CheckpointList"), "The checkpoints."), **_errors(401, 404)},
            },
        },
        "/executions/{execution_id}/audit-export": {
            "parameters": execution_id,
            "get": {
                "operationId": "getAuditExport", "summary": "Export the execution's audit bundle",
                "description": "One self-contained JSON document (format gl-audit-bundle-v1) with the DAG "
                               "document, the input, every node's input document, outputs, hashes, status, "
                               "attempts and timings, the chain and the signed chain head. "
                               "verifier/gl_audit_verify.py checks it offline.",
                "responses": {"200": _json({"type": "object"}, "The audit bundle."), **_errors(401, 404)},
            },
        },
        "/executions/{execution_id}/supersede": {
            "parameters": execution_id,
            "post": {
                "operationId": "supersedeExecution", "summary": "Mark a regenerated execution superseded",
                "description": "The integrity sweep and gl_orchestrator_provenance_chain_valid then skip the "
                               "execution; its records stay unchanged as evidence. 409 when it has not ended or "
                               "is already superseded.",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _object({
                    "superseded_by": {"type": "string", "description": "The execution that regenerated this one."},
                    "reason": {"type": "string", "maxLength": 2000},
                }, ["superseded_by"])}}},
                "responses": {"200": _json(_object({
                    "execution_id": {"type": "string"}, "superseded_by": {"type": "string"},
                    "superseded_at": {"type": "string", "format": "date-time"}, "reason": {"type": "string"},
                }, ["execution_id", "superseded_by", "superseded_at", "reason"]), "The mark."),
                    **_errors(400, 401, 404, 409)},
            },
        },
        "/executions/{execution_id}/resume": {
            "parameters": execution_id,
            "post": {
                "operationId": "resumeExecution", "summary": "Resume from verified checkpoints",
                "description": "Reuses a checkpoint only when its outputs re-hash to its output_hash and its "
                               "node's input hash is unchanged; every other node and its descendants run again. "
                               "409 checkpoint_integrity_failed names each corrupted checkpoint with the expected "
                               "and actual hash, unless rerun_corrupted is true, which keeps the corrupted records "
                               "in the archive and runs those nodes again. 409 while the execution is pending or "
                               "running.",
                "requestBody": {"required": False, "content": {"application/json": {"schema": _object({
                    "rerun_corrupted": {"type": "boolean", "default": False},
                    "input_data": {"type": "object", "description": "Replace the execution's input; nodes "
                                   "whose inputs change run again."},
                }, additionalProperties=False)}}},
                "responses": {
                    "202": _json(_ref("ResumeReport"), "Nodes are running again."),
                    "200": _json(_ref("ResumeReport"), "Every checkpoint verified; nothing to run."),
                    **_errors(400, 401, 404, 409, 503),
                },
            },
        },
        "/executions/{execution_id}/cancel": {
            "parameters": execution_id,
            "post": {
                "operationId": "cancelExecution", "summary": "Cancel a pending or running execution",
                "description": "Marks the execution cancelled and revokes its queued and running node tasks. "
                               "Completed nodes keep their checkpoints, so a resume reuses them.",
                "responses": {
                    "200": _json(_object({
                        "execution_id": {"type": "string"}, "status": {"const": "cancelled"},
                        "previous_status": {"type": "string"}, "revoked_tasks": {"type": "integer"},
                        "nodes_completed": {"type": "array", "items": {"type": "string"}},
                    }), "Cancelled."),
                    **_errors(401, 404, 409),
                },
            },
        },
        "/signing-keys": {
            "get": {
                "operationId": "listSigningKeys", "summary": "List the keys that verify signed chain heads",
                "description": "The key that the finalizer signs with (GL_ORCHESTRATOR_SIGNING_KEY_FILE) and "
                               "the public keys of GL_ORCHESTRATOR_TRUSTED_KEYS_FILE.",
                "responses": {"200": _json(_ref("SigningKeys"), "The signing keys."), **_errors(401)},
            },
        },
        "/executions/{execution_id}/diff/{other_execution_id}": {
            "parameters": [*execution_id, {"$ref": "#/components/parameters/OtherExecutionId"}],
            "get": {
                "operationId": "diffExecutions", "summary": "Compare two executions node by node",
                "description": "Compares execution_id (A) with other_execution_id (B) from their stored records: "
                               "per node the input hash, agent and version, params, output hash and status. "
                               "A node with the same input hash but a different output hash is marked "
                               "nondeterministic. No hash is recomputed; GET .../provenance verifies a chain.",
                "responses": {"200": _json(_ref("ExecutionDiff"), "The diff."), **_errors(401, 404)},
            },
        },
        "/executions/{execution_id}/replay": {
            "parameters": execution_id,
            "post": {
                "operationId": "replayExecution", "summary": "Run a finished execution again and compare",
                "description": "Starts a new execution of the original's stored DAG document, even if the DAG "
                               "was replaced or retired since, on the original's input. The new execution's "
                               "execution_options are the original's plus replay_of. The body, if any, must be "
                               "an empty object. 409 while the original is pending or running, and 409 dag_invalid "
                               "when an agent of the document is not registered.",
                "requestBody": {"required": False, "content": {"application/json": {"schema": _object(
                    {}, additionalProperties=False)}}},
                "responses": {"202": _json(_ref("ReplayAccepted"), "The replay is pending."),
                              **_errors(400, 401, 404, 409, 503)},
            },
        },
        "/executions/{execution_id}/replay-report": {
            "parameters": execution_id,
            "get": {
                "operationId": "getReplayReport", "summary": "Compare a replay with its original",
                "description": "404 not_a_replay for an execution that was not started as a replay.",
                "responses": {"200": _json(_ref("ReplayReport"), "The comparison so far."), **_errors(401, 404)},
            },
        },
        "/health": {
            "get": {
                "operationId": "getHealth", "summary": "Check database, broker and workers",
                "description": "Needs no token. 200 when the database is reachable (status ok or degraded), "
                               "503 when it is not.",
                "security": [],
                "responses": {"200": _json(_ref("Health"), "Database reachable."),
                              "503": _json(_ref("Health"), "Database unreachable.")},
            },
        },
        "/metrics": {
            "get": {
                "operationId": "getMetrics", "summary": "Prometheus exposition",
                "responses": {
                    "200": {"description": "Metrics in the Prometheus text format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}}},
                    **_errors(401),
                },
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "getOpenApi", "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document."), **_errors(401)},
            },
        },
    }


def openapi_document() -> dict[str, Any]:
    """Return a fresh copy of the OpenAPI document, safe for the caller to change."""
    responses = {
        f"Error{status}": _json(_ref("Error"), description) for status, description in _ERROR_DESCRIPTIONS.items()
    }
    responses["Error401"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "gl-orchestrator",
            "version": "1",
            "description": "Run auditable calculation DAGs on Celery workers. Every response carries "
                           "X-Request-ID; errors have the shape of the Error schema.",
        },
        "servers": [{"url": API_PREFIX}],
        "security": [{"bearerAuth": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": _SCHEMAS,
            "parameters": _PARAMETERS,
            "responses": responses,
        },
    }
    return copy.deepcopy(document)
