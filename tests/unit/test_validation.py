"""Validation: outbound URLs (SSRF rules, brief §8), redaction, tags, topics, filters, timeouts."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsmanager.core.errors import InvalidArgument
from wsmanager.core.validation import (
    MAX_TAG_KEY,
    MAX_TAG_VALUE,
    MAX_TAGS,
    address_refusal,
    host_allowed,
    parse_tag_filters,
    redact_url,
    validate_tags,
    validate_timeout_ms,
    validate_topic,
    validate_url,
)


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [
        ("ws://example.com/feed", "example.com", 80),
        ("wss://example.com/feed", "example.com", 443),
        ("WSS://Example.COM:8443/a?b=c", "example.com", 8443),
        ("ws://8.8.8.8:9000/", "8.8.8.8", 9000),
        ("ws://[2001:4860:4860::8888]/", "2001:4860:4860::8888", 80),
    ],
)
def test_public_ws_urls_pass(url: str, host: str, port: int) -> None:
    parsed = validate_url(url)
    assert (parsed.host, parsed.port, parsed.url) == (host, port, url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "required"),
        ("http://example.com/", "ws:// or wss://"),
        ("ftp://example.com/", "ws:// or wss://"),
        ("ws:///path", "host"),
        ("ws://example.com/#frag", "fragment"),
        ("ws://exa mple.com/", "whitespace"),
        ("ws://example.com:0/", "port"),
        ("ws://example.com:99999/", "not a valid URL"),
        ("ws://example.com/" + "a" * 3000, "longer"),
    ],
)
def test_malformed_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_url(url)


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("[::1]", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("172.16.5.4", "private"),
        ("169.254.169.254", "metadata"),
        ("[fd00:ec2::254]", "metadata"),
        ("169.254.1.1", "link-local"),
        ("[fe80::1]", "link-local"),
        ("[::ffff:10.0.0.1]", "private"),  # IPv4-mapped: judged as the IPv4 address
        ("0.0.0.0", "private"),  # 0.0.0.0 reaches this host
        ("100.64.0.1", "not a public address"),  # CGNAT shared space
        ("224.0.0.1", "not a public address"),
        ("localhost", "loopback name"),
        ("api.localhost", "loopback name"),
        ("metadata.google.internal", "metadata"),
    ],
)
def test_internal_targets_are_refused(host: str, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason):
        validate_url(f"ws://{host}:8080/x")


@pytest.mark.parametrize(
    ("entry", "url"),
    [
        ("127.0.0.1", "ws://127.0.0.1:8080/"),
        ("127.0.0.1:8080", "ws://127.0.0.1:8080/"),
        ("localhost", "ws://localhost:1/"),
        ("10.0.0.0/8", "ws://10.9.8.7/"),
        ("::1", "ws://[::1]:9/"),
        ("[::1]:9", "ws://[::1]:9/"),
        ("0:0::1", "ws://[::1]:9/"),
        ("*", "ws://169.254.169.254/"),
    ],
)
def test_allow_listed_targets_pass(entry: str, url: str) -> None:
    validate_url(url, [entry])


@pytest.mark.parametrize(
    ("entry", "url"),
    [
        ("127.0.0.1:8081", "ws://127.0.0.1:8080/"),  # other port
        ("[::1]:9", "ws://[::]:9/"),  # a prefix of the entry is not the entry
        ("10.0.0.0/16", "ws://10.9.8.7/"),
        ("garbage/99", "ws://10.9.8.7/"),
    ],
)
def test_allow_list_entries_match_exactly(entry: str, url: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_url(url, [entry])


def test_host_allowed_compares_names_case_insensitively() -> None:
    assert host_allowed("Feed.Example.COM.", 443, ["feed.example.com"])
    assert not host_allowed("evil.example.com", 443, ["feed.example.com"])


def test_public_addresses_have_no_refusal() -> None:
    assert address_refusal(ipaddress.ip_address("93.184.216.34")) is None
    assert address_refusal(ipaddress.ip_address("2606:4700::1111")) is None


def test_error_messages_never_contain_credentials() -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_url("ws://user:s3cret@example.com:99999/?token=t0k3n")
    assert "s3cret" not in err.value.message and "t0k3n" not in err.value.message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("ws://user:pw@host:1/p?q=1", "ws://host:1/p?q=1"),
        ("wss://token@host/p", "wss://host/p"),
        ("ws://host/p?token=abc&x=1", "ws://host/p?token=***&x=1"),
        ("ws://host/p?API_KEY=abc&sig=z&a=b%20c", "ws://host/p?API_KEY=***&sig=***&a=b%20c"),
        ("ws://host/p?password=&flag", "ws://host/p?password=***&flag"),
        ("ws://host/plain", "ws://host/plain"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_url_of_garbage_shows_nothing() -> None:
    assert redact_url("ws://[::1") == "<invalid url>"


@given(
    st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12),
)
def test_redacted_urls_never_contain_the_password(user: str, password: str) -> None:
    secret = f"S3{password}"
    shown = redact_url(f"ws://{user}:{secret}@example.com/?secret={secret}&access_token={secret}")
    assert secret not in shown


def test_tags_within_limits_pass() -> None:
    tags = {f"k{i}": "v" * MAX_TAG_VALUE for i in range(MAX_TAGS)}
    tags["k0"] = ""
    assert validate_tags(tags) == tags
    assert validate_tags(None) == {}
    assert validate_tags({"x" * MAX_TAG_KEY: "v"})


@pytest.mark.parametrize(
    "tags",
    [
        {f"k{i}": "v" for i in range(MAX_TAGS + 1)},
        {"": "v"},
        {"x" * (MAX_TAG_KEY + 1): "v"},
        {"k": "v" * (MAX_TAG_VALUE + 1)},
        {"k": 1},
        {"k\n": "v"},
        ["k", "v"],
    ],
)
def test_tags_over_the_limits_are_refused(tags: object) -> None:
    with pytest.raises(InvalidArgument):
        validate_tags(tags)  # type: ignore[arg-type]


def test_topic_rules() -> None:
    assert validate_topic("act.exchange.binance.trades") == "act.exchange.binance.trades"
    with pytest.raises(InvalidArgument, match="Topic is required"):
        validate_topic("")
    for bad in ("a b", "t" * 257, "tab\there", None):
        with pytest.raises(InvalidArgument):
            validate_topic(bad)


def test_tag_filters_parse_pairs_and_strings() -> None:
    assert parse_tag_filters(["env=prod", ("team", "fx"), "expr=a=b"]) == {
        "env": "prod",
        "team": "fx",
        "expr": "a=b",
    }
    assert parse_tag_filters(None) == {}
    assert parse_tag_filters(["env=prod", "env=prod"]) == {"env": "prod"}
    for bad in (["novalue"], ["=x"], ["env=a", "env=b"]):
        with pytest.raises(InvalidArgument):
            parse_tag_filters(bad)


def test_timeout_ms_rules() -> None:
    assert validate_timeout_ms(1) == 1
    assert validate_timeout_ms(600_000) == 600_000
    for bad in (0, -5, 600_001, 1.5, True, "10"):
        with pytest.raises(InvalidArgument):
            validate_timeout_ms(bad)


def test_correlation_ids_and_trace_ids_are_parsed_in_one_place() -> None:
    from wsmanager.core.validation import trace_id, usable_correlation_id

    assert usable_correlation_id("  req-42 ") == "req-42"
    assert usable_correlation_id("has space") is None
    assert usable_correlation_id("x" * 129) is None and usable_correlation_id(None) is None
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id(f"00-{trace.upper()}-00f067aa0ba902b7-01") == trace
    assert trace_id(f"00-{'0' * 32}-00f067aa0ba902b7-01") is None
    assert trace_id("garbage") is None and trace_id(None) is None
