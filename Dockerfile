# The image of every orchestrator process in docker-compose.yml: the API
# (gunicorn), the workers, beat, Flower and the one-shot migration differ only
# in their command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GL_ORCHESTRATOR_HOME=/var/lib/gl-orchestrator

WORKDIR /app
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
COPY orchestrator_cli ./orchestrator_cli
COPY workers ./workers
COPY api ./api
COPY migrations ./migrations
COPY verifier ./verifier
COPY examples ./examples
# Editable, so that the Alembic revisions under migrations/versions, which
# are not a package, stay where `orchestrator db upgrade` looks for them.
RUN pip install --no-cache-dir -e '.[server,stack]'

RUN useradd --system --home-dir /var/lib/gl-orchestrator --create-home --shell /usr/sbin/nologin orchestrator
USER orchestrator

EXPOSE 8080
CMD ["gunicorn", "--bind=0.0.0.0:8080", "--workers=2", "api.wsgi:app"]
