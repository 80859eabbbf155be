"""Start a throwaway PostgreSQL server on a free loopback port, and stop it.

For the conformance suite of this transport, for the benchmarks and for applications' own
tests: only the server binaries are needed (``initdb``, ``pg_ctl``, ``postgres``, from
Debian's ``postgresql`` package), nothing is shared with a PostgreSQL already running,
and :class:`PostgresServer` can stop, kill and restart the server to test what happens
when the database goes away. Every wait is bounded::

    server = PostgresServer()
    server.start()
    try:
        broker = Broker.from_url(server.url(schema="billing"), group="billing")
        ...
    finally:
        server.destroy()

PostgreSQL refuses to run as root. When the tests run as root (as CI does), the server
runs as ``run_as`` (default ``nobody``) through ``runuser``, in a temporary folder that
user owns.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = [
    "PASSWORD",
    "SUPERUSER",
    "PostgresServer",
    "find_binaries",
    "free_port",
    "unique_schema",
]

START_TIMEOUT = 30.0
SUPERUSER = "postgres"
"""The superuser every throwaway server is made with."""
PASSWORD = "broker-test"
"""The superuser's password: connections over TCP must give it (scram-sha-256)."""

_schemas = itertools.count()


def unique_schema() -> str:
    """A schema name no other caller in this process has had: isolates tests on one server."""
    return f"t{os.getpid()}_{next(_schemas)}"


def find_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None when PostgreSQL is not installed.

    ``$PATH`` first, then Debian's versioned folders (newest first).
    """
    initdb = shutil.which("initdb")
    if initdb is not None and shutil.which("pg_ctl") is not None:
        return Path(initdb).resolve().parent  # a symlink's target: the server's folder
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """One PostgreSQL cluster on a loopback port, in a temporary folder of its own.

    The cluster is made by the first :meth:`start` and lives until :meth:`destroy`; the
    port is kept across :meth:`restart`, so clients reconnect to the same URL. Settings
    favour speed over durability (no fsync): it is for tests.
    """

    def __init__(self, *, run_as: str = "nobody", binaries: Path | None = None) -> None:
        found = binaries or find_binaries()
        if found is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self.binaries = found
        self.run_as = run_as if os.geteuid() == 0 else None
        self.directory = Path(tempfile.mkdtemp(prefix="broker-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self._made = False

    def url(self, *, schema: str | None = None, user: str = SUPERUSER, password: str = PASSWORD,
            database: str = "postgres") -> str:  # fmt: skip
        """The URL of ``database`` as ``user``; ``schema`` becomes the transport's option."""
        query = f"?schema={schema}" if schema else ""
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}{query}"

    @property
    def log(self) -> Path:
        """The server's log file."""
        return self.directory / "postgres.log"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.binaries / args[0]), *args[1:]]
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as, "--", *command]
        # In the server's own folder: the user it runs as may not enter the caller's.
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT * 2,
            check=False,
            cwd=self.directory,
        )

    def _make(self) -> None:
        if self.run_as is not None:
            user = pwd.getpwnam(self.run_as)
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        password_file = self.directory / "password"
        password_file.write_text(PASSWORD + "\n")
        if self.run_as is not None:
            os.chown(password_file, user.pw_uid, user.pw_gid)
        result = self._run(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, "--pwfile", str(password_file),
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        password_file.unlink()
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        self._made = True

    def start(self) -> None:
        """Make the cluster (first time), start the server, and return once it accepts.

        The first start moves to another free port if the one chosen was taken meanwhile.
        """
        if not self._made:
            self._make()
        if self.running():
            return
        for _ in range(3):
            options = (
                f"-p {self.port} -c listen_addresses=127.0.0.1 "
                f"-c unix_socket_directories={self.directory} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300 "
                "-c shared_buffers=64MB"
            )
            result = self._run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                "-w", "-t", str(int(START_TIMEOUT)), "start",
            )  # fmt: skip
            if result.returncode == 0:
                return
            self.port = free_port()
        log = self.log.read_text() if self.log.exists() else ""
        raise RuntimeError(f"PostgreSQL did not start:\n{result.stderr}\n{log}")

    def _pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def running(self) -> bool:
        """Whether the server process is alive."""
        pid = self._pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> None:
        """Stop the server (fast shutdown: clients are disconnected, nothing is lost)."""
        if self.running():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def kill(self) -> None:
        """Stop abruptly, as a crash would (SIGKILL of the postmaster; recovery on start)."""
        pid = self._pid()
        if pid is not None and self.running():
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + START_TIMEOUT
            while self.running() and time.monotonic() < deadline:
                time.sleep(0.05)
            # Its backends notice the postmaster is gone and exit; a stale pid file is
            # fine for the next start.

    def restart(self) -> None:
        """Stop and start again on the same port and data folder."""
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Stop the server and delete its folder."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
