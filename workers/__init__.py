"""Celery adapter: the app, the node and finalizer tasks, and the embedded worker.

Tasks take ids only, call one core function of ``orchestrator``, and map the
core's exceptions to Celery retries or recorded node failures.
"""

from workers.app import create_celery_app, runtime_of
from workers.dispatch import send_follow_up

__all__ = ["create_celery_app", "runtime_of", "send_follow_up"]
