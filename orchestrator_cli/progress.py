"""Live progress of an execution on a terminal: a bar and the counts of nodes done, running, failed and retried."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TextIO

import click

__all__ = ["NodeCounts", "ProgressLine", "count_nodes", "render_bar"]

_BAR_WIDTH = 30
_DONE = {"completed", "skipped"}
_RUNNING = {"queued", "running"}


@dataclass(frozen=True)
class NodeCounts:
    """Node counts of one execution at one moment."""

    total: int
    done: int
    running: int
    failed: int
    retrying: int
    retried: int

    @property
    def finished(self) -> int:
        """Nodes in a terminal state: done or failed."""
        return self.done + self.failed


def count_nodes(nodes: Iterable[Any], total: int) -> NodeCounts:
    """Count nodes (rows or dicts with ``status`` and ``attempt_count``) by what an operator watches for.

    ``retried`` is the number of extra attempts so far, over all nodes.
    """
    done = running = failed = retrying = retried = 0
    for node in nodes:
        status = node["status"] if isinstance(node, dict) else node.status
        attempts = (node["attempt_count"] if isinstance(node, dict) else node.attempt_count) or 0
        retried += max(attempts - 1, 0)
        if status in _DONE:
            done += 1
        elif status in _RUNNING:
            running += 1
        elif status == "failed":
            failed += 1
        elif status == "retrying":
            retrying += 1
    return NodeCounts(total, done, running, failed, retrying, retried)


def render_bar(counts: NodeCounts, elapsed_seconds: float) -> str:
    """Return one line: a bar of finished nodes, then the counts, e.g. ``[#####.....] 5/10 finished: ...``."""
    fraction = counts.finished / counts.total if counts.total else 1.0
    filled = round(fraction * _BAR_WIDTH)
    bar = "#" * filled + "." * (_BAR_WIDTH - filled)
    return (f"[{bar}] {counts.finished}/{counts.total} finished: {counts.done} done, {counts.failed} failed, "
            f"{counts.running} running, {counts.retrying} waiting to retry, {counts.retried} retried "
            f"({elapsed_seconds:.1f}s)")


class ProgressLine:
    """A progress line that a terminal redraws in place, and that a pipe or file receives only when it changes."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.interactive = out.isatty()
        self._last = ""

    def show(self, counts: NodeCounts, elapsed_seconds: float) -> None:
        line = render_bar(counts, elapsed_seconds)
        if self.interactive:
            # Pad over the previous line, which may have been longer.
            click.echo("\r" + line.ljust(len(self._last)), file=self.out, nl=False)
            self._last = line
            return
        # Without a terminal, print a line only when the counts change, not every poll.
        key = line.rsplit(" (", 1)[0]
        if key != self._last:
            click.echo(line, file=self.out)
            self._last = key

    def clear(self) -> None:
        """Remove the redrawn line before other output, so lines do not run into it."""
        if self.interactive and self._last:
            click.echo("\r" + " " * len(self._last) + "\r", file=self.out, nl=False)
            self._last = ""
