"""Shared fixtures: real ``redis-server`` processes started by the tests themselves, and
``broker_url``, which runs a test once per bundled transport.

``redis_server`` is one server for the whole session; tests isolate themselves with a
unique key prefix (``key_prefix``) and the database is flushed after each test that
used it. ``redis_factory`` starts extra servers with their own configuration (password,
TLS, append-only file) that a test may stop, kill and restart; they are stopped after
the test. ``redis_cluster`` is one 3-master Redis Cluster for the whole session (about
2 s to start), flushed after each test that used it through ``redis_cluster_url``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from broker_postgres.testing import PostgresServer, find_binaries, unique_schema
from broker_redis.testing import (
    RedisCluster,
    RedisFactory,
    RedisServer,
    TlsFiles,
    redis_cli_binary,
    redis_server_binary,
    unique_prefix,
)


def _require_redis_server(cli: bool = False) -> None:
    # Locally a missing binary skips the Redis tests; in CI it must fail, or a missing
    # install step would pass unnoticed.
    if redis_server_binary() is None or (cli and redis_cli_binary() is None):
        message = "redis-server or redis-cli is not installed (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The session's shared server on a free loopback port."""
    _require_redis_server()
    server = RedisServer(tmp_path_factory.mktemp("redis-shared"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The shared server's URL; the database is flushed when the test ends."""
    yield redis_server.url
    with redis_server.admin() as client:
        client.flushdb()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """The session's shared Redis Cluster: 3 masters, no replicas."""
    _require_redis_server(cli=True)
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"), masters=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisCluster) -> Iterator[str]:
    """The shared cluster's ``redis+cluster://`` URL; every master is flushed afterwards."""
    yield redis_cluster.url
    redis_cluster.flush()


@pytest.fixture
def key_prefix() -> str:
    """A key prefix unique to this test."""
    return unique_prefix()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[RedisFactory]:
    """Start extra servers: ``redis_factory(args=[...], password=..., tls=...)``."""
    servers: list[RedisServer] = []
    names = itertools.count()

    def start(
        args: Sequence[str] = (), *, password: str | None = None, tls: TlsFiles | None = None
    ) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{next(names)}", args, password=password, tls=tls)
        servers.append(server)
        server.start()
        return server

    _require_redis_server()
    try:
        yield start
    finally:
        for server in servers:
            server.kill()


def _require_postgres() -> None:
    # As for Redis: skipped locally without the binaries, a failure in CI.
    if find_binaries() is None:
        message = "PostgreSQL (initdb, pg_ctl) is not installed (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's shared PostgreSQL on a free loopback port; tests use their own schemas."""
    _require_postgres()
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgres_factory() -> Iterator[Callable[[], PostgresServer]]:
    """Start extra PostgreSQL servers that a test may stop, kill and restart."""
    servers: list[PostgresServer] = []

    def start() -> PostgresServer:
        server = PostgresServer()
        servers.append(server)
        server.start()
        return server

    _require_postgres()
    try:
        yield start
    finally:
        for server in servers:
            server.destroy()


@pytest.fixture(params=["memory", "redis", "postgres"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """A URL of a fresh, isolated store: a new named memory store, a new Redis prefix, or
    a new PostgreSQL schema."""
    if request.param == "memory":
        return f"memory://{unique_prefix()}"
    if request.param == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        return server.url(schema=unique_schema())
    redis_url: str = request.getfixturevalue("redis_url")
    return f"{redis_url}?key_prefix={unique_prefix()}"
