"""The Lua scripts: one file per state transition under ``scripts/``, loaded and run here.

A script may pull shared helpers from ``scripts/includes/<name>.lua`` with a line
``--- @include "<name>"``; each helper is inlined once, where it is first included
(helpers may include helpers). The result is what Redis runs and what its SHA1 names.

KEYS are declared once, in the script's header comment, by the names of the fields of
:class:`~broker_redis.keys.TopicKeys` and :class:`~broker_redis.keys.GroupKeys`::

    KEYS: 1 msg  2 ready  3 leased
    KEYS: 1 msg  2 refs  3 groups
          then per group g = 1..n: 2+2g ready  3+2g marker

The second form repeats the names after ``then per group`` once for each group of the
call (publish). :meth:`Script.call` builds a call's KEYS from those names, so the order
in Python cannot drift from the script's. Loading a script also checks its code: every
``KEYS[i]`` it reads must be bound to the name its header gives position ``i`` (``local
msg, ready = KEYS[1], KEYS[2]`` or a table field ``{dead = KEYS[8]}``), and every
declared key must be bound.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from broker_core.errors import TransportError
from broker_redis.errors import REDIS_ERRORS, replication_timeout
from broker_redis.keys import GroupKeys, TopicKeys
from broker_redis.pool import Pool
from broker_redis.roundtrip import Command, round_trip

__all__ = [
    "SCRIPT_NAMES",
    "Arg",
    "Call",
    "ErrorMapper",
    "Script",
    "ScriptRunner",
    "load_script",
    "parse_script",
]

Arg = str | bytes | int | float
"""One ARGV value, as redis-py sends it."""

ErrorMapper = Callable[[str, BaseException], TransportError]
"""Turns a redis-py failure of an operation into the TransportError to raise."""

_T = TypeVar("_T")


def _script_names() -> tuple[str, ...]:
    folder = resources.files(__package__).joinpath("scripts")
    names = (p.name.removesuffix(".lua") for p in folder.iterdir() if p.name.endswith(".lua"))
    return tuple(sorted(names))


SCRIPT_NAMES = _script_names()
"""Every script, one per ``scripts/<name>.lua``: adding the file adds the script."""

_TOPIC_KEYS = frozenset(f.name for f in fields(TopicKeys))
_GROUP_KEYS = frozenset(f.name for f in fields(GroupKeys))

_INCLUDE = re.compile(r'^--- @include "([a-z_]+)"$', re.MULTILINE)
_HEADER = re.compile(r"\A--\[\[(.*?)\]\]", re.DOTALL)
# The KEYS section: the line "KEYS: ..." and the indented lines that continue it.
_KEYS_SECTION = re.compile(r"^KEYS:(.*(?:\n[ \t]+.*)*)", re.MULTILINE)
_PER_GROUP = re.compile(r",?\s*then per group g = 1\.\.n:")
_FIXED_KEY = re.compile(r"(\d+)\s+(\w+)")
_GROUP_KEY = re.compile(r"(\d+)\+(\d+)g\s+(\w+)")
_COMMENT = re.compile(r"--\[\[.*?\]\]|--[^\n]*", re.DOTALL)
_KEY_READ = re.compile(r"KEYS\[([^\]\n]+)\]")
# ``local a, b = KEYS[1], KEYS[2]``: one line binding locals to KEYS only.
_LOCALS = re.compile(
    r"^[ \t]*local[ \t]+(\w+(?:[ \t]*,[ \t]*\w+)*)[ \t]*=[ \t]*"
    r"(KEYS\[[^\]\n]+\](?:[ \t]*,[ \t]*KEYS\[[^\]\n]+\])*)[ \t]*$",
    re.MULTILINE,
)
# ``name = KEYS[i]`` anywhere else: a table field (``{dead = KEYS[8]}``).
_FIELD = re.compile(r"\b(\w+)[ \t]*=[ \t]*KEYS\[([^\]\n]+)\]")
_FIXED_INDEX = re.compile(r"\d+")
_GROUP_INDEX = re.compile(r"(\d+) \+ (\d+) \* g")


@dataclass(frozen=True, slots=True)
class Call:
    """One EVALSHA: the script, its KEYS and its ARGV."""

    script: Script
    keys: Sequence[str]
    args: Sequence[Arg]


@dataclass(frozen=True, slots=True)
class Script:
    """A script's final source, the SHA1 that EVALSHA calls it by, and its KEYS by name."""

    name: str
    source: str
    sha: str
    keys: tuple[str, ...]
    """The names of KEYS[1], KEYS[2], ...: fields of TopicKeys or GroupKeys."""
    keys_per_group: tuple[str, ...] = ()
    """GroupKeys fields that follow ``keys`` once per group of the call, in this order."""

    def call(
        self,
        args: Sequence[Arg],
        *,
        topic: TopicKeys | None = None,
        group: GroupKeys | None = None,
        groups: Sequence[GroupKeys] = (),
    ) -> Call:
        """A call of this script with ``args``, its KEYS picked by name from the key sets.

        ``topic`` and ``group`` supply the declared keys; ``groups`` the repeated part,
        one key set per group. A key set the header needs but the caller left out is an
        error, not a silent shift of every key after it.
        """
        keys = []
        for name in self.keys:
            owner: TopicKeys | GroupKeys | None = topic if name in _TOPIC_KEYS else group
            if owner is None:
                kind = "topic" if name in _TOPIC_KEYS else "group"
                raise ValueError(f"script {self.name} needs the {kind}'s keys for {name!r}")
            keys.append(getattr(owner, name))
        if groups and not self.keys_per_group:
            raise ValueError(f"script {self.name} takes no keys per group")
        for per_group in groups:
            keys += [getattr(per_group, name) for name in self.keys_per_group]
        return Call(self, keys, args)


def _read(*parts: str) -> str:
    return resources.files(__package__).joinpath("scripts", *parts).read_text("utf-8")


def _expand(source: str, seen: set[str]) -> str:
    def include(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in seen:
            return ""
        seen.add(name)
        return _expand(_read("includes", f"{name}.lua"), seen).rstrip("\n")

    return _INCLUDE.sub(include, source)


def _declared_keys(name: str, source: str) -> tuple[tuple[str, ...], dict[str, tuple[int, int]]]:
    """The header's fixed KEYS names, and per repeated name its (offset, stride)."""
    header = _HEADER.match(source)
    section = _KEYS_SECTION.search(header.group(1)) if header else None
    if section is None:
        raise ValueError(f"script {name}: no 'KEYS:' line in its header comment")
    fixed_text, *group_text = _PER_GROUP.split(section.group(1), maxsplit=1)
    fixed = _FIXED_KEY.findall(fixed_text)
    if _FIXED_KEY.sub("", fixed_text).strip():
        raise ValueError(f"script {name}: KEYS must read '1 name  2 name ...': {fixed_text!r}")
    if [int(i) for i, _ in fixed] != list(range(1, len(fixed) + 1)):
        raise ValueError(f"script {name}: KEYS are not numbered 1, 2, ...: {fixed_text!r}")
    per_group: dict[str, tuple[int, int]] = {}
    if group_text:
        repeated = _GROUP_KEY.findall(group_text[0])
        if not repeated or _GROUP_KEY.sub("", group_text[0]).strip():
            raise ValueError(f"script {name}: per group KEYS must read '4+2g name ...'")
        for i, (offset, stride, key) in enumerate(repeated):
            # Group 1's keys come right after the fixed ones, each group's after the last.
            if (int(offset), int(stride)) != (len(fixed) + i + 1 - len(repeated), len(repeated)):
                raise ValueError(f"script {name}: per group key {key} is misnumbered")
            if key not in _GROUP_KEYS:
                raise ValueError(f"script {name}: per group key {key!r} is not a GroupKeys field")
            per_group[key] = (int(offset), int(stride))
    keys = tuple(key for _, key in fixed)
    for key in keys:
        if key not in _TOPIC_KEYS | _GROUP_KEYS:
            raise ValueError(
                f"script {name}: KEYS name {key!r} is no field of TopicKeys or GroupKeys"
            )
    return keys, per_group


def _key_bindings(name: str, code: str) -> list[tuple[str, str]]:
    """Every (local or field name, index expression) the code binds to ``KEYS[...]``."""
    found: list[tuple[str, str]] = []

    def bind_locals(match: re.Match[str]) -> str:
        names = [n.strip() for n in match.group(1).split(",")]
        indices = _KEY_READ.findall(match.group(2))
        if len(names) != len(indices):
            raise ValueError(f"script {name}: {match.group(0).strip()!r} binds unevenly")
        found.extend(zip(names, indices, strict=True))
        return ""

    def bind_field(match: re.Match[str]) -> str:
        found.append((match.group(1), match.group(2)))
        return ""

    rest = _FIELD.sub(bind_field, _LOCALS.sub(bind_locals, code))
    if re.search(r"\bKEYS\b", rest):
        raise ValueError(f"script {name}: reads KEYS other than as 'name = KEYS[i]'")
    return found


def _check_bindings(
    name: str, source: str, keys: tuple[str, ...], per_group: dict[str, tuple[int, int]]
) -> None:
    """Raise unless the code binds each KEYS position to the name its header declares."""
    bound: set[str] = set()
    for local, index in _key_bindings(name, _COMMENT.sub("", source)):
        if _FIXED_INDEX.fullmatch(index):
            declared = keys[int(index) - 1] if 0 < int(index) <= len(keys) else None
        elif repeated := _GROUP_INDEX.fullmatch(index):
            where = (int(repeated.group(1)), int(repeated.group(2)))
            declared = next((k for k, at in per_group.items() if at == where), None)
        else:
            raise ValueError(f"script {name}: cannot read KEYS[{index}]; write KEYS[i]")
        if local != declared:
            raise ValueError(
                f"script {name}: binds {local} = KEYS[{index}], "
                f"but its header names that key {declared or 'nothing'}"
            )
        bound.add(local)
    unbound = [k for k in (*keys, *per_group) if k not in bound]
    if unbound:
        raise ValueError(f"script {name}: declares KEYS its code never binds: {unbound}")


def parse_script(name: str, source: str) -> Script:
    """A :class:`Script` of ``source`` (includes already inlined), its KEYS checked.

    Raises ValueError when the header's KEYS and the code's ``KEYS[i]`` disagree.
    """
    keys, per_group = _declared_keys(name, source)
    _check_bindings(name, source, keys, per_group)
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest(), keys, tuple(per_group))


@cache
def load_script(name: str) -> Script:
    """The script ``scripts/<name>.lua`` with its includes inlined."""
    if name not in SCRIPT_NAMES:
        raise ValueError(f"no script named {name!r}")
    return parse_script(name, _expand(_read(f"{name}.lua"), set()))


# A NOSCRIPT answer means the cache was flushed (SCRIPT FLUSH, restart, failover); the
# scripts are loaded again and the calls retried. More than this many rounds in one call
# means something keeps flushing it.
_NOSCRIPT_ROUNDS = 3


def _evalsha(call: Call) -> Command:
    return ("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)


class ScriptRunner:
    """Runs script calls on one client by EVALSHA, loading the scripts again on NOSCRIPT.

    ``error`` turns a redis-py failure of an operation into the TransportError to raise.
    With ``replicas`` above 0, a ``durable`` run is followed by ``WAIT`` on the same
    connection, and raises ReplicationTimeout unless that many replicas acknowledged
    its writes within ``replica_timeout`` seconds.
    """

    __slots__ = ("_error", "_pool", "_redis", "_replica_timeout", "_replicas")

    def __init__(
        self, redis: Redis, error: ErrorMapper, replicas: int = 0, replica_timeout: float = 1.0
    ) -> None:
        self._redis = redis
        self._error = error
        self._replicas = replicas
        self._replica_timeout = replica_timeout
        # The calls go by round_trip on the client's Pool (a cluster runner, whose client
        # has no pool of its own, sends them its own way).
        pool = getattr(redis, "connection_pool", None)
        self._pool = pool if isinstance(pool, Pool) else None

    async def load(self, scripts: Iterable[Script]) -> None:
        """SCRIPT LOAD each script in one round trip; refuse a SHA other than ours."""
        scripts = list(scripts)
        async with self._redis.pipeline(transaction=False) as pipe:
            for script in scripts:
                pipe.script_load(script.source)
            shas = await self._guard("loading scripts", pipe.execute())
        self._check_shas(scripts, shas)

    @staticmethod
    def _check_shas(scripts: Sequence[Script], shas: Sequence[Any]) -> None:
        for script, sha in zip(scripts, shas, strict=True):
            if (sha.decode(errors="replace") if isinstance(sha, bytes) else sha) != script.sha:
                raise TransportError(f"Redis named script {script.name} {sha!r}, not {script.sha}")

    async def _reload(self, lost: Sequence[tuple[Script, NoScriptError]]) -> None:
        """Load again the scripts of the calls answered NOSCRIPT."""
        await self.load({script for script, _ in lost})

    async def run(
        self, op: str, calls: Sequence[Call], *, durable: bool = False, partial: bool = False
    ) -> list[Any]:
        """Run ``calls`` of operation ``op`` in one round trip: each call's reply, in order.

        A call answered NOSCRIPT did not run, so only those calls are sent again, once
        their scripts are loaded again. ``durable`` waits for the replicas (see above).
        A call that failed otherwise raises its TransportError, or with ``partial`` has
        it as its reply: on a cluster the other calls ran on other masters, and their
        replies (leases taken, say) must not be lost with it.
        """
        send = self._send_durable if durable and self._replicas else self._send
        replies = await send(op, calls)
        for reply in replies:
            if isinstance(reply, Exception):
                break
        else:
            return replies  # the usual case: every call ran
        results: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        for round_ in range(1, _NOSCRIPT_ROUNDS + 1):
            missing = []
            lost: list[tuple[Script, NoScriptError]] = []
            for i, reply in zip(pending, replies, strict=True):
                if isinstance(reply, NoScriptError):
                    missing.append(i)
                    lost.append((calls[i].script, reply))
                elif isinstance(reply, Exception):
                    error = reply if isinstance(reply, TransportError) else self._error(op, reply)
                    if not partial:
                        raise error from reply
                    results[i] = error
                else:
                    results[i] = reply
            if not missing:
                break
            await self._reload(lost)
            if round_ == _NOSCRIPT_ROUNDS:
                raise self._error(op, lost[-1][1])
            pending = missing
            replies = await send(op, [calls[i] for i in pending])
        return results

    async def _send(self, op: str, calls: Sequence[Call]) -> list[Any]:
        """One round trip of EVALSHA calls: each call's reply, or the error it got."""
        replies = await self._round_trip(op, [_evalsha(call) for call in calls])
        if len(calls) == 1:
            # A lone call's error reply other than NOSCRIPT is raised, even with partial
            # (as when it was sent without a pipeline).
            [reply] = replies
            if isinstance(reply, ResponseError) and not isinstance(reply, NoScriptError):
                raise self._error(op, reply) from reply
        return replies

    async def _send_durable(self, op: str, calls: Sequence[Call]) -> list[Any]:
        """:meth:`_send`, then WAIT on the same connection: one round trip."""
        commands = [_evalsha(call) for call in calls]
        *replies, acked = await self._round_trip(op, [*commands, ("WAIT", *self._wait_args())])
        self._check_replicated(op, acked)
        return replies

    async def _round_trip(self, op: str, commands: Sequence[Command]) -> list[Any]:
        assert self._pool is not None, "a one-node ScriptRunner needs a client over a Pool"
        return await self._guard(op, round_trip(self._pool, commands))

    def _wait_args(self) -> tuple[int, int]:
        return self._replicas, max(1, round(self._replica_timeout * 1000))

    def _check_replicated(self, op: str, acked: Any) -> None:
        if isinstance(acked, Exception):
            raise self._error(op, acked) from acked
        if int(acked) < self._replicas:
            raise replication_timeout(op, int(acked), self._replicas, self._replica_timeout)

    async def _guard(self, op: str, awaitable: Awaitable[_T]) -> _T:
        try:
            return await awaitable
        except REDIS_ERRORS as exc:
            raise self._error(op, exc) from exc
