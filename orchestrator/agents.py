"""The agent registry: plain Python callables registered by id and version.

An agent receives its resolved inputs and the node's params as keyword
arguments ``inputs`` and ``params`` and returns a JSON value::

    from orchestrator.agents import agent

    @agent("ghg.co2e", version="1.0.0")
    def co2e(inputs, params):
        ...

Workers and the API import the modules named in
``GL_ORCHESTRATOR_AGENT_MODULES`` (dotted module names or paths to ``.py``
files), whose decorators fill the default registry.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import AgentNotFoundError, AgentRegistrationError

__all__ = ["Agent", "AgentRegistry", "agent", "default_registry", "import_agent_modules"]

logger = logging.getLogger(__name__)

AgentFunction = Callable[..., Any]
_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,63}$")
_VERSION_PATTERN = re.compile(r"^[A-Za-z0-9_.+\-]{1,63}$")


@dataclass(frozen=True)
class Agent:
    """A registered agent."""

    agent_id: str
    version: str
    function: AgentFunction
    description: str = ""

    def __call__(self, inputs: dict[str, Any], params: dict[str, Any]) -> Any:
        return self.function(inputs=inputs, params=params)


def _version_key(version: str) -> tuple[tuple[int, Any], ...]:
    """Order versions numerically where they are numeric ("1.10.0" after "1.9.2")."""
    parts = re.split(r"[.+\-]", version)
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in parts)


class AgentRegistry:
    """Agents by id and version."""

    def __init__(self) -> None:
        self._agents: dict[str, dict[str, Agent]] = {}

    def register(self, agent_id: str, version: str, function: AgentFunction, description: str = "") -> Agent:
        if not _ID_PATTERN.match(agent_id):
            raise AgentRegistrationError(
                f"agent id {agent_id!r} is invalid; use 1-63 characters of A-Z a-z 0-9 _ . -"
            )
        if not _VERSION_PATTERN.match(version):
            raise AgentRegistrationError(f"agent version {version!r} of {agent_id!r} is invalid")
        if not callable(function):
            raise AgentRegistrationError(f"agent {agent_id!r} must be callable")
        versions = self._agents.setdefault(agent_id, {})
        existing = versions.get(version)
        if existing is not None and existing.function is not function:
            same_source = (
                getattr(existing.function, "__module__", None) == getattr(function, "__module__", None)
                and getattr(existing.function, "__qualname__", None) == getattr(function, "__qualname__", None)
            )
            if not same_source:
                raise AgentRegistrationError(
                    f"agent {agent_id!r} version {version!r} is already registered by "
                    f"{existing.function.__module__}.{existing.function.__qualname__}; bump the version"
                )
        registered = Agent(agent_id, version, function, description)
        versions[version] = registered
        return registered

    def get(self, agent_id: str, version: str | None = None) -> Agent:
        """Return the agent, the highest registered version when ``version`` is None."""
        versions = self._agents.get(agent_id)
        if not versions:
            raise AgentNotFoundError(agent_id, version)
        if version is None:
            return versions[max(versions, key=_version_key)]
        try:
            return versions[version]
        except KeyError:
            raise AgentNotFoundError(agent_id, version, sorted(versions, key=_version_key)) from None

    def has(self, agent_id: str, version: str | None = None) -> bool:
        versions = self._agents.get(agent_id, {})
        return bool(versions) if version is None else version in versions

    def describe(self) -> list[dict[str, str]]:
        return [
            {"agent_id": a.agent_id, "version": a.version, "description": a.description}
            for versions in self._agents.values()
            for a in versions.values()
        ]

    def __len__(self) -> int:
        return sum(len(versions) for versions in self._agents.values())


default_registry = AgentRegistry()


def agent(
    agent_id: str, version: str = "1.0.0", *, description: str = "", registry: AgentRegistry | None = None
) -> Callable[[AgentFunction], AgentFunction]:
    """Register the decorated function as agent ``agent_id`` at ``version``."""

    def decorate(function: AgentFunction) -> AgentFunction:
        doc = description or (function.__doc__ or "").strip().split("\n")[0]
        (registry or default_registry).register(agent_id, version, function, doc)
        return function

    return decorate


def import_agent_modules(names: Iterable[str]) -> list[str]:
    """Import each agent module by dotted name or ``.py`` path; return what was imported."""
    imported = []
    for name in names:
        if name.endswith(".py") or "/" in name:
            path = Path(name).expanduser().resolve()
            if not path.is_file():
                raise AgentRegistrationError(f"agent module file {name!r} does not exist")
            module_name = "gl_agents_" + re.sub(r"\W", "_", str(path.with_suffix("")).strip("/"))
            if module_name not in sys.modules:
                spec = importlib.util.spec_from_file_location(module_name, path)
                if spec is None or spec.loader is None:
                    raise AgentRegistrationError(f"agent module file {name!r} cannot be loaded")
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[module_name]
                    raise
        else:
            try:
                importlib.import_module(name)
            except ImportError as exc:
                raise AgentRegistrationError(
                    f"agent module {name!r} cannot be imported: {exc}; check GL_ORCHESTRATOR_AGENT_MODULES"
                ) from exc
        logger.debug("agent module imported module=%s", name)
        imported.append(name)
    return imported
