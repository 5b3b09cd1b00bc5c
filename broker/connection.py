"""Every Redis connection flateval opens, with one retry policy, from one kind of address.

A Redis restart (or a failover of a managed Redis) should cost a pause, not a submission: every
command retries with exponential back-off (50 ms doubling to 2 s, about 25 s in all; about 75 s
behind Sentinel, whose failover takes its own `down-after-milliseconds` to begin) before the error
reaches the caller. RQ's own dequeue loop has its own back-off on top.

Addresses (`ADDRESS_FORMS`): redis-py's own URLs, plus
``redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE_NAME[/DB]``: the client asks the
sentinels for the service's primary at every (re)connection, so it follows a failover by itself.
The password is the data nodes'; sentinels are asked without one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import unquote

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

RETRIES = 16
SENTINEL_RETRIES = 40
SENTINEL_SCHEME = "redis+sentinel"
WAIT_POLL_S = 0.02
ADDRESS_FORMS = ("redis://[:PASSWORD@]HOST[:PORT][/DB], rediss://... (TLS), unix://[:PASSWORD@]/PATH[?db=N], "
                 "or redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE_NAME[/DB]")


class RedisUnreachable(RuntimeError):
    """Redis did not answer at start; the message is one line (credentials redacted)."""


class BadRedisAddress(RedisUnreachable):
    """The address is not one flateval can use; the message names the forms it accepts."""


@dataclass(frozen=True)
class SentinelAddress:
    """Where the sentinels are and which of their services is flateval's Redis."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    password: str | None = None


def redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _bad(url: str, why: str) -> BadRedisAddress:
    return BadRedisAddress(f"bad Redis address {redact(url)!r} ({why}): use {ADDRESS_FORMS}")


def parse_sentinel_url(url: str) -> SentinelAddress:
    """``redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE_NAME[/DB]``."""
    rest = url.split("://", 1)[1]
    auth, _, rest = rest.rpartition("@")
    password = unquote(auth.split(":", 1)[1]) if ":" in auth else (unquote(auth) or None)
    hosts, _, path = rest.partition("/")
    sentinels = []
    for item in filter(None, hosts.split(",")):
        host, _, port = item.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise _bad(url, f"sentinel {item!r} is not HOST:PORT")
        sentinels.append((host, int(port)))
    if not sentinels:
        raise _bad(url, "no sentinel HOST:PORT")
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise _bad(url, "no SERVICE_NAME")
    if db and not db.isdigit():
        raise _bad(url, f"database {db!r} is not a number")
    return SentinelAddress(tuple(sentinels), service, int(db or 0), password or None)


def check_address(url: str) -> SentinelAddress | None:
    """Refuse an address flateval cannot use, in one line; a sentinel address comes back parsed."""
    if "://" not in url:
        raise _bad(url, "no scheme")
    scheme = url.split("://", 1)[0].lower()
    if scheme == SENTINEL_SCHEME:
        return parse_sentinel_url(url)
    if scheme not in ("redis", "rediss", "unix"):
        raise _bad(url, f"unknown scheme {scheme!r}")
    try:
        kwargs = redis.connection.parse_url(url)
    except ValueError as exc:
        raise _bad(url, str(exc).rstrip(".").split(" (")[0]) from None
    if not url.lower().startswith("unix://") and not kwargs.get("host"):
        raise _bad(url, "no host")
    return None


def redis_connection(url: str, **kwargs) -> redis.Redis:
    """A client for `url` (any of `ADDRESS_FORMS`) that rides out restarts and failovers."""
    sentinel = check_address(url)
    retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), SENTINEL_RETRIES if sentinel else RETRIES)
    options = dict(retry=retry, health_check_interval=30, socket_connect_timeout=5,
                   retry_on_error=[redis.ConnectionError, redis.TimeoutError, ConnectionResetError], **kwargs)
    if sentinel is None:
        return redis.Redis.from_url(url, **options)
    return _primary_of(sentinel, **options)


class PrimaryConnection(SentinelManagedConnection):
    """A connection to the primary the sentinels name at the moment it (re)connects.

    redis-py's own reconnects a dropped connection, when a command is retried, at the address it
    last had (`send_packed_command` -> `connect_check_health`): after a failover, the dead primary,
    for the whole retry budget. Asking the sentinels there, and leaving the retries to the command,
    follows the failover within one back-off step.
    """

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health=check_health, retry_socket_connect=False)


def _primary_of(address: SentinelAddress, **options) -> redis.Redis:
    """A client of the service's current primary; every reconnection asks the sentinels again."""
    sentinels = Sentinel(list(address.sentinels), sentinel_kwargs={"socket_connect_timeout": 2, "socket_timeout": 2})
    return sentinels.master_for(address.service, db=address.db, password=address.password,
                                connection_class=PrimaryConnection, **options)


def connect(url: str, wait_s: float = 0.0) -> redis.Redis:
    """Check Redis answers now (failing fast, in one line), then hand out the retrying client.
    `wait_s`: keep asking that long first, for a Redis that is being started beside us."""
    sentinel = check_address(url)
    deadline = time.monotonic() + wait_s
    while True:
        probe = (_primary_of(sentinel, socket_connect_timeout=5, socket_timeout=5) if sentinel
                 else redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5))
        try:
            probe.ping()
            return redis_connection(url)
        except (redis.RedisError, OSError) as exc:
            starting = isinstance(exc, (redis.ConnectionError, OSError)) and not isinstance(exc, redis.AuthenticationError)
            if not starting or time.monotonic() >= deadline:
                raise RedisUnreachable(f"cannot reach Redis at {redact(url)}: {exc}") from None
        finally:
            probe.close()
        time.sleep(WAIT_POLL_S)  # nothing tells us when a Redis we do not own starts listening
