"""Alembic migrations of the orchestrator schema."""
