"""The Redis transport for redis://, rediss:// and unix:// URLs; see docs/redis-keys.md."""

from broker_redis.transport import RedisTransport

__all__ = ["RedisTransport"]
