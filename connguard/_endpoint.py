"""Endpoint keys and the pattern syntax of CONNGUARD_INCLUDE/EXCLUDE/BACKGROUND.

An endpoint is ``(host, port)`` exactly as the caller named it: an IP literal
for plain sockets, often a host name for httpx and ldap3. Patterns:

========================  ==============================================
``10.0.0.5:4000``         that host and port exactly
``10.0.0.5:*``            that host, any port (also written ``10.0.0.5``)
``*.example.com:443``     any host under example.com, port 443
``10.0.0.0/8``            any address in the network, any port
``10.0.0.0/8:5432``       any address in the network, port 5432
``[::1]:443``             IPv6 literals and networks go in brackets
``*:9200`` / ``*``        any host on that port / everything
========================  ==============================================

Host names and IP patterns never match each other: ``localhost:80`` does not
match a connect to ``127.0.0.1:80`` (connguard does no DNS on the hot path).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["Endpoint", "EndpointPattern", "format_endpoint", "parse_endpoint", "parse_patterns"]

Endpoint = tuple[str, int]

_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def format_endpoint(endpoint: Endpoint) -> str:
    """``host:port``, with IPv6 literals in brackets."""
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_endpoint(text: str) -> Endpoint:
    """Parse ``host:port`` or ``[v6]:port``; raise ``ValueError`` saying what is wrong."""
    host, port = _split_host_port(text.strip())
    if port is None or not host or host == "*":
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host, port


@dataclass(frozen=True, slots=True)
class EndpointPattern:
    """One parsed pattern; ``port`` None means any port."""

    text: str
    host: str | None  # exact host (lower case) or "*.suffix"; None with network or any host
    network: _IPNetwork | None
    port: int | None

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            try:
                address = ipaddress.ip_address(host.split("%", 1)[0])
            except ValueError:
                return False
            return address.version == self.network.version and address in self.network
        if self.host is None:
            return True
        host = host.lower()
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host


def parse_patterns(text: str) -> tuple[EndpointPattern, ...]:
    """Parse a comma-separated pattern list; raise ``ValueError`` naming the bad entry."""
    return tuple(_parse_pattern(part.strip()) for part in text.split(",") if part.strip())


def _parse_pattern(text: str) -> EndpointPattern:
    host, port = _split_host_port(text, port_optional=True)
    if not host:
        raise ValueError(f"{text!r} names no host (write '*' for any host)")
    if host == "*":
        return EndpointPattern(text, None, None, port)
    if "/" in host:
        try:
            network = ipaddress.ip_network(host, strict=False)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not a CIDR network") from None
        return EndpointPattern(text, None, network, port)
    if "*" in host and not (host.startswith("*.") and "*" not in host[2:]):
        raise ValueError(f"{text!r}: a wildcard is only allowed as a leading '*.'")
    try:
        # Normalise IP literals so that "::0001" matches "::1".
        host = str(ipaddress.ip_address(host))
    except ValueError:
        host = host.lower()
    return EndpointPattern(text, host, None, port)


def _split_host_port(text: str, *, port_optional: bool = False) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected ':PORT' after ']'")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        raise ValueError(f"{text!r}: write IPv6 addresses in brackets, as [::1]:443")
    else:
        host, port_text = text, None
    if port_text is None or port_text == "*":
        if port_text is None and not port_optional:
            raise ValueError(f"{text!r} has no port")
        return host, None
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r}: port {port_text!r} is not a number or '*'") from None
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: port {port} is outside 1..65535")
    return host, port
