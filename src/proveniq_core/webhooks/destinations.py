"""Where a webhook may go: public addresses only, unless ``PROVENIQ_WEBHOOK_ALLOW_PRIVATE``.

A tenant chooses the URL, so without this check Core would POST (and report on) whatever
its own network reaches: loopback, the cloud metadata address, private networks. The URL
is checked when an endpoint is created and again at every delivery: the name is resolved
once, every address it resolves to is checked, and the POST goes to the checked address
(the URL's host stays in ``Host`` and in TLS SNI and certificate checks), so the name
cannot resolve to something else between the check and the connection (DNS rebinding).

Refused always: credentials in the URL (``user:pass@``). Refused unless private
destinations are allowed: ``localhost`` and ``*.localhost``; IP literals in any spelling
(``127.1``, ``2130706433``, ``0x7f.1``, ``[::ffff:127.0.0.1]``) and names resolving to any
address that is not globally routable: loopback, RFC 1918, 100.64.0.0/10 (CGNAT),
link-local (169.254.0.0/16 with the metadata service, fe80::/10), 0.0.0.0/8, multicast,
reserved and documentation ranges, IPv6 unique-local, and IPv6 forms embedding any of
those (IPv4-mapped, 6to4, NAT64).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port)`` to the IP addresses it resolves to, as strings."""

RESOLVE_TIMEOUT: Final = 5.0

_LABELS: Final = tuple(
    (ipaddress.ip_network(net), label)
    for net, label in (
        ("0.0.0.0/8", "'this network' (0.0.0.0/8)"),
        ("127.0.0.0/8", "loopback"),
        ("10.0.0.0/8", "private (RFC 1918)"),
        ("172.16.0.0/12", "private (RFC 1918)"),
        ("192.168.0.0/16", "private (RFC 1918)"),
        ("100.64.0.0/10", "shared address space (100.64.0.0/10, CGNAT)"),
        ("169.254.0.0/16", "link-local (169.254.0.0/16, cloud metadata)"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fc00::/7", "unique local (fc00::/7)"),
        ("fe80::/10", "link-local (fe80::/10)"),
        ("fec0::/10", "site-local (fec0::/10)"),
        ("ff00::/8", "multicast"),
    )
)
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_PUBLIC_ONLY: Final = "webhooks go to public addresses only"


class DestinationRefused(ValueError):
    """A URL webhooks may not be sent to; the message says why (safe to show the tenant)."""


class UnresolvedName(OSError):
    """The URL's host name does not resolve (now)."""


def address_problem(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public destination, or ``None`` when it is one."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            problem = address_problem(embedded)
            return None if problem is None else f"an IPv6 form of a {problem} address"
        if ip.scope_id:
            return "scoped (link-local)"
    for network, label in _LABELS:
        if ip in network:
            return label
    # is_global alone misses multicast and some reserved ranges on Python 3.11.
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return "not globally routable"
    return None


def _literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, in any form a resolver would accept, else ``None``."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    # inet_aton reads the legacy spellings: 127.1, 2130706433, 0x7f.0.0.1, 0177.0.0.1.
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def parse(url: str) -> httpx.URL:
    """The URL, refused when it is not http(s) with a host, or carries credentials."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise DestinationRefused(f"not a valid URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise DestinationRefused("must be an http or https URL with a host")
    if parsed.userinfo:
        raise DestinationRefused(
            "must not carry credentials (user:password@): receivers verify the signature"
        )
    return parsed


async def resolve_name(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives for ``host`` (TCP)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvedName(f"{host} does not resolve ({exc})") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True, slots=True)
class Destination:
    """A checked URL and the addresses it may be connected to, in the resolver's order."""

    url: httpx.URL
    addresses: tuple[IPAddress, ...]

    @property
    def sni(self) -> str | None:
        """The TLS server name: the URL's host unless it is an address."""
        return None if _literal(self.url.host) is not None else self.url.raw_host.decode()

    def request_url(self, address: IPAddress) -> httpx.URL:
        """The URL with its host replaced by ``address``: what to connect to."""
        return self.url.copy_with(host=str(address))

    def host_header(self) -> str:
        return self.url.netloc.decode("ascii")


async def check(
    url: str,
    *,
    allow_private: bool,
    resolver: Resolver | None = None,
    timeout: float = RESOLVE_TIMEOUT,
) -> Destination:
    """Resolve ``url``'s host once and check it and every address it resolves to.

    ``DestinationRefused`` when any is not public (and private ones are not allowed) or the
    URL itself is refused; ``UnresolvedName`` when the name does not resolve in time.
    """
    parsed = parse(url)
    host = parsed.host
    name = host.rstrip(".").lower()
    if not allow_private and (name == "localhost" or name.endswith(".localhost")):
        raise DestinationRefused(f"{host} is the local machine: {_PUBLIC_ONLY}")
    literal = _literal(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            async with asyncio.timeout(timeout):
                found = await (resolver or resolve_name)(parsed.raw_host.decode(), port)
        except TimeoutError:
            raise UnresolvedName(f"{host} did not resolve within {timeout:g} s") from None
        if not found:
            raise UnresolvedName(f"{host} resolves to no address")
        addresses = [ipaddress.ip_address(a) for a in found]
    if not allow_private:
        for address in addresses:
            problem = address_problem(address)
            if problem is None:
                continue
            if literal is not None:
                raise DestinationRefused(f"{host} is a {problem} address: {_PUBLIC_ONLY}")
            # The address itself is not named: it would tell a tenant the internal network.
            raise DestinationRefused(
                f"{host} resolves to a non-public ({problem}) address: {_PUBLIC_ONLY}"
            )
    return Destination(parsed, tuple(addresses))
