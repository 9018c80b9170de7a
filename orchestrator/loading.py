"""Loading DAG documents from YAML or JSON text.

YAML goes through a safe loader (libyaml's when installed) that also rejects
duplicate keys, dates, binary values and alias expansion past a size limit,
so a document means the same thing whatever parser reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import DagProblem, DagValidationError, JsonDomainError
from orchestrator.hashing import check_json_domain
from orchestrator.mapping import json_type_name

__all__ = ["load_dag_document"]


_MAX_YAML_VALUES = 1_000_000
_YamlBaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _DocumentError(Exception):
    """A parse problem found by a hook inside the JSON or YAML parser."""


class _YamlValueError(yaml.constructor.ConstructorError):
    """A YAML value that has no JSON equivalent, or a duplicate key, with its position."""


class _DagYamlLoader(_YamlBaseLoader):  # type: ignore[misc]
    """A safe YAML loader, libyaml's when installed, that also rejects duplicate keys, dates and binary values."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            # The mapping's own keys may override keys merged in with <<, and that is not a duplicate.
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first_line = first_lines.get(key)
            except TypeError:
                continue  # SafeConstructor rejects unhashable keys itself.
            if first_line is not None:
                raise _YamlValueError(
                    None, None, f"duplicate key {key!r}, first defined on line {first_line}; remove one of them",
                    key_node.start_mark,
                )
            first_lines[key] = key_node.start_mark.line + 1
        return dict(super().construct_mapping(node, deep=deep))


def _reject_yaml_date(loader: Any, node: yaml.ScalarNode) -> None:
    raise _YamlValueError(
        None, None,
        f"{node.value} is read as a YAML date or timestamp, which is not a JSON value; "
        f'quote it to keep it a string: "{node.value}"',
        node.start_mark,
    )


def _reject_yaml_type(loader: Any, node: yaml.Node) -> None:
    raise _YamlValueError(
        None, None,
        f"values tagged {node.tag.replace('tag:yaml.org,2002:', '!!')} are not JSON values; "
        "use a string, list or mapping",
        node.start_mark,
    )


_DagYamlLoader.add_constructor("tag:yaml.org,2002:timestamp", _reject_yaml_date)
for _tag in ("binary", "set", "omap", "pairs"):
    _DagYamlLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _reject_yaml_type)


def load_dag_document(source: str | bytes | Path, *, filename: str | None = None) -> dict[str, Any]:
    """Parse YAML or JSON into a dict. A ``str`` is the text itself, and a ``Path`` is a file to read.

    ``filename`` names the document in messages and picks the format by its
    suffix (.json, .yaml, .yml). Without a known suffix, text that starts with
    ``{`` is read as JSON and any other text as YAML. Raise
    DagValidationError with one ``parse_error`` problem naming the file and
    line, and OSError when a file cannot be read.
    """
    if isinstance(source, Path):
        filename = filename or str(source)
        source = source.read_bytes()
    label = filename or "DAG document"
    text = _decode(source, label)

    # JSON text is not read as YAML, because YAML 1.1 accepts broken JSON and
    # reads some JSON numbers such as 1e3 as strings.
    suffix = Path(filename).suffix.lower() if filename else ""
    if suffix == ".json" or (suffix not in (".yaml", ".yml") and text.lstrip().startswith("{")):
        value = _parse_json(text, label)
    else:
        value = _parse_yaml(text, label)

    if value is None:
        raise _parse_error(f"{label} is empty; a DAG document is a mapping with dag_id and nodes")
    if not isinstance(value, dict):
        hint = "; to load a file, pass a pathlib.Path" if isinstance(value, str) else ""
        raise _parse_error(
            f"{label}: the top level must be a mapping with dag_id and nodes, not {json_type_name(value)}{hint}"
        )
    try:
        check_json_domain(value)
    except JsonDomainError as exc:
        raise _parse_error(f"{label}: {exc}") from exc
    return value


def _parse_error(message: str) -> DagValidationError:
    return DagValidationError(problems=[DagProblem("parse_error", message)])


def _decode(source: str | bytes, label: str) -> str:
    if isinstance(source, str):
        return source.removeprefix("\ufeff")
    try:
        return source.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _parse_error(f"{label}: byte {exc.start} is not valid UTF-8; save the file as UTF-8") from exc


def _parse_json(text: str, label: str) -> Any:
    def unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise _DocumentError(f"duplicate key {key!r} in a JSON object; remove one of them")
            result[key] = value
        return result

    def reject_constant(name: str) -> Any:
        raise _DocumentError(f"{name} is not a JSON number; use a finite number or null")

    try:
        return json.loads(text, object_pairs_hook=unique_object, parse_constant=reject_constant)
    except json.JSONDecodeError as exc:
        raise _parse_error(f"{label}, line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}") from exc
    except _DocumentError as exc:
        raise _parse_error(f"{label}: {exc}") from exc
    except RecursionError as exc:
        raise _parse_error(f"{label}: the JSON is nested too deeply") from exc


def _parse_yaml(text: str, label: str) -> Any:
    try:
        value = yaml.load(text, Loader=_DagYamlLoader)  # noqa: S506 - a SafeLoader subclass
    except _YamlValueError as exc:
        mark = exc.problem_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise _parse_error(f"{label}{where}: {exc.problem}") from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = exc.problem or exc.context
        raise _parse_error(f"{label}{where}: invalid YAML: {problem}") from exc
    except yaml.YAMLError as exc:
        raise _parse_error(f"{label}: invalid YAML: {exc}") from exc
    except RecursionError as exc:
        raise _parse_error(f"{label}: the YAML is nested too deeply") from exc

    _check_expanded_size(value, label)
    return value


def _check_expanded_size(value: Any, label: str) -> None:
    """Reject YAML whose aliases expand to a huge document ("billion laughs")."""
    count = 0
    stack = [value]
    while stack:
        item = stack.pop()
        count += 1
        if count > _MAX_YAML_VALUES:
            raise _parse_error(
                f"{label} expands to more than {_MAX_YAML_VALUES} values, usually through YAML aliases "
                "that repeat large parts of the document; write the values out"
            )
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
