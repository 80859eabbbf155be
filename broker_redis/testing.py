"""Start a throwaway ``redis-server`` (or a whole Redis Cluster) on free loopback ports.

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

:class:`RedisCluster` does the same for a Redis Cluster of several masters (and replicas),
with ``redis-cli`` as the only other binary; its :attr:`~RedisCluster.url` is a
``redis+cluster://`` URL naming every master::

    cluster = RedisCluster(tmp_path, masters=3, replicas=1)
    cluster.start()
    try:
        broker = Broker.from_url(cluster.url, group="billing")
        ...
        cluster.kill(cluster.masters()[0])  # a failover: its replica takes over
        cluster.wait_ok()
    finally:
        cluster.stop()
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
from typing import Any

import redis
from redis.crc import key_slot

__all__ = [
    "RedisCluster",
    "RedisFactory",
    "RedisServer",
    "TlsFiles",
    "free_cluster_port",
    "free_port",
    "make_tls_files",
    "redis_cli_binary",
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


def redis_cli_binary() -> str | None:
    """The path of ``redis-cli``, or None when it is not installed."""
    return shutil.which("redis-cli")


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port() -> int:
    """A free loopback port for a cluster node: its bus port (10000 higher) free too."""
    for _ in range(100):
        port = free_port()
        if port <= 55535 and _is_free(port + 10000):
            return port
    raise RuntimeError("found no free pair of ports for a Redis Cluster node")


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
    kept across :meth:`restart`, so clients reconnect to the same URL; ``ports`` picks
    it (and another one should the first be taken meanwhile).
    """

    def __init__(
        self,
        directory: Path,
        args: Sequence[str] = (),
        *,
        password: str | None = None,
        tls: TlsFiles | None = None,
        ports: Callable[[], int] = free_port,
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
        self._ports = ports
        self.port = ports()
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
            self.port = self._ports()
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


class RedisCluster:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each, on loopback.

    Each node is a :class:`RedisServer` started with ``--cluster-enabled yes`` in its own
    directory under ``directory``; :meth:`start` then joins them with ``redis-cli --cluster
    create`` (the slots spread evenly over the masters) and returns once every node
    reports ``cluster_state:ok``. ``node_timeout`` (ms) is how long the others wait before
    they call a silent master failed and promote its replica: short, so that failover
    tests are quick. ``args`` go to every node; ``password`` is required of clients (and
    of replicas by their masters).
    """

    def __init__(
        self,
        directory: Path,
        *,
        masters: int = 3,
        replicas: int = 0,
        node_timeout: int = 1000,
        args: Sequence[str] = (),
        password: str | None = None,
    ) -> None:
        if masters < 3:
            raise ValueError(f"a Redis Cluster needs at least 3 masters, got {masters}")
        if replicas < 0:
            raise ValueError(f"replicas must not be negative, got {replicas}")
        cli = redis_cli_binary()
        if cli is None:
            raise RuntimeError("redis-cli is not installed")
        self.cli = cli
        self.directory = directory
        self.masters_count = masters
        self.replicas_count = replicas
        self.password = password
        auth = ["--masterauth", password] if password else []
        cluster_args = [
            *auth,
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout),
            # A test may kill masters: the rest of the cluster keeps serving its slots.
            "--cluster-require-full-coverage", "no",
            # A replica (or a master back as one) syncs at once, not after 5 s.
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        self.nodes = [
            RedisServer(
                directory / f"node-{i}",
                [*cluster_args, *args],
                password=password,
                ports=free_cluster_port,
            )
            for i in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming every node the cluster started with."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis+cluster://{auth}" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> None:
        """Start every node, create the cluster, and wait until every node reports ok."""
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
            auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
            result = subprocess.run(
                [self.cli, *auth, "--cluster", "create", *addresses,
                 "--cluster-replicas", str(self.replicas_count), "--cluster-yes"],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            if result.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{result.stdout}")
            self.wait_ok()
        except BaseException:
            self.stop()
            raise

    def running(self) -> list[RedisServer]:
        """The nodes whose process is alive."""
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def _roles(self) -> dict[int, str]:
        """Port -> 'master' or 'slave', as the live nodes see each other right now."""
        roles: dict[int, str] = {}
        for node in self.running():
            try:
                with node.admin() as client:
                    roles[node.port] = str(client.info("replication")["role"])
            except redis.RedisError:
                continue
        return roles

    def masters(self) -> list[RedisServer]:
        """The live nodes that are masters now (after a failover, a promoted replica)."""
        roles = self._roles()
        return [n for n in self.running() if roles.get(n.port) == "master"]

    def replicas(self) -> list[RedisServer]:
        """The live nodes that are replicas now."""
        roles = self._roles()
        return [n for n in self.running() if roles.get(n.port) == "slave"]

    def master_of(self, key: str) -> RedisServer:
        """The live master that serves ``key``'s slot now."""
        slot = key_slot(key.encode())
        for node in self.running():
            try:
                with node.admin() as client:
                    ranges = client.execute_command("CLUSTER", "SLOTS")
            except redis.RedisError:
                continue
            for start, end, master, *_ in ranges:
                if int(start) <= slot <= int(end):
                    port = int(master[1])
                    return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no live node knows the master of slot {slot}")

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Return once every live node reports ``cluster_state:ok``, every slot is served
        by a live master and every replica is online at its master; raise after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if self._is_ok():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster in {self.directory} did not become ok")
            time.sleep(0.05)

    def _is_ok(self) -> bool:
        live = {n.port for n in self.running()}
        for node in self.running():
            try:
                with node.admin() as client:
                    info = client.execute_command("CLUSTER", "INFO")
                    text = info.decode() if isinstance(info, bytes) else str(info)
                    if "cluster_state:ok" not in text:
                        return False
                    slots = client.execute_command("CLUSTER", "SLOTS")
                    replication = client.info("replication")
            except redis.RedisError:
                return False
            if replication["role"] == "slave" and replication["master_link_status"] != "up":
                return False
            links = [v for k, v in replication.items() if k.startswith("slave")]
            if links and not self._replicas_acknowledge(node, slots, len(links)):
                return False
            served = 0
            for start, end, master, *_ in slots:
                if int(master[1]) not in live:
                    return False
                served += int(end) - int(start) + 1
            if served != 16384:
                return False
        return True

    def node_id(self, node: RedisServer) -> str:
        """The cluster's id of ``node`` (``CLUSTER MYID``)."""
        with node.admin() as client:
            answer = client.execute_command("CLUSTER", "MYID")
        return answer.decode() if isinstance(answer, bytes) else str(answer)

    def reshard(self, source: RedisServer, target: RedisServer, slots: int) -> None:
        """Move ``slots`` slots (the lowest ``source`` serves), keys and all, to ``target``
        with ``redis-cli --cluster reshard``; return once the cluster is ok again."""
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        result = subprocess.run(
            [self.cli, *auth, "--cluster", "reshard", f"127.0.0.1:{source.port}",
             "--cluster-from", self.node_id(source), "--cluster-to", self.node_id(target),
             "--cluster-slots", str(slots), "--cluster-yes"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster reshard failed:\n{result.stdout}")
        self.wait_ok()

    @staticmethod
    def _replicas_acknowledge(node: RedisServer, slots: list[Any], replicas: int) -> bool:
        """Whether ``replicas`` replicas of master ``node`` acknowledge a write at once.

        A replica counts as synced at its master a little before it acknowledges writes
        (it may still be loading what it was sent): only a real write and WAIT tell.
        """
        mine = [(int(s), int(e)) for s, e, master, *_ in slots if int(master[1]) == node.port]
        probe = next(
            (f"probe-{i}" for i in range(10_000)
             if any(s <= key_slot(f"probe-{i}".encode()) <= e for s, e in mine)),
            None,
        )  # fmt: skip
        if probe is None:
            return True  # a master without slots holds nothing to lose
        try:
            with node.admin() as client:
                client.set(probe, "1")
                client.delete(probe)
                return int(client.execute_command("WAIT", replicas, 100)) >= replicas
        except redis.RedisError:
            return False

    def kill(self, node: RedisServer) -> None:
        """Kill one node abruptly (SIGKILL), as a crash would."""
        node.kill()

    def flush(self) -> None:
        """Delete every key on every master."""
        for node in self.masters():
            with node.admin() as client:
                client.flushall()

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.kill()
