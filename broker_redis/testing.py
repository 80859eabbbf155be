"""Start a throwaway ``redis-server`` on a free loopback port, and stop it.

For the conformance suite of this transport, for the benchmarks, and for applications'
own tests: only the ``redis-server`` binary is needed (no Redis to set up, nothing shared
with a Redis already running), and :class:`RedisServer` can stop, kill and restart the
server to test what happens when Redis goes away. Every wait is bounded, and a server
that does not come up raises with its log instead of hanging::

    server = RedisServer(tmp_path)
    server.start()
    try:
        broker = Broker.from_url(server.url, group="billing")
        ...
    finally:
        server.stop()
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

__all__ = [
    "RedisFactory",
    "RedisServer",
    "TlsFiles",
    "free_port",
    "make_tls_files",
    "redis_server_binary",
    "unique_prefix",
]

START_TIMEOUT = 10.0

_prefixes = itertools.count()


def unique_prefix() -> str:
    """A key prefix no other caller in this process has had: isolates tests on one server."""
    return f"t{os.getpid()}-{next(_prefixes)}"


def redis_server_binary() -> str | None:
    """The path of ``redis-server``, or None when it is not installed."""
    return shutil.which("redis-server")


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway self-signed certificate (which is its own CA) and its key."""

    cert: Path
    key: Path


def make_tls_files(directory: Path) -> TlsFiles | None:
    """Make a certificate for 127.0.0.1 with the ``openssl`` CLI; None if that is impossible."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = directory / "cert.pem", directory / "key.pem"
    result = subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return TlsFiles(cert, key) if result.returncode == 0 else None


class RedisServer:
    """One ``redis-server`` on a loopback port, in its own directory.

    ``args`` are extra command-line options (``["--appendonly", "yes"]``). The port is
    kept across :meth:`restart`, so clients reconnect to the same URL.
    """

    def __init__(
        self,
        directory: Path,
        args: Sequence[str] = (),
        *,
        password: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.binary = binary
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.password = password
        self.tls = tls
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL a client uses, with the password and TLS settings when configured."""
        auth = f":{self.password}@" if self.password else ""
        if self.tls is not None:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls.cert}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        """The server's log file."""
        return self.directory / "redis.log"

    def _command(self) -> list[str]:
        listen = ["--port", str(self.port)]
        if self.tls is not None:
            listen = [
                "--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
                "--tls-ca-cert-file", str(self.tls.cert), "--tls-auth-clients", "no",
            ]  # fmt: skip
        auth = ["--requirepass", self.password] if self.password else []
        return [
            self.binary, *listen, "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--logfile", str(self.log), "--save", "", "--appendonly", "no",
            *auth, *self.args,
        ]  # fmt: skip

    def admin(self) -> redis.Redis:
        """A synchronous client for set-up and inspection."""
        return redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=2)

    def start(self) -> None:
        """Start the server and return once it answers PING.

        The first start moves to another free port if the one chosen was taken meanwhile
        (by another test session, say): the answer must come from this very process,
        or two sessions would share, and flush, one server. A restart keeps its port.
        """
        if self.process is not None and self.process.poll() is None:
            return
        first = self.process is None
        for _ in range(3 if first else 1):
            if self._start_once():
                return
            self.port = free_port()
        log = self.log.read_text() if self.log.exists() else ""
        raise RuntimeError(f"redis-server did not start on {self.port}:\n{log}")

    def _start_once(self) -> bool:
        """Start the process; True once it answers PING itself, False if it died."""
        process = self.process = subprocess.Popen(self._command(), cwd=self.directory)
        deadline = time.monotonic() + START_TIMEOUT
        with self.admin() as client:
            while True:
                try:
                    if client.ping() and client.info("server")["process_id"] == process.pid:
                        return True
                except redis.RedisError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    return False
                time.sleep(0.02)

    def _signal_and_reap(self, sig: int) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
            try:
                self.process.wait(timeout=START_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=START_TIMEOUT)
        self.process = None

    def stop(self) -> None:
        """Stop gracefully (SIGTERM: the append-only file is flushed, nothing else saved)."""
        self._signal_and_reap(signal.SIGTERM)

    def kill(self) -> None:
        """Stop abruptly, as a crash would (SIGKILL)."""
        self._signal_and_reap(signal.SIGKILL)

    def restart(self) -> None:
        """Stop and start again on the same port and directory."""
        self.stop()
        self.start()


RedisFactory = Callable[..., RedisServer]
"""A function starting a server with ``args``, ``password`` and ``tls`` (a pytest fixture)."""
