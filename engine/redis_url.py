"""Redis URLs: parsed, checked, shown without their password, and turned into a client.

Why one module for both sides: the bot (REDIS_URL) and a remote worker (`vqgan-clip worker
--redis URL`) take the same URL, and both must say what is wrong with it without ever
echoing the password: an error message or a log line gets pasted into chats and issues.
So the text is parsed once into a `RedisTarget`, whose repr hides the password, and every
message shows the URL through `redact_url`.

Accepted: `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]` and the same with `rediss://` (TLS),
which may add `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`, `ssl_cert_reqs` and
`ssl_check_hostname` as query options. Percent-escapes in the user and password are decoded
(a password holding `@` or `/` is written `%40`, `%2F`).

Stdlib only at import: `open_client` imports redis-py when it is called.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

if TYPE_CHECKING:
    import redis.asyncio

SCHEMES = ("redis", "rediss")
DEFAULT_PORT = 6379
#: Redis databases are numbered 0..15 unless the server's `databases` says more.
MAX_DB = 1_000_000
#: Query options a `rediss://` URL may carry, and the values each accepts (None: any path).
TLS_OPTIONS: dict[str, tuple[str, ...] | None] = {
    "ssl_ca_certs": None,
    "ssl_certfile": None,
    "ssl_keyfile": None,
    "ssl_cert_reqs": ("required", "optional", "none"),
    "ssl_check_hostname": ("true", "false"),
}
EXAMPLE = "redis://USER:PASSWORD@HOST:6379/0"
HIDDEN = "***"

# Whatever stands before the last @ of a word (after its scheme://, if any): user and
# password, hidden together. Greedy on purpose: a password with unescaped / ? # in it, or
# a URL too broken to parse, is hidden too (at worst a little more than needed).
_CREDENTIALS = re.compile(r"(?:([A-Za-z][A-Za-z0-9+.-]*://)|(?<!\S))\S*@")


class RedisUrlError(ValueError):
    """The URL is unusable; the message says why and how to write it, never its password."""


@dataclass(frozen=True, repr=False)
class RedisTarget:
    """Where a Redis server is and how to log in; `str()`/`repr()` hide the password."""

    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, compare=False)
    tls: bool = False
    #: The `rediss://` query options, as (name, value) pairs.
    tls_options: tuple[tuple[str, str], ...] = ()

    def shown(self) -> str:
        """The URL with the password replaced by ***: what logs and messages may print."""
        user = self.username or ""
        credentials = f"{user}:{HIDDEN}@" if self.password is not None else (
            f"{user}@" if user else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = "&".join(f"{name}={value}" for name, value in self.tls_options)
        return (f"{'rediss' if self.tls else 'redis'}://{credentials}{host}:{self.port}/{self.db}"
                + (f"?{query}" if query else ""))

    def __repr__(self) -> str:
        return f"RedisTarget({self.shown()})"

    __str__ = shown

    def hide(self, text: str) -> str:
        """`text` (an error from a library, say) with this target's password hidden."""
        return hide_secret(redact_url(text), self.password)


def redact_url(text: str) -> str:
    """`text` with the credentials of any URL in it (`user:password@`) replaced by ***@."""
    return _CREDENTIALS.sub(lambda m: (m.group(1) or "") + HIDDEN + "@", text)


def hide_secret(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced by ***; short secrets too."""
    return text.replace(secret, HIDDEN) if secret else text


def parse_redis_url(text: str) -> RedisTarget:
    """`text` -> RedisTarget, or RedisUrlError with what is wrong (password hidden)."""
    text = text.strip()
    shown = redact_url(text)
    if not text:
        raise RedisUrlError(f"no URL given; write it as {EXAMPLE}")
    if any(ch.isspace() for ch in text):
        # Not shown: where the password ends is anybody's guess.
        raise RedisUrlError(f"the URL contains spaces; write it as {EXAMPLE} (in the "
                            "password, write a space as %20)")
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise RedisUrlError(f"{shown!r} must start with redis:// or rediss:// (TLS), e.g. {EXAMPLE}")
    tls = scheme.lower() == "rediss"
    # As urlsplit reads it: the authority ends at the first / ? or #, and its credentials
    # at its last @ (so an unescaped @ in a password still works; / ? # must be escaped).
    try:
        parts = urlsplit("//" + rest)
    except ValueError as error:  # an unbalanced [ in the host
        raise RedisUrlError(f"{shown!r}: {error}") from None
    credentials, at, hostport = parts.netloc.rpartition("@")
    if "@" in rest and "@" in rest[len(parts.netloc):]:
        # An @ after the host: a password with an unescaped / ? or # cut the URL early.
        raise RedisUrlError(f"{shown!r}: escape / ? # and @ in the user and password "
                            "(%2F %3F %23 %40)")
    username, password = _credentials(credentials) if at else (None, None)
    host, port = _host_and_port(hostport, shown)
    db = _database(parts.path, shown)
    if parts.fragment:
        raise RedisUrlError(f"{shown!r}: a Redis URL has no #fragment")
    options = _tls_options(parts.query, tls, shown)
    return RedisTarget(host=host, port=port, db=db, username=username, password=password,
                       tls=tls, tls_options=options)


def _credentials(text: str) -> tuple[str | None, str | None]:
    user, sep, password = text.partition(":")
    return (unquote(user) or None), (unquote(password) if sep else None)


def _host_and_port(netloc: str, shown: str) -> tuple[str, int]:
    if netloc.startswith("["):
        host, sep, after = netloc[1:].partition("]")
        if not sep or (after and not after.startswith(":")):
            raise RedisUrlError(f"{shown!r}: an IPv6 host is written in brackets, e.g. "
                                "redis://[::1]:6379/0")
        port_text = after[1:] if after else ""
    else:
        host, _, port_text = netloc.partition(":")
    if not host:
        raise RedisUrlError(f"{shown!r} names no host; write it as {EXAMPLE}")
    if not re.fullmatch(r"[A-Za-z0-9._:%-]+", host):
        raise RedisUrlError(f"{shown!r}: {host!r} is not a host name or address")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise RedisUrlError(f"{shown!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def _database(path: str, shown: str) -> int:
    name = path.strip("/")
    if not name:
        return 0
    if not name.isdigit() or int(name) > MAX_DB:
        raise RedisUrlError(f"{shown!r}: after the host comes the database number "
                            f"(e.g. /0), not /{name}")
    return int(name)


def _tls_options(query: str, tls: bool, shown: str) -> tuple[tuple[str, str], ...]:
    if not query:
        return ()
    if not tls:
        raise RedisUrlError(f"{shown!r}: options after ? are TLS options; use rediss:// "
                            "for TLS, or drop them")
    options = []
    for name, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if name not in TLS_OPTIONS:
            raise RedisUrlError(f"{shown!r}: unknown option {name!r}; known: "
                                + ", ".join(TLS_OPTIONS))
        accepted = TLS_OPTIONS[name]
        if accepted is not None and value.lower() not in accepted:
            raise RedisUrlError(f"{shown!r}: {name} must be one of {', '.join(accepted)}")
        if not value:
            raise RedisUrlError(f"{shown!r}: {name} needs a value")
        options.append((name, value))
    return tuple(options)


def open_client(target: RedisTarget, *, socket_timeout: float = 30.0) -> redis.asyncio.Redis:
    """An asyncio redis-py client for `target` (connects on first use).

    Replies are RESP2 (the shapes are the same on every server since Redis 5); a dropped
    connection is retried once at once (a pooled connection that outlived a server restart
    fails its first command), then the callers' own loops back off. `socket_timeout` must
    exceed the longest BLOCK the caller asks for. No client name is set: CLIENT is not
    among the commands the documented ACL user may run (docs/remote-workers.md).
    """
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    kwargs: dict[str, Any] = {}
    if target.tls:
        kwargs["ssl"] = True
        for name, value in target.tls_options:
            if name == "ssl_check_hostname":
                kwargs[name] = value.lower() == "true"
            else:
                kwargs[name] = value.lower() if name == "ssl_cert_reqs" else value
    return redis.asyncio.Redis(
        host=target.host, port=target.port, db=target.db, username=target.username,
        password=target.password, protocol=2,
        socket_timeout=socket_timeout, socket_connect_timeout=10.0,
        retry=Retry(NoBackoff(), 1), health_check_interval=30, **kwargs)
