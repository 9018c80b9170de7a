"""A worker whose pool process dies right after one node's commit, once.

Fault injection for tests only: it wraps ``send_follow_up`` in the task
module so that, for the node named in ``GL_TEST_CRASH_AFTER_COMMIT_NODE``, the
pool process exits before sending the messages the commit asked for. The
marker file makes it happen once, so the redelivered message can recover.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import workers.tasks
from orchestrator_cli.main import main

_original = workers.tasks.send_follow_up
_node = os.environ["GL_TEST_CRASH_AFTER_COMMIT_NODE"]
_marker = Path(os.environ["GL_TEST_CRASH_MARKER"])


def _crash_once(app: Any, follow_up: Any) -> None:
    queued = {dispatch.node_id for dispatch in follow_up.dispatches}
    if follow_up.dispatches and not _marker.exists() and _node_sent_by_this_task(follow_up, queued):
        _marker.write_text(",".join(sorted(queued)), encoding="utf-8")
        os._exit(1)
    _original(app, follow_up)


def _node_sent_by_this_task(follow_up: Any, queued: set[str]) -> bool:
    from celery import current_task

    return current_task is not None and current_task.request.args[1] == _node


workers.tasks.send_follow_up = _crash_once

if __name__ == "__main__":
    sys.argv = ["orchestrator", *sys.argv[1:]]
    main()
