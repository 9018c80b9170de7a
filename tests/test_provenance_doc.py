"""Check docs/provenance.md against the code.

The page's worked example lists canonical bytes and hashes in labelled fenced
blocks. These tests recompute every hash from the page's own bytes with
hashlib alone, and rebuild every document from the page's inputs with
orchestrator.hashing. They also run the example through the scheduler on
SQLite and PostgreSQL. A change to the scheme, the code or the page that makes
them disagree fails here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from orchestrator import hashing
from orchestrator.agents import AgentRegistry
from orchestrator.dag import Dag, parse_dag
from orchestrator.database import Database
from orchestrator.finalizer import finalize_execution
from orchestrator.loading import load_dag_document
from orchestrator.mapping import resolve_inputs
from orchestrator.repository import register_dag
from orchestrator.scheduler import FollowUp, Scheduler

PAGE = Path(__file__).resolve().parent.parent / "docs" / "provenance.md"
# A fenced block whose info string carries a label: ```text label=EF.chain_hash
_LABELLED_BLOCK = re.compile(
    r"^```(?P<language>\w+) label=(?P<label>\S+)\n(?P<body>.*?)\n```$", re.MULTILINE | re.DOTALL
)
_HASH = re.compile(r"[0-9a-f]{64}")
NODE_IDS = ("EF", "activity", "co2e")
NODE_FIELDS = (
    "outputs",
    "outputs.canonical",
    "output_hash",
    "input_document.canonical",
    "input_hash",
    "chain_document.canonical",
    "chain_hash",
)
EXPECTED_LABELS = {
    "null.canonical",
    "null.hash",
    "example.dag",
    "example.agents",
    "example.input",
    "dag.canonical",
    "dag.hash",
    "order",
    "execution.document.canonical",
    "execution.provenance_chain_hash",
    "skipped.input",
    "skipped.co2e.chain_document.canonical",
    "skipped.co2e.chain_hash",
    "skipped.execution.document.canonical",
    "skipped.execution.provenance_chain_hash",
    *(f"{node_id}.{field}" for node_id in NODE_IDS for field in NODE_FIELDS),
}
# Each block of canonical bytes and the block with the hash of those bytes.
HASHED_BLOCKS = {
    "null.canonical": "null.hash",
    "dag.canonical": "dag.hash",
    "execution.document.canonical": "execution.provenance_chain_hash",
    "skipped.co2e.chain_document.canonical": "skipped.co2e.chain_hash",
    "skipped.execution.document.canonical": "skipped.execution.provenance_chain_hash",
    **{f"{node_id}.outputs.canonical": f"{node_id}.output_hash" for node_id in NODE_IDS},
    **{f"{node_id}.input_document.canonical": f"{node_id}.input_hash" for node_id in NODE_IDS},
    **{f"{node_id}.chain_document.canonical": f"{node_id}.chain_hash" for node_id in NODE_IDS},
}


def _read_blocks() -> dict[str, str]:
    blocks: dict[str, str] = {}
    for match in _LABELLED_BLOCK.finditer(PAGE.read_text(encoding="utf-8")):
        label = match.group("label")
        assert label not in blocks, f"docs/provenance.md has two blocks labelled {label!r}"
        blocks[label] = match.group("body")
    return blocks


BLOCKS = _read_blocks()


def block_bytes(label: str) -> bytes:
    """Return a block's bytes as the page defines them: its text in UTF-8, without the final newline."""
    return BLOCKS[label].encode("utf-8")


def block_json(label: str) -> Any:
    return hashing.json_loads(BLOCKS[label])


def block_hash(label: str) -> str:
    value = BLOCKS[label]
    assert _HASH.fullmatch(value), f"block {label!r} is not 64 lowercase hex characters: {value!r}"
    return value


def example_registry() -> AgentRegistry:
    """Run the page's agent code and return the registry it fills."""
    namespace: dict[str, Any] = {}
    exec(compile(BLOCKS["example.agents"], "docs/provenance.md:example.agents", "exec"), namespace)  # noqa: S102
    registry = namespace["registry"]
    assert isinstance(registry, AgentRegistry)
    return registry


def example_dag() -> Dag:
    document = load_dag_document(BLOCKS["example.dag"], filename="example.yaml")
    return parse_dag(document, example_registry())


def test_page_has_every_label() -> None:
    missing = EXPECTED_LABELS - BLOCKS.keys()
    assert not missing, f"docs/provenance.md lacks blocks labelled {sorted(missing)}"


@pytest.mark.parametrize("bytes_label", sorted(HASHED_BLOCKS))
def test_page_hash_matches_page_bytes(bytes_label: str) -> None:
    expected = block_hash(HASHED_BLOCKS[bytes_label])
    assert hashlib.sha256(block_bytes(bytes_label)).hexdigest() == expected


@pytest.mark.parametrize("bytes_label", sorted(HASHED_BLOCKS))
def test_page_bytes_are_canonical(bytes_label: str) -> None:
    value = block_json(bytes_label)
    assert hashing.canonical_json(value) == block_bytes(bytes_label)


def test_null_hash_matches_code() -> None:
    assert block_hash("null.hash") == hashing.output_hash(None)
    assert block_bytes("null.canonical") == b"null"


def test_dag_normalizes_to_page_bytes() -> None:
    dag = example_dag()

    assert hashing.canonical_json(dag.document) == block_bytes("dag.canonical")
    assert dag.dag_hash == block_hash("dag.hash")


def test_canonical_order_matches_page() -> None:
    dag = example_dag()

    assert list(dag.topological_order()) == BLOCKS["order"].splitlines()
    assert dag.topological_order() == NODE_IDS


def test_agents_return_page_outputs() -> None:
    dag = example_dag()
    registry = example_registry()
    input_data = block_json("example.input")
    results: dict[str, Any] = {}

    for node_id in dag.topological_order():
        node = dag.nodes[node_id]
        agent = registry.get(node.agent_id, node.agent_version)
        outputs = agent(resolve_inputs(node, input_data, results), node.params)
        assert outputs == block_json(f"{node_id}.outputs"), node_id
        assert hashing.canonical_json(outputs) == block_bytes(f"{node_id}.outputs.canonical"), node_id
        results[node_id] = outputs


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_output_hash_matches_code(node_id: str) -> None:
    outputs = block_json(f"{node_id}.outputs")

    assert hashing.canonical_json(outputs) == block_bytes(f"{node_id}.outputs.canonical")
    assert hashing.output_hash(outputs) == block_hash(f"{node_id}.output_hash")


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_input_document_matches_code(node_id: str) -> None:
    dag = example_dag()
    registry = example_registry()
    node = dag.nodes[node_id]
    agent = registry.get(node.agent_id, node.agent_version)
    results = {parent: block_json(f"{parent}.outputs") for parent in dag.ancestors(node_id)}
    inputs = resolve_inputs(node, block_json("example.input"), results)

    document = hashing.input_document(agent.agent_id, agent.version, node.params, inputs)
    assert hashing.canonical_json(document) == block_bytes(f"{node_id}.input_document.canonical")
    assert hashing.input_hash(agent.agent_id, agent.version, node.params, inputs) == block_hash(f"{node_id}.input_hash")


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_chain_document_matches_code(node_id: str) -> None:
    dag = example_dag()
    parent_hashes = [block_hash(f"{parent}.chain_hash") for parent in dag.parents(node_id)]
    input_hash = block_hash(f"{node_id}.input_hash")
    output_hash = block_hash(f"{node_id}.output_hash")
    document = {
        "scheme": hashing.SCHEME,
        "node_id": node_id,
        "status": "completed",
        "input_hash": input_hash,
        "output_hash": output_hash,
        "parent_hashes": sorted(parent_hashes),
    }

    assert hashing.canonical_json(document) == block_bytes(f"{node_id}.chain_document.canonical")
    chain_hash = hashing.chain_hash(node_id, "completed", input_hash, output_hash, parent_hashes)
    assert chain_hash == block_hash(f"{node_id}.chain_hash")


def test_execution_hash_matches_code() -> None:
    dag_hash = block_hash("dag.hash")
    chain = [block_hash(f"{node_id}.chain_hash") for node_id in NODE_IDS]
    document = {"scheme": hashing.SCHEME, "dag_hash": dag_hash, "chain": chain}

    assert hashing.canonical_json(document) == block_bytes("execution.document.canonical")
    assert hashing.provenance_chain_hash(dag_hash, chain) == block_hash("execution.provenance_chain_hash")


def test_skipped_variant_matches_code() -> None:
    null_hash = hashing.output_hash(None)
    parents = [block_hash("EF.chain_hash"), block_hash("activity.chain_hash")]
    skipped = {
        "scheme": hashing.SCHEME,
        "node_id": "co2e",
        "status": "skipped",
        "input_hash": null_hash,
        "output_hash": null_hash,
        "parent_hashes": sorted(parents),
    }
    assert hashing.canonical_json(skipped) == block_bytes("skipped.co2e.chain_document.canonical")
    assert hashing.chain_hash("co2e", "skipped", null_hash, null_hash, parents) == block_hash("skipped.co2e.chain_hash")

    chain = [block_hash("EF.chain_hash"), block_hash("activity.chain_hash"), block_hash("skipped.co2e.chain_hash")]
    document = {"scheme": hashing.SCHEME, "dag_hash": block_hash("dag.hash"), "chain": chain}
    assert hashing.canonical_json(document) == block_bytes("skipped.execution.document.canonical")
    expected = block_hash("skipped.execution.provenance_chain_hash")
    assert hashing.provenance_chain_hash(block_hash("dag.hash"), chain) == expected


# -- the example run by the scheduler ------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> Iterator[Database]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    db = Database(url)
    yield db
    db.dispose()


def _run_example(db: Database, input_data: Any) -> tuple[str, str | None]:
    """Run the page's example as the node task does, without Celery, and return its execution id and chain hash."""
    registry = example_registry()
    dag = parse_dag(load_dag_document(BLOCKS["example.dag"], filename="example.yaml"), registry)
    register_dag(db, dag, replace=True)
    scheduler = Scheduler(db, registry)
    execution_id, follow_up = scheduler.create_execution(dag, input_data)

    pending = list(follow_up.dispatches)
    last: FollowUp = follow_up
    while pending:
        dispatch = pending.pop(0)
        claim = scheduler.claim(dispatch.execution_id, dispatch.node_id, dispatch.task_id)
        assert claim.run, dispatch.node_id
        prepared = scheduler.prepare(claim)
        if isinstance(prepared, str):
            last = scheduler.record_skip(claim, prepared)
        else:
            outputs = prepared.agent(prepared.inputs, prepared.params)
            last = scheduler.record_success(claim, prepared, hashing.canonical_json(outputs), outputs)
        pending.extend(last.dispatches)
    assert last.finalize

    result = finalize_execution(db, execution_id)
    assert result.status == "completed"
    assert result.chain_valid is True
    return execution_id, result.provenance_chain_hash


def _stored_records(db: Database, execution_id: str) -> dict[str, Any]:
    with db.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT node_id, ordinal, status, input_document, input_hash, output_hash, parent_hashes, chain_hash "
                "FROM execution_provenance WHERE execution_id = :execution_id"
            ),
            {"execution_id": execution_id},
        ).mappings().all()
    records = {}
    for row in rows:
        record = dict(row)
        for column in ("input_document", "parent_hashes"):
            # SQLite returns JSON columns of a text query as text, psycopg2 as decoded values.
            if isinstance(record[column], str):
                record[column] = hashing.json_loads(record[column])
        records[row["node_id"]] = record
    return records


def test_scheduler_run_matches_page(database: Database) -> None:
    execution_id, provenance_chain_hash = _run_example(database, block_json("example.input"))
    records = _stored_records(database, execution_id)

    assert provenance_chain_hash == block_hash("execution.provenance_chain_hash")
    assert sorted(records) == sorted(NODE_IDS)
    for ordinal, node_id in enumerate(NODE_IDS):
        record = records[node_id]
        assert record["ordinal"] == ordinal, node_id
        assert record["status"] == "completed", node_id
        assert hashing.canonical_json(record["input_document"]) == block_bytes(f"{node_id}.input_document.canonical")
        assert record["input_hash"] == block_hash(f"{node_id}.input_hash"), node_id
        assert record["output_hash"] == block_hash(f"{node_id}.output_hash"), node_id
        assert record["chain_hash"] == block_hash(f"{node_id}.chain_hash"), node_id
        parents = json.loads(block_bytes(f"{node_id}.chain_document.canonical"))["parent_hashes"]
        assert record["parent_hashes"] == parents, node_id


def test_scheduler_skip_matches_page(database: Database) -> None:
    execution_id, provenance_chain_hash = _run_example(database, block_json("skipped.input"))
    records = _stored_records(database, execution_id)

    assert provenance_chain_hash == block_hash("skipped.execution.provenance_chain_hash")
    assert records["co2e"]["status"] == "skipped"
    assert records["co2e"]["input_document"] is None
    assert records["co2e"]["chain_hash"] == block_hash("skipped.co2e.chain_hash")
    assert records["EF"]["chain_hash"] == block_hash("EF.chain_hash")
    assert records["activity"]["chain_hash"] == block_hash("activity.chain_hash")
