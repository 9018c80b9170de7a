"""Node conditions: a small expression language that is compiled once and never run with eval.

A condition decides whether a node runs. It reads the execution input and the
outputs of upstream nodes and must evaluate to a boolean::

    input.include_scope1 == true
    results.combustion.total > 0 and input.region in ["EU", "US"]
    results["load-2024"].rows[0]["fuel-type"] != null

The grammar is a subset of Python expressions. :func:`compile_condition`
parses the text with :mod:`ast` and accepts only these node types:

* literals: numbers, strings, ``true``/``false``/``null`` (``True``/``False``/
  ``None`` too), lists of expressions, and unary minus on a number literal;
* references: ``input``, ``input.<key>...`` and ``results.<node>.<key>...``,
  where a key or node id that is not a Python identifier is written as a
  subscript with a string or non-negative integer constant (``results["a-b"][0]``);
* comparisons ``==  !=  <  <=  >  >=  in  not in``, chained as in Python;
* ``and``, ``or``, ``not`` and parentheses.

The compiled tree is evaluated by this module's own code, which reads JSON
values by key and never looks up Python attributes.
Comparisons follow JSON types, not Python's: ``true == 1`` is an error rather
than true, ``==`` between two non-null values of different types raises
ConditionError, and ordering needs two numbers or two strings. ``and``, ``or``
and ``not`` take booleans only and short-circuit as in Python, so
``input.x != null and input.x > 0`` never compares null.
"""

from __future__ import annotations

import ast
import io
import tokenize
import json
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator.errors import ConditionError, InputMappingError, JsonDomainError
from orchestrator.hashing import check_json_domain
from orchestrator.mapping import INPUT, RESULTS, json_type_name, read_segments

__all__ = ["Condition", "MAX_CONDITION_LENGTH", "MAX_CONDITION_DEPTH", "compile_condition"]

MAX_CONDITION_LENGTH = 4096
MAX_CONDITION_DEPTH = 32
_MAX_SHOWN_VALUE = 60

_LITERAL_NAMES: dict[str, Any] = {"true": True, "false": False, "null": None}

_OPERATOR_SYMBOLS: dict[type[ast.cmpop], str] = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
}

_ORDERINGS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}

# Friendlier names for the Python syntax that users try most often.
_REJECTED_SYNTAX: dict[type[ast.AST], str] = {
    ast.Call: "function calls",
    ast.BinOp: "arithmetic",
    ast.Lambda: "lambda expressions",
    ast.IfExp: "conditional expressions",
    ast.Dict: "dict literals",
    ast.Set: "set literals",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.NamedExpr: "assignment expressions",
    ast.JoinedStr: "f-strings",
    ast.Starred: "starred expressions",
    ast.Slice: "slices",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
}


@dataclass(frozen=True)
class _Context:
    condition: Condition
    input_data: Any
    results: Mapping[str, Any]
    execution_id: str | None
    node_id: str | None


class _Expression(Protocol):
    @property
    def text(self) -> str: ...

    def evaluate(self, context: _Context) -> Any: ...


@dataclass(frozen=True)
class _Literal:
    text: str
    value: Any

    def evaluate(self, context: _Context) -> Any:
        return self.value


@dataclass(frozen=True)
class _Reference:
    text: str
    node_id: str | None  # None reads the execution input
    segments: tuple[str, ...]

    def evaluate(self, context: _Context) -> Any:
        try:
            if self.node_id is None:
                return read_segments(context.input_data, self.segments, what=self.text)
            if self.node_id not in context.results:
                raise InputMappingError(f"{self.text} not found: there are no results for node {self.node_id!r}")
            return read_segments(context.results[self.node_id], self.segments, what=self.text)
        except InputMappingError as exc:
            raise InputMappingError(
                f"{_describe(context)} reads a missing key: {exc}",
                execution_id=context.execution_id,
                node_id=context.node_id,
            ) from exc


@dataclass(frozen=True)
class _ListExpression:
    text: str
    items: tuple[_Expression, ...]

    def evaluate(self, context: _Context) -> Any:
        return [item.evaluate(context) for item in self.items]


@dataclass(frozen=True)
class _Not:
    text: str
    operand: _Expression

    def evaluate(self, context: _Context) -> Any:
        return not _boolean(self.operand, "not", context)


@dataclass(frozen=True)
class _BooleanOperation:
    text: str
    is_and: bool
    operands: tuple[_Expression, ...]

    def evaluate(self, context: _Context) -> Any:
        keyword = "and" if self.is_and else "or"
        for operand in self.operands:
            value = _boolean(operand, keyword, context)
            if value != self.is_and:
                return value
        return self.is_and


@dataclass(frozen=True)
class _Comparison:
    text: str
    left: _Expression
    operators: tuple[str, ...]
    comparators: tuple[_Expression, ...]

    def evaluate(self, context: _Context) -> Any:
        left_operand = self.left
        left = left_operand.evaluate(context)
        for symbol, right_operand in zip(self.operators, self.comparators):
            right = right_operand.evaluate(context)
            if not _compare(symbol, left_operand, left, right_operand, right, context):
                return False
            left_operand, left = right_operand, right
        return True


@dataclass(frozen=True)
class Condition:
    """A compiled node condition; build it with :func:`compile_condition`."""

    source: str
    node_references: frozenset[str]
    reads_input: bool
    _root: _Expression = field(repr=False, compare=False)

    def evaluate(
        self,
        input_data: Any,
        results: Mapping[str, Any],
        *,
        execution_id: str | None = None,
        node_id: str | None = None,
    ) -> bool:
        """Evaluate against the execution input and ``results`` (node id to outputs).

        Raise InputMappingError when a referenced key is missing, and
        ConditionError when a comparison mixes incompatible types or the
        result is not a boolean. ``execution_id`` and ``node_id`` are copied
        onto those errors.
        """
        context = _Context(self, input_data, results, execution_id, node_id)
        value = self._root.evaluate(context)
        if not isinstance(value, bool):
            raise ConditionError(
                f"{_describe(context)} evaluated to {_show(value)}, {json_type_name(value)}, not a boolean; "
                f"compare it explicitly, for example {self.source.strip()} == true",
                execution_id=execution_id,
                node_id=node_id,
            )
        return value


def compile_condition(source: str) -> Condition:
    """Compile condition text, raising ValueError that names what is invalid."""
    if not isinstance(source, str):
        raise ValueError(f"a condition must be a string, not {json_type_name(source)}")
    text = source.strip()
    if not text:
        raise ValueError("the condition is empty; write an expression such as input.enabled == true, or omit it")
    if len(source) > MAX_CONDITION_LENGTH:
        raise ValueError(f"the condition is {len(source)} characters long; the maximum is {MAX_CONDITION_LENGTH}")

    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        message = f"invalid syntax at column {exc.offset}" if exc.offset else "invalid syntax"
        if exc.msg != "invalid syntax":
            message += f": {exc.msg}"
        raise ValueError(message) from exc
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ValueError(f"the condition cannot be parsed: {exc}") from exc

    _reject_non_ascii_names(text)
    body = tree.body
    if isinstance(body, ast.Constant) and not isinstance(body.value, bool):
        raise ValueError(f"the condition is the constant {text}, which is never true or false; compare a value instead")
    if isinstance(body, ast.Name) and body.id in ("null", "None"):
        raise ValueError("the condition is null, which is never true or false; compare a value instead")
    if isinstance(body, ast.Name) and body.id in (INPUT, RESULTS):
        raise ValueError(f"the condition is the whole {body.id} object, not a true or false value; compare a key instead")

    compiler = _Compiler(text)
    root = compiler.compile(body, depth=0)
    return Condition(source, frozenset(compiler.node_references), compiler.reads_input, root)


def _reject_non_ascii_names(text: str) -> None:
    """Reject non-ASCII names: Python folds them to NFKC, so input.\ufb01 would read key "fi"."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return  # ast.parse has accepted the text; leave the error to it
    for token in tokens:
        if token.type == tokenize.NAME and not token.string.isascii():
            raise ValueError(
                f"the name {token.string!r} is not ASCII; read such keys with a subscript, "
                f'as in input["{token.string}"]'
            )


class _Compiler:
    """Translate a whitelisted Python AST into the evaluator's tree."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.node_references: set[str] = set()
        self.reads_input = False

    def compile(self, node: ast.expr, depth: int) -> _Expression:
        if depth > MAX_CONDITION_DEPTH:
            raise ValueError(f"the condition is nested more than {MAX_CONDITION_DEPTH} levels deep; simplify it")
        text = ast.get_source_segment(self.text, node) or self.text

        if isinstance(node, ast.Constant):
            return _Literal(text, _check_literal(node.value))
        if isinstance(node, ast.Name):
            return self._compile_name(node, text)
        if isinstance(node, (ast.Attribute, ast.Subscript)):
            return self._compile_reference(node, text)
        if isinstance(node, (ast.List, ast.Tuple)):
            return _ListExpression(text, tuple(self.compile(item, depth + 1) for item in node.elts))
        if isinstance(node, ast.UnaryOp):
            return self._compile_unary(node, text, depth)
        if isinstance(node, ast.BoolOp):
            operands = tuple(self.compile(value, depth + 1) for value in node.values)
            return _BooleanOperation(text, isinstance(node.op, ast.And), operands)
        if isinstance(node, ast.Compare):
            return self._compile_comparison(node, text, depth)

        description = _REJECTED_SYNTAX.get(type(node), f"{type(node).__name__} expressions")
        raise ValueError(
            f"{text} is not allowed because a condition cannot contain {description}; it may only compare "
            "references and literals with == != < <= > >= in, not in, and combine them with and, or, not"
        )

    def _compile_name(self, node: ast.Name, text: str) -> _Expression:
        if node.id in _LITERAL_NAMES:
            return _Literal(text, _LITERAL_NAMES[node.id])
        if node.id == INPUT:
            self.reads_input = True
            return _Reference(text, None, ())
        if node.id == RESULTS:
            raise ValueError("results must be followed by a node id, as in results.load.total")
        raise ValueError(
            f"name {node.id!r} is not allowed; use input.<key>, results.<node>.<key>, "
            "a quoted string, or true, false, null"
        )

    def _compile_reference(self, node: ast.Attribute | ast.Subscript, text: str) -> _Expression:
        chain: list[ast.Attribute | ast.Subscript] = []
        current: ast.expr = node
        while isinstance(current, (ast.Attribute, ast.Subscript)):
            chain.append(current)
            current = current.value
        chain.reverse()

        # Segments are checked left to right, so an error names the first bad one.
        segments: list[str] = []
        for link in chain:
            if isinstance(link, ast.Subscript):
                segments.append(_subscript_key(link.slice, self.text))
            elif link.attr.startswith("__"):
                raise ValueError(
                    f"attribute {link.attr!r} is not allowed; names starting with '__' are reserved, "
                    f"so write a key like that as a subscript: [{link.attr!r}]"
                )
            else:
                segments.append(link.attr)

        if not isinstance(current, ast.Name) or current.id not in (INPUT, RESULTS):
            raise ValueError(f"{text} is not allowed; attributes and subscripts may only follow input or results")
        if current.id == INPUT:
            self.reads_input = True
            return _Reference(text, None, tuple(segments))

        node_id = segments[0]
        self.node_references.add(node_id)
        return _Reference(text, node_id, tuple(segments[1:]))

    def _compile_unary(self, node: ast.UnaryOp, text: str, depth: int) -> _Expression:
        if isinstance(node.op, ast.Not):
            return _Not(text, self.compile(node.operand, depth + 1))
        operand = node.operand
        if (
            isinstance(node.op, ast.USub)
            and isinstance(operand, ast.Constant)
            and isinstance(operand.value, (int, float))
            and not isinstance(operand.value, bool)
        ):
            return _Literal(text, _check_literal(-operand.value))
        raise ValueError(f"{text} is not allowed; unary minus applies only to number literals such as -1.5")

    def _compile_comparison(self, node: ast.Compare, text: str, depth: int) -> _Expression:
        symbols = []
        for op in node.ops:
            symbol = _OPERATOR_SYMBOLS.get(type(op))
            if symbol is None:
                raise ValueError(f"operator {type(op).__name__} is not allowed; use == != < <= > >= in or not in")
            symbols.append(symbol)
        left = self.compile(node.left, depth + 1)
        comparators = tuple(self.compile(item, depth + 1) for item in node.comparators)
        return _Comparison(text, left, tuple(symbols), comparators)


def _check_literal(value: Any) -> Any:
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise ValueError(f"literal {value!r} is not allowed; use a number, a string, true, false or null")
    try:
        check_json_domain(value)
    except JsonDomainError as exc:
        raise ValueError(f"literal {value!r} is not allowed: {exc.reason}") from exc
    return value


def _subscript_key(key: ast.expr, text: str) -> str:
    if isinstance(key, ast.Constant) and isinstance(key.value, str):
        return key.value
    if isinstance(key, ast.Constant) and isinstance(key.value, int) and not isinstance(key.value, bool):
        if key.value >= 0:
            return str(key.value)
    key_text = ast.get_source_segment(text, key) or "this subscript"
    raise ValueError(f"subscript [{key_text}] is not allowed; use a quoted key or a non-negative integer index")


def _boolean(operand: _Expression, keyword: str, context: _Context) -> bool:
    value = operand.evaluate(context)
    if not isinstance(value, bool):
        raise ConditionError(
            f"{_describe(context)}: '{keyword}' needs booleans, but {operand.text} is {_show(value)}, "
            f"{json_type_name(value)}; compare it explicitly, for example {operand.text} == true",
            execution_id=context.execution_id,
            node_id=context.node_id,
        )
    return value


def _compare(
    symbol: str, left_operand: _Expression, left: Any, right_operand: _Expression, right: Any, context: _Context
) -> bool:
    """Apply one comparison with JSON semantics, raising ConditionError for incompatible types."""
    if symbol in ("==", "!="):
        if left is not None and right is not None and _json_kind(left) != _json_kind(right):
            raise _incompatible(symbol, left_operand, left, right_operand, right, context, "values of the same type")
        return _json_equal(left, right) == (symbol == "==")

    if symbol in _ORDERINGS:
        kinds = (_json_kind(left), _json_kind(right))
        if kinds not in (("number", "number"), ("string", "string")):
            raise _incompatible(symbol, left_operand, left, right_operand, right, context, "two numbers or two strings")
        return _ORDERINGS[symbol](left, right)

    return _contains(symbol, left_operand, left, right_operand, right, context) == (symbol == "in")


def _contains(
    symbol: str, left_operand: _Expression, left: Any, right_operand: _Expression, right: Any, context: _Context
) -> bool:
    kind = _json_kind(right)
    if kind == "list":
        return any(_json_equal(left, item) for item in right)
    if kind in ("string", "object") and _json_kind(left) == "string":
        return left in right
    raise _incompatible(
        symbol,
        left_operand,
        left,
        right_operand,
        right,
        context,
        "a list on the right, or a string on the left and a string or object on the right",
    )


def _incompatible(
    symbol: str,
    left_operand: _Expression,
    left: Any,
    right_operand: _Expression,
    right: Any,
    context: _Context,
    expected: str,
) -> ConditionError:
    return ConditionError(
        f"{_describe(context)} cannot compare {_show_operand(left_operand, left)} "
        f"with {_show_operand(right_operand, right)} using '{symbol}', which needs {expected}",
        execution_id=context.execution_id,
        node_id=context.node_id,
    )


def _json_kind(value: Any) -> str:
    """Return the JSON type of ``value``. Unlike in Python, a boolean is not a number here."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _json_equal(left: Any, right: Any) -> bool:
    """Compare two JSON values deeply, without Python's ``True == 1``."""
    # An explicit stack keeps deeply nested outputs from hitting the recursion limit.
    stack: list[tuple[Any, Any]] = [(left, right)]
    while stack:
        first, second = stack.pop()
        kind = _json_kind(first)
        if kind != _json_kind(second):
            return False
        if kind == "list":
            if len(first) != len(second):
                return False
            stack.extend(zip(first, second))
        elif kind == "object":
            if first.keys() != second.keys():
                return False
            stack.extend((first[key], second[key]) for key in first)
        elif first != second:
            return False
    return True


def _describe(context: _Context) -> str:
    label = f"condition {context.condition.source.strip()!r}"
    if context.node_id is not None:
        label += f" of node {context.node_id!r}"
    return label


def _show_operand(operand: _Expression, value: Any) -> str:
    if isinstance(operand, _Literal):
        return f"{operand.text} ({json_type_name(value)})"
    if value is None:
        return f"{operand.text} (null)"
    return f"{operand.text} ({_show(value)}, {json_type_name(value)})"


def _show(value: Any) -> str:
    """Render a value as JSON for messages, shortened, so users see true and null rather than True and None."""
    rendered = json.dumps(value, ensure_ascii=False, default=repr)
    if len(rendered) > _MAX_SHOWN_VALUE:
        rendered = rendered[: _MAX_SHOWN_VALUE - 3] + "..."
    return rendered
