"""The transport's schema: its SQL files, and creating and migrating it on connect.

``sql/schema.sql`` holds the tables of schema version 1 and ``sql/migrate_<n>.sql`` what
brings version n - 1 to n (a new schema runs them all, in order, so that a fresh schema
and a migrated one are the same); every other file in ``sql/`` holds the functions of
one state transition, or the helpers of several (each with a header: arguments,
returns, why). ``@schema@`` in the files stands for the quoted schema name and
``@channel@`` for the prefix of its NOTIFY channels.

The version table (``schema_version``) records the schema version, which a later release
migrates from, and a digest of the function texts: a transport whose functions differ
(a newer or older release) replaces them all in one transaction. A migration drops the
old functions, runs the ``migrate_<n>.sql`` steps and creates this release's functions,
all in one transaction: a failed one changes nothing. Migrations run under an advisory
lock, so that processes connecting at once migrate once.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

import asyncpg

from broker_core import TransportError

__all__ = ["FUNCTION_FILES", "SCHEMA_VERSION", "channel_of", "migrate", "quote"]

SCHEMA_VERSION = 3
"""The version of the tables this release creates and reads (2: retention and history,
3: partition counts)."""

FUNCTION_FILES = (
    "common", "history", "subscribe", "publish", "claim", "ack", "nack", "extend", "release",
    "kill", "replay_dead", "purge_dead", "observe", "configure_topic", "rewind", "unsubscribe",
)  # fmt: skip
"""The function files, in the order they are created (helpers first)."""


def quote(schema: str) -> str:
    """``schema`` as a quoted SQL identifier (names are validated: no quotes inside)."""
    return '"' + schema + '"'


def channel_prefix(schema: str) -> str:
    """The start of the NOTIFY channel names of ``schema`` (channels are at most 63 bytes)."""
    return "broker_" + hashlib.md5(schema.encode()).hexdigest()[:16] + "_"


def channel_of(schema: str, topic: str) -> str:
    """The NOTIFY channel of ``topic`` in ``schema``, as the SQL function ``wake`` names it."""
    return channel_prefix(schema) + hashlib.md5(topic.encode()).hexdigest()[:20]


@cache
def _text(name: str) -> str:
    return resources.files("broker_postgres").joinpath("sql", f"{name}.sql").read_text()


def _render(name: str, schema: str) -> str:
    text = _text(name).replace("@schema@", quote(schema))
    return text.replace("@channel@", channel_prefix(schema))


def functions_digest() -> str:
    """A digest of every function file: which release's functions a schema holds."""
    digest = hashlib.sha256()
    for name in FUNCTION_FILES:
        digest.update(_text(name).encode())
    return digest.hexdigest()


async def _stored(conn: asyncpg.Connection, schema: str) -> tuple[int, str] | None:
    """The schema's (version, functions digest), or None before version 1."""
    if await conn.fetchval("SELECT to_regclass($1)", f"{quote(schema)}.schema_version") is None:
        return None
    row = await conn.fetchrow(f"SELECT version, functions FROM {quote(schema)}.schema_version")
    return None if row is None else (int(row["version"]), str(row["functions"]))


async def _privileges(conn: asyncpg.Connection, schema: str) -> asyncpg.Record | None:
    """The schema's owner, this user and what it may do there; None if there is no schema."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT pg_get_userbyid(nspowner) AS owner, current_user AS me, "
        "has_schema_privilege(nspname, 'USAGE') AS may_use, "
        "has_schema_privilege(nspname, 'CREATE') AS may_create "
        "FROM pg_namespace WHERE nspname = $1",
        schema,
    )
    return row


def _not_yours(schema: str, row: asyncpg.Record) -> TransportError:
    return TransportError(
        f"schema {schema!r} is owned by {row['owner']!r}, and PostgreSQL user {row['me']!r} "
        f"may not use it: use another schema (?schema=...) or GRANT CREATE, USAGE ON "
        f"SCHEMA {schema} TO {row['me']} (and rights on its tables)"
    )


async def _create(conn: asyncpg.Connection, schema: str) -> None:
    me = await conn.fetchval("SELECT current_user")
    try:
        await conn.execute(f"CREATE SCHEMA {quote(schema)}")
    except asyncpg.InsufficientPrivilegeError:
        raise TransportError(
            f"PostgreSQL user {me!r} may not create schema {schema!r}: create it for that "
            f"user (CREATE SCHEMA {schema} AUTHORIZATION {me}) or grant CREATE on the "
            "database"
        ) from None


async def migrate(conn: asyncpg.Connection, schema: str) -> None:
    """Bring ``schema`` to this release's version and functions; quick when it is there.

    Raises TransportError for a schema this user may not use or create, and for one of a
    newer version than this release knows.
    """
    digest = functions_digest()
    row = await _privileges(conn, schema)
    if row is not None:
        if not row["may_use"]:
            raise _not_yours(schema, row)
        if await _stored(conn, schema) == (SCHEMA_VERSION, digest):
            return
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"broker:{schema}")
        row = await _privileges(conn, schema)
        if row is None:
            await _create(conn, schema)
        elif not (row["may_use"] and row["may_create"]):
            raise _not_yours(schema, row)
        stored = await _stored(conn, schema)
        if stored is None:
            await conn.execute(_render("schema", schema))
            await conn.execute(
                f"CREATE TABLE {quote(schema)}.schema_version "
                "(version integer NOT NULL, functions text NOT NULL)"
            )
            await conn.execute(f"INSERT INTO {quote(schema)}.schema_version VALUES (1, '')")
            stored = (1, "")
        version, functions = stored
        if version > SCHEMA_VERSION:
            raise TransportError(
                f"schema {schema!r} is at version {version}, newer than this release of "
                f"broker_postgres knows ({SCHEMA_VERSION}): upgrade it"
            )
        if version < SCHEMA_VERSION:
            # The old functions may read what a migration changes: they go first, and
            # this release's come after the tables are at its version.
            await _drop_functions(conn, schema)
            for step in range(version + 1, SCHEMA_VERSION + 1):
                await conn.execute(_render(f"migrate_{step}", schema))
            await conn.execute(
                f"UPDATE {quote(schema)}.schema_version SET version = $1, functions = ''",
                SCHEMA_VERSION,
            )
            functions = ""
        if functions != digest:
            await _replace_functions(conn, schema)
            await conn.execute(f"UPDATE {quote(schema)}.schema_version SET functions = $1", digest)


async def _drop_functions(conn: asyncpg.Connection, schema: str) -> None:
    """Drop every function of the schema."""
    names = await conn.fetch(
        "SELECT p.oid::regprocedure::text AS signature FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1",
        schema,
    )
    for row in names:
        await conn.execute(f"DROP FUNCTION {row['signature']}")


async def _replace_functions(conn: asyncpg.Connection, schema: str) -> None:
    """Drop the schema's functions and create this release's."""
    await _drop_functions(conn, schema)
    for name in FUNCTION_FILES:
        await conn.execute(_render(name, schema))
