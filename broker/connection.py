"""Every Redis connection flateval opens, with one retry policy.

A Redis restart (or a failover of a managed Redis) should cost a pause, not a submission: every
command retries with exponential back-off (50 ms doubling to 2 s, about 25 s in all) before the
error reaches the caller. RQ's own dequeue loop has its own back-off on top.
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

RETRIES = 16


def redis_connection(url: str, **kwargs) -> redis.Redis:
    """A client for `url` (redis://, rediss://, unix://; password in the URL) that rides out restarts."""
    return redis.Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), RETRIES),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError, ConnectionResetError],
        health_check_interval=30,
        socket_connect_timeout=5,
        **kwargs,
    )


class RedisUnreachable(RuntimeError):
    """Redis did not answer at start; the message is one line (credentials redacted)."""


def redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def connect(url: str) -> redis.Redis:
    """Check Redis answers now (failing fast, in one line), then hand out the retrying client."""
    probe = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        probe.ping()
    except (redis.RedisError, OSError) as exc:
        raise RedisUnreachable(f"cannot reach Redis at {redact(url)}: {exc}") from None
    finally:
        probe.close()
    return redis_connection(url)
