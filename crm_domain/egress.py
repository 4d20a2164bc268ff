"""Where outbound HTTP (webhooks) may go: the SSRF guard.

A URL must be http or https, and every address its host resolves to must be a public unicast
address: loopback, private, shared (CGNAT), link-local (cloud metadata at 169.254.169.254),
multicast, reserved, documentation and other special-purpose ranges are refused. IPv6
addresses that carry an IPv4 one (IPv4-mapped, NAT64, 6to4, Teredo) are judged by that IPv4
address too. The check runs when an endpoint is saved and again at send time, on the
addresses the connection then really uses (crm_worker.webhook_sender connects to a vetted
address only), so a DNS answer that changed since, or a rebinding trick, gains nothing.

`allow_private=True` (WEBHOOKS_ALLOW_PRIVATE) lifts the address check, never the scheme
check: for tests and local development with receivers on localhost."""

from __future__ import annotations

import ipaddress
import logging
import socket
from urllib.parse import SplitResult, urlsplit

from .errors import ValidationFailed

log = logging.getLogger(__name__)
ALLOWED_SCHEMES = ("http", "https")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IANA special-purpose ranges, listed explicitly: `is_global` alone is wrong for some of
# them in Python releases before the CVE-2024-4032 fix (3.11.10 / 3.12.4).
_BLOCKED_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "::ffff:0:0/96",
        "64:ff9b::/96",
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "2002::/16",
        "3fff::/20",
        "5f00::/16",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class EgressRefused(Exception):
    """A destination the guard refuses. Its message says only that: what the host resolved
    to (or why it did not) is in `detail`, for the log. Whatever reaches an API answer (the
    400, a delivery's error) must not make the guard a DNS lookup of internal names."""

    MESSAGE = "the host's address is not allowed"

    def __init__(self, detail: str) -> None:
        super().__init__(self.MESSAGE)
        self.detail = detail


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, Teredo), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def is_public(address: IPAddress) -> bool:
    """A global unicast address outside every special-purpose range."""
    inner = embedded_ipv4(address)
    if inner is not None and not is_public(inner):
        return False
    return (
        address.is_global
        and not address.is_multicast
        and not address.is_reserved
        and not any(address in net for net in _BLOCKED_NETWORKS)
    )


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to for TCP (an IP literal resolves to itself)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise EgressRefused(f"{host} does not resolve ({exc})") from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise EgressRefused(f"{host} does not resolve")
    return addresses


def vetted_addresses(host: str, port: int, *, allow_private: bool) -> list[IPAddress]:
    """The addresses to connect to, all of them checked; EgressRefused if any is not public
    (one bad address in the answer refuses the host: the client might pick it)."""
    addresses = resolve(host, port)
    if not allow_private:
        for address in addresses:
            if not is_public(address):
                raise EgressRefused(f"{host} resolves to {address}, which is not a public address")
    return addresses


def parse_url(url: str) -> SplitResult:
    """An http(s) URL with a host; ValidationFailed (400) otherwise."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme.lower() not in ALLOWED_SCHEMES
        or not parts.hostname
        or port == -1
        or any(ch.isspace() or not ch.isprintable() for ch in url)
    ):
        raise ValidationFailed(
            "The URL must be an http or https URL with a host",
            code="WEBHOOK_URL_INVALID",
            details={"url": url, "allowed_schemes": list(ALLOWED_SCHEMES)},
        )
    return parts


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse (400) a URL that is not http(s), or whose host resolves to an address that is
    not public (unless `allow_private`)."""
    parts = parse_url(url)
    if allow_private:
        return
    assert parts.hostname is not None
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        vetted_addresses(parts.hostname, port, allow_private=False)
    except EgressRefused as exc:
        log.info("webhook URL refused: %s", exc.detail)
        raise ValidationFailed(
            "The URL's host must resolve to public addresses only",
            code="WEBHOOK_URL_FORBIDDEN",
            details={"url": url, "reason": str(exc)},
        ) from exc
