"""Commands packed by hiredis' C packer, which redis-py's asyncio connections never use.

redis-py's synchronous connections pack commands with ``hiredis.pack_command`` when
hiredis is installed (it is a dependency here: ``redis[hiredis]``); its asyncio
connections pack in Python, joining the growing buffer once per argument. For an ack of
100 receipts (about 200 arguments) that took 343 us against hiredis' 31 us, a single
publish's 27 arguments 24 against 4 us (timeit on the benchmark machine), the same bytes
either way. The transport's arguments are str, bytes, int and float, which hiredis packs
as redis-py does (UTF-8, ``repr`` of numbers); whatever it refuses (text with a lone
surrogate, which the pools encode with ``surrogateescape``; a bool; a bytearray) is
packed by redis-py's own method, with its own errors, as before.
"""

from __future__ import annotations

from typing import Any

from hiredis import pack_command as _hiredis_pack
from redis.asyncio.connection import AbstractConnection, ConnectionPool

__all__ = ["pack_with_hiredis"]


class _HiredisPacking(AbstractConnection):
    """Mixed in before a connection class: ``pack_command`` by hiredis where it can."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if self.encoder.encoding != "utf-8":  # (redis-py's default, and the transport's)
            return super().pack_command(*args)
        # A command name with its arguments in one string ("CONFIG GET"), split as
        # redis-py's own packers split it.
        first = args[0]
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return [_hiredis_pack(args)]
        except (TypeError, UnicodeEncodeError):
            return super().pack_command(*args)


_classes: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def pack_with_hiredis(pool: ConnectionPool) -> None:
    """Make the connections ``pool`` opens from now on pack commands with hiredis.

    (Connections encoding text other than as UTF-8 keep redis-py's packer.)
    """
    cls = pool.connection_class
    if not issubclass(cls, _HiredisPacking):
        packing = _classes.get(cls)
        if packing is None:
            packing = _classes[cls] = type(
                cls.__name__, (_HiredisPacking, cls), {"__module__": __name__}
            )
        pool.connection_class = packing
