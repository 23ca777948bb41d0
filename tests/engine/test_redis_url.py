"""engine/redis_url.py: Redis URLs parsed and checked, their password never shown."""

from __future__ import annotations

import pytest

from engine.redis_url import RedisTarget, RedisUrlError, parse_redis_url, redact_url

PASSWORD = "Tr0ub4dor-and-3"


def test_a_full_url_gives_every_part() -> None:
    target = parse_redis_url(f"redis://bot:{PASSWORD}@cache.example:6380/2")
    assert (target.host, target.port, target.db, target.username, target.password, target.tls) == (
        "cache.example", 6380, 2, "bot", PASSWORD, False)


def test_defaults_port_and_database() -> None:
    target = parse_redis_url("redis://127.0.0.1")
    assert (target.port, target.db, target.username, target.password) == (6379, 0, None, None)


def test_password_without_user_and_escapes_are_decoded() -> None:
    target = parse_redis_url("rediss://:p%40ss%2Fword@[::1]:7000/0?ssl_cert_reqs=none")
    assert target.username is None and target.password == "p@ss/word"
    assert target.host == "::1" and target.tls
    assert target.tls_options == (("ssl_cert_reqs", "none"),)


def test_an_unescaped_at_in_the_password_still_finds_the_host() -> None:
    target = parse_redis_url("redis://u:pa@ss@h:1/0")
    assert (target.host, target.password) == ("h", "pa@ss")


@pytest.mark.parametrize("url, words", [
    ("", "no URL"),
    ("http://h:1/0", "redis:// or rediss://"),
    ("h:6379", "redis:// or rediss://"),
    ("redis://:6379/0", "no host"),
    ("redis://h:0/0", "port"),
    ("redis://h:70000/0", "port"),
    ("redis://h:x/0", "port"),
    ("redis://h/zero", "database number"),
    ("redis://h/0?ssl_cert_reqs=none", "rediss://"),
    ("rediss://h/0?verify=no", "unknown option"),
    ("rediss://h/0?ssl_cert_reqs=maybe", "ssl_cert_reqs must be"),
    ("redis://h/0#x", "fragment"),
    ("redis://h b/0", "spaces"),
])
def test_bad_urls_say_what_is_wrong(url: str, words: str) -> None:
    with pytest.raises(RedisUrlError, match=words):
        parse_redis_url(url)


@pytest.mark.parametrize("url", [
    f"redis://bot:{PASSWORD}@h:99999/0",
    f"redis://bot:{PASSWORD}@h/db",
    f"http://bot:{PASSWORD}@h/0",
    f"bot:{PASSWORD}@h",
    f"redis://bot:{PASSWORD}#x@h/0",      # an unescaped # cuts the URL inside the password
    f"redis://:{PASSWORD}/x@h/0",
    f"redis://bot:{PASSWORD} @h/0",
    f"redis://bot:{PASSWORD}@h/0?ssl_ca_certs=/x",
])
def test_no_error_shows_the_password_or_a_piece_of_it(url: str) -> None:
    with pytest.raises(RedisUrlError) as caught:
        parse_redis_url(url)
    message = str(caught.value)
    assert PASSWORD not in message and PASSWORD[:6] not in message, message


def test_the_target_shows_itself_without_its_password() -> None:
    target = parse_redis_url(f"rediss://bot:{PASSWORD}@h:1/3?ssl_cert_reqs=required")
    for text in (repr(target), str(target), target.shown(), f"{target!r}"):
        assert PASSWORD not in text
    assert target.shown() == "rediss://bot:***@h:1/3?ssl_cert_reqs=required"
    assert RedisTarget("h").shown() == "redis://h:6379/0"


def test_hide_removes_the_password_from_any_text() -> None:
    target = parse_redis_url(f"redis://:{PASSWORD}@h/0")
    assert target.hide(f"AUTH failed for {PASSWORD} at redis://x:{PASSWORD}@h") == (
        "AUTH failed for *** at redis://***@h")


def test_redact_url_hides_credentials_in_free_text() -> None:
    assert redact_url(f"see redis://u:{PASSWORD}@h:1/0 and u:{PASSWORD}@h") == (
        "see redis://***@h:1/0 and ***@h")
    assert redact_url("redis://h:1/0 has none") == "redis://h:1/0 has none"
