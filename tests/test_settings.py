"""Settings read from GL_ORCHESTRATOR_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import SettingsError
from orchestrator.settings import load_settings


def test_visibility_timeout_default_and_override(tmp_path: Path) -> None:
    assert load_settings({"GL_ORCHESTRATOR_HOME": str(tmp_path)}).broker_visibility_timeout_seconds == 21600
    settings = load_settings({"GL_ORCHESTRATOR_HOME": str(tmp_path),
                              "GL_ORCHESTRATOR_BROKER_VISIBILITY_TIMEOUT_SECONDS": "7200"})
    assert settings.broker_visibility_timeout_seconds == 7200


def test_visibility_timeout_reaches_celery(tmp_path: Path) -> None:
    from workers.app import create_celery_app

    settings = load_settings({
        "GL_ORCHESTRATOR_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "GL_ORCHESTRATOR_BROKER_URL": "redis://127.0.0.1:6379/0",
        "GL_ORCHESTRATOR_BROKER_VISIBILITY_TIMEOUT_SECONDS": "900",
    })
    app = create_celery_app(settings)
    assert app.conf.broker_transport_options["visibility_timeout"] == 900
    assert app.conf.broker_transport_options["unacked_restore_interval"] == 10
    assert app.conf.broker_transport_options["unacked_restore_throttle"] == 1


@pytest.mark.parametrize("value", ["5", "-1", "soon"])
def test_visibility_timeout_rejects_bad_values(tmp_path: Path, value: str) -> None:
    with pytest.raises(SettingsError, match="BROKER_VISIBILITY_TIMEOUT_SECONDS"):
        load_settings({"GL_ORCHESTRATOR_HOME": str(tmp_path), "GL_ORCHESTRATOR_BROKER_VISIBILITY_TIMEOUT_SECONDS": value})
