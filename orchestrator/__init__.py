"""The orchestrator core: DAGs, hashing, scheduling rules, provenance and stores.

This package does no messaging and serves no HTTP: it imports neither Celery
nor Flask. ``workers`` (the Celery adapter) and ``api`` (the Flask adapter)
call into it with ids and map its exceptions to retries or HTTP statuses.
It does talk to the database, through SQLAlchemy, behind ``Database``.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
