"""Redis URLs: the plain ones redis-py reads, and `redis+sentinel://` for Sentinel.

`redis+sentinel://[[user]:password@]host:port[,host:port...]/<master>[/<db>]`
(`rediss+sentinel://` for TLS to the master) names the Sentinels and the master they
watch, so one `REDIS_URL` setting covers both deployments.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

PLAIN_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


@dataclass(frozen=True)
class SentinelURL:
    """Where the Sentinels are and which master they watch, from a `redis+sentinel://` URL."""

    hosts: list[tuple[str, int]]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False


def is_sentinel_url(url: str) -> bool:
    """True for `redis+sentinel://` and `rediss+sentinel://` URLs."""
    return url.split("://", 1)[0] in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelURL:
    """Split a Sentinel URL; ValueError (never echoing the URL, it may hold a password)."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError("a Sentinel URL starts with redis+sentinel:// or rediss+sentinel://")
    hosts = []
    for item in parts.netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError("Sentinel hosts must be host:port, comma separated")
        hosts.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("a Sentinel URL's path is /<master name>[/<db number>]")
    return SentinelURL(
        hosts=hosts,
        master=unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        ssl=parts.scheme == "rediss+sentinel",
    )


def url_password(url: str) -> str | None:
    """The password inside a Redis URL (userinfo or `?password=`), if any."""
    parts = urlsplit(url)
    if "@" in parts.netloc and parts.password:
        return unquote(parts.password)
    query = parse_qs(parts.query).get("password")
    return query[0] if query else None
