"""The Redis transport for redis://, rediss://, unix:// and Redis Cluster's redis+cluster://
and rediss+cluster:// URLs; see docs/redis-keys.md and docs/cluster.md."""

from broker_redis.transport import RedisTransport

__all__ = ["RedisTransport"]
