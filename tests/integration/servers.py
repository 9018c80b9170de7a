"""Private Redis and PostgreSQL servers that a test may stop and restart.

The shared services on ports 6379 and 5432 serve every test, so a test that
restarts a server starts its own on a free loopback port and tears it down
afterwards.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

__all__ = ["PrivatePostgres", "PrivateRedis", "free_port"]


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 at the time of the call."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A ``redis-server`` on a free loopback port, with or without an append-only file.

    Without ``appendonly`` nothing survives a restart: ``--save ""`` turns the
    RDB snapshots off too. With it, every write is appended to the AOF and
    fsynced on shutdown, so a clean restart keeps queued messages.
    """

    def __init__(self, directory: Path, *, appendonly: bool) -> None:
        self.directory = directory
        self.appendonly = appendonly
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = directory / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.directory),
            "--logfile", str(self.log_path),
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited early:\n{self._log()}")
            try:
                if self.client().ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING within 10s:\n{self._log()}")

    def stop(self) -> None:
        """Shut the server down with SIGTERM, which writes the AOF when it is on."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def queue_length(self, queue: str) -> int:
        """Return how many messages wait in the kombu list of ``queue``."""
        client = self.client()
        try:
            return int(client.llen(queue))
        finally:
            client.close()

    def _log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log)"


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on a free loopback port, with trust authentication.

    PostgreSQL refuses to run as root, so under root the cluster belongs to
    the ``postgres`` OS user and every server command runs through
    ``runuser``. The cluster lives in its own directory under the system
    temporary folder, because pytest's folders are closed to other users.
    """

    def __init__(self) -> None:
        binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not binaries:
            raise RuntimeError("pg_ctl not found under /usr/lib/postgresql/*/bin; install the PostgreSQL server")
        self.bin = Path(binaries[-1]).parent
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="glo-test-pg-"))
        self.data = self.directory / "data"
        self.log_path = self.directory / "server.log"
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.directory, user="postgres", group="postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *command: str) -> None:
        completed = subprocess.run([*self._as_user, *command], capture_output=True, text=True, timeout=60)
        if completed.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed with exit code {completed.returncode}:\n{completed.stdout}"
                f"{completed.stderr}\n{self.server_log()}"
            )

    def _pg_ctl(self, action: str, *extra: str) -> None:
        # fsync=off: the cluster is thrown away after the test, and a restart
        # with -m fast still writes a shutdown checkpoint, so no data is lost.
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "30",
                  "-o", options, action, *extra)

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-N")

    def start(self) -> None:
        self._pg_ctl("start")

    def stop(self) -> None:
        self._pg_ctl("stop", "-m", "fast")

    def restart(self) -> None:
        self._pg_ctl("restart", "-m", "fast")

    def destroy(self) -> None:
        """Stop the server at once if it runs, and delete the cluster."""
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "30", "stop", "-m", "immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

    def server_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no server log)"
