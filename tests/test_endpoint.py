"""Endpoint keys and patterns."""

from __future__ import annotations

import pytest

from connguard._endpoint import format_endpoint, parse_endpoint, parse_patterns


@pytest.mark.parametrize(
    ("pattern", "host", "port", "expected"),
    [
        ("127.0.0.1:5000", "127.0.0.1", 5000, True),
        ("127.0.0.1:5000", "127.0.0.1", 5001, False),
        ("127.0.0.1:5000", "127.0.0.2", 5000, False),
        ("127.0.0.1:*", "127.0.0.1", 1, True),
        ("127.0.0.1", "127.0.0.1", 1, True),
        ("10.0.0.0/8", "10.200.1.1", 443, True),
        ("10.0.0.0/8", "11.0.0.1", 443, False),
        ("10.0.0.0/8:5432", "10.1.1.1", 5432, True),
        ("10.0.0.0/8:5432", "10.1.1.1", 5433, False),
        ("10.0.0.0/8", "db.internal", 5432, False),
        ("[::1]:443", "::1", 443, True),
        ("[::0001]:443", "::1", 443, True),
        ("[fd00::/8]:*", "fd12::5", 80, True),
        ("[fd00::/8]:*", "10.0.0.1", 80, False),
        ("[fe80::/10]", "fe80::1%eth0", 80, True),
        ("API.example.com:443", "api.example.COM", 443, True),
        ("*.example.com:443", "api.example.com", 443, True),
        ("*.example.com:443", "example.com", 443, False),
        ("*.example.com:443", "badexample.com", 443, False),
        ("*:9200", "anything", 9200, True),
        ("*:9200", "anything", 9201, False),
        ("*", "anything", 1, True),
        ("localhost:80", "127.0.0.1", 80, False),
    ],
)
def test_pattern_matching(pattern: str, host: str, port: int, expected: bool) -> None:
    """Each documented pattern form matches exactly what the docs say."""
    (parsed,) = parse_patterns(pattern)
    assert parsed.matches(host, port) is expected


@pytest.mark.parametrize(
    "bad", ["h:0", "h:65536", "h:x", "::1:80", "[::1", "[::1]x", "a*b", "1.2.3.0/40", ":80"]
)
def test_bad_patterns_say_what_is_wrong(bad: str) -> None:
    """A malformed pattern raises ValueError quoting it."""
    with pytest.raises(ValueError, match="'"):
        parse_patterns(bad)


def test_empty_entries_are_ignored() -> None:
    """Blank entries of a comma list are skipped."""
    assert [p.text for p in parse_patterns(" a:1, ,b:2,")] == ["a:1", "b:2"]


def test_endpoint_round_trip() -> None:
    """format_endpoint and parse_endpoint are inverses, IPv6 in brackets."""
    for endpoint in [("10.0.0.1", 80), ("::1", 443), ("db.internal", 5432)]:
        assert parse_endpoint(format_endpoint(endpoint)) == endpoint
    assert format_endpoint(("::1", 443)) == "[::1]:443"
    with pytest.raises(ValueError, match="no port"):
        parse_endpoint("host-without-port")
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        parse_endpoint("*:80")
