"""Private PostgreSQL and Redis servers for ``orchestrator stack up``, on free loopback ports.

Both keep their data under the stack directory, so a second ``stack up`` on
the same directory finds the same executions. The passwords are generated
once and kept in ``DIR/secrets`` (mode 0600).
"""

from __future__ import annotations

import glob
import logging
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from orchestrator.errors import OrchestratorError

__all__ = [
    "APP_ROLE",
    "DATABASE_NAME",
    "PrivatePostgres",
    "PrivateRedis",
    "StackError",
    "free_port",
    "read_secret",
    "tail",
]

logger = logging.getLogger(__name__)

# The workers and the API connect as APP_ROLE, which may read and write rows
# but owns no table, so that a REVOKE on a table takes effect. The migration
# runs as the cluster's superuser, which owns the tables.
APP_ROLE = "gl_orchestrator"
DATABASE_NAME = "gl_orchestrator"
_SUPERUSER = "postgres"


class StackError(OrchestratorError):
    """A component of the local stack could not be set up, started, checked or stopped."""


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 at the time of the call."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_secret(path: Path) -> str:
    """Return the secret stored in ``path``, creating it (mode 0600) the first time."""
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = secrets.token_urlsafe(24)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(value)
    return value


def tail(path: Path, lines: int = 30) -> str:
    """Return the last ``lines`` lines of a log file, or a note when it does not exist."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


class PrivatePostgres:
    """A PostgreSQL cluster made with initdb, listening on 127.0.0.1 only, with scram-sha-256 passwords.

    PostgreSQL refuses to run as root, so under root the cluster belongs to
    the ``postgres`` OS user and every server command runs through
    ``runuser``. When that user cannot reach ``DIR/postgres`` (a parent
    folder is closed to other users), the cluster goes to a folder of its own
    under the system temporary folder, and ``DIR/postgres.location`` records
    where, so later runs find it.
    """

    def __init__(self, directory: Path, secrets_dir: Path, port: int) -> None:
        self.bin = _postgres_bin()
        self.port = port
        # The command prefix that runs a server command as the cluster's owner.
        self.run_as: list[str] = ["runuser", "-u", _SUPERUSER, "--"] if os.geteuid() == 0 else []
        self.cluster = self._cluster_directory(directory)
        self.data = self.cluster / "data"
        self.log_path = self.cluster / "server.log"
        self.superuser_password = read_secret(secrets_dir / "postgres-superuser-password")
        self.app_password = read_secret(secrets_dir / "postgres-app-password")

    def _cluster_directory(self, directory: Path) -> Path:
        location = directory / "postgres.location"
        if location.exists():
            return Path(location.read_text(encoding="utf-8").strip())
        cluster = directory / "postgres"
        cluster.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.run_as:
            return cluster
        shutil.chown(cluster, user=_SUPERUSER, group=_SUPERUSER)
        if subprocess.run([*self.run_as, "test", "-w", str(cluster)], check=False).returncode == 0:
            return cluster
        cluster.rmdir()
        cluster = Path(tempfile.mkdtemp(prefix="gl-orchestrator-stack-postgres-"))
        shutil.chown(cluster, user=_SUPERUSER, group=_SUPERUSER)
        location.write_text(f"{cluster}\n", encoding="utf-8")
        logger.info("postgres cluster placed outside the stack directory path=%s reason=the postgres user "
                    "cannot write to %s", cluster, directory / "postgres")
        return cluster

    def _run(self, *command: str) -> None:
        completed = subprocess.run([*self.run_as, *command], capture_output=True, text=True, timeout=120,
                                   check=False)
        if completed.returncode != 0:
            raise StackError(
                f"{' '.join(command)} failed with exit status {completed.returncode}:\n"
                f"{completed.stdout}{completed.stderr}\nserver log {self.log_path}:\n{tail(self.log_path)}"
            )

    def init(self) -> None:
        """Create the cluster with initdb unless it exists; the superuser password comes from a 0600 file."""
        if (self.data / "PG_VERSION").exists():
            return
        password_file = self.cluster / "initdb-password"
        password_file.write_text(self.superuser_password + "\n", encoding="utf-8")
        password_file.chmod(0o600)
        if self.run_as:
            shutil.chown(password_file, user=_SUPERUSER, group=_SUPERUSER)
        try:
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", _SUPERUSER, "--auth=scram-sha-256",
                      f"--pwfile={password_file}", "-E", "UTF8", "--no-sync")
        finally:
            password_file.unlink(missing_ok=True)
        logger.info("postgres cluster created data=%s", self.data)

    def start(self) -> int:
        """Start the server, wait until it accepts connections, and return the postmaster's pid."""
        # No Unix socket: the stack connects over TCP, and a socket path
        # under a deep stack directory can pass the 107-byte limit.
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "60",
                  "-o", options, "start")
        return self.pid()

    def pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text(encoding="ascii").splitlines()[0])

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "stop", "-m", "fast")

    def url(self, role: str, password: str, database: str) -> str:
        return f"postgresql+psycopg2://{role}:{password}@127.0.0.1:{self.port}/{database}"

    @property
    def superuser_url(self) -> str:
        return self.url(_SUPERUSER, self.superuser_password, DATABASE_NAME)

    @property
    def app_url(self) -> str:
        return self.url(APP_ROLE, self.app_password, DATABASE_NAME)

    def create_database(self) -> None:
        """Create the application role and the database when missing; the superuser owns the database."""
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user=_SUPERUSER,
                                      password=self.superuser_password, dbname="postgres")
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,))
                if cursor.fetchone() is None:
                    cursor.execute(f"CREATE ROLE {APP_ROLE} LOGIN PASSWORD %s", (self.app_password,))
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,))
                if cursor.fetchone() is None:
                    cursor.execute(f"CREATE DATABASE {DATABASE_NAME} OWNER {_SUPERUSER}")
        finally:
            connection.close()

    def grant_app_role(self) -> None:
        """Let the application role read and write every table the migration made, but not the schema version."""
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user=_SUPERUSER,
                                      password=self.superuser_password, dbname=DATABASE_NAME)
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"GRANT CONNECT ON DATABASE {DATABASE_NAME} TO {APP_ROLE}")
                cursor.execute(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}")
                cursor.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE}")
                cursor.execute(f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}")
                cursor.execute(f"REVOKE INSERT, UPDATE, DELETE ON alembic_version FROM {APP_ROLE}")
        finally:
            connection.close()


def _postgres_bin() -> Path:
    """Return the folder of pg_ctl and initdb: Debian's versioned folder, else the PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version_key)
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    raise StackError("pg_ctl not found under /usr/lib/postgresql/*/bin or on PATH; install the PostgreSQL server "
                     "(apt-get install postgresql) or pass --database-url")


def _version_key(path: str) -> int:
    version = Path(path).parent.parent.name
    return int(version) if version.isdigit() else 0


class PrivateRedis:
    """A redis-server on a free loopback port with a password and an append-only file under ``DIR/redis``."""

    def __init__(self, directory: Path, secrets_dir: Path, port: int) -> None:
        if shutil.which("redis-server") is None:
            raise StackError("redis-server not found on PATH; install it (apt-get install redis-server) "
                             "or pass --broker-url")
        self.directory = directory
        self.port = port
        self.password = read_secret(secrets_dir / "redis-password")
        self.config_path = directory / "redis.conf"

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        """Write the configuration file (mode 0600, because it contains the password) and return the command.

        The server logs to standard output, which the caller sends to a file.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            "protected-mode yes",
            f"dir {self.directory}",
            "appendonly yes",
            'save ""',
            f"requirepass {self.password}",
        ]
        descriptor = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        return ["redis-server", str(self.config_path)]

    def ping(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()
