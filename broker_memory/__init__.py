"""The in-memory transport: the embedded default and the reference of the state machine."""

from broker_memory.transport import MemoryStore, MemoryTransport, forget_store, named_store

__all__ = ["MemoryStore", "MemoryTransport", "forget_store", "named_store"]
