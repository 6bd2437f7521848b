"""Which addresses a webhook may reach, checked without a network (a stub resolver)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from proveniq_core.webhooks.destinations import (
    DestinationRefused,
    Resolver,
    UnresolvedName,
    address_problem,
    check,
    resolve_name,
)

REFUSED_ADDRESSES = [
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "100.64.0.1",
    "100.127.255.254",
    "169.254.169.254",
    "0.0.0.0",  # noqa: S104 (an address to refuse, not one to bind)
    "0.1.2.3",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",
    "198.18.0.1",
    "::",
    "::1",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fec0::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "64:ff9b::7f00:1",
    "2002:7f00:1::",
    "2002:a9fe:a9fe::",
    "::7f00:1",
    "2001:db8::1",
]
PUBLIC_ADDRESSES = ["8.8.8.8", "93.184.215.14", "2606:4700::1111", "::ffff:8.8.8.8"]


def stub(*answers: str, calls: list[str] | None = None) -> Resolver:
    """A resolver that answers ``answers`` for every name (and records the names asked)."""

    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        return list(answers)

    return resolve


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_non_public_addresses_have_a_problem(address: str) -> None:
    """Loopback, private, CGNAT, link-local, this-network, multicast, reserved, documentation,
    IPv6 unique/link/site-local and IPv6 forms embedding any of those are refused."""
    assert address_problem(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_public_addresses_pass(address: str) -> None:
    """Globally routable addresses (also IPv4-mapped) are fine."""
    assert address_problem(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.1/h", "loopback"),
        ("http://2130706433/h", "loopback"),
        ("http://0x7f.0.0.1/h", "loopback"),
        ("http://0177.0.0.1/h", "Invalid IPv4"),  # httpx refuses octal, inet_aton reads it
        ("http://0/h", "this network"),
        ("http://[::ffff:127.0.0.1]/h", "IPv6 form of a loopback"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://100.64.1.1/h", "CGNAT"),
        ("http://localhost:8080/h", "local machine"),
        ("http://LOCALHOST./h", "local machine"),
        ("http://admin.localhost/h", "local machine"),
        ("https://user:pass@hooks.example.com/h", "credentials"),
        ("https://token@hooks.example.com/h", "credentials"),
        ("ftp://hooks.example.com/h", "http or https"),
    ],
)
async def test_urls_refused_before_any_lookup(url: str, why: str) -> None:
    """Odd IPv4 spellings, IPv6 forms, localhost names and credentials are refused from the
    URL alone: the resolver is never asked."""
    calls: list[str] = []
    with pytest.raises(DestinationRefused, match=why):
        await check(url, allow_private=False, resolver=stub("8.8.8.8", calls=calls))
    assert calls == []


async def test_a_name_is_refused_if_any_address_is_not_public() -> None:
    """A name resolving to a public and a private address is refused, without naming the
    private address (that would map the internal network for the tenant)."""
    with pytest.raises(DestinationRefused, match="resolves to a non-public") as refused:
        await check(
            "https://hooks.example.com/in",
            allow_private=False,
            resolver=stub("8.8.8.8", "10.1.2.3"),
        )
    assert "10.1.2.3" not in str(refused.value)


async def test_a_public_name_gives_its_addresses_host_and_sni() -> None:
    """A public name: connect to its checked addresses, with the name in Host and SNI."""
    calls: list[str] = []
    dest = await check(
        "https://Hooks.Example.com:8443/in?x=1",
        allow_private=False,
        resolver=stub("93.184.215.14", "2606:4700::1111", calls=calls),
    )
    assert calls == ["hooks.example.com"]
    assert [str(a) for a in dest.addresses] == ["93.184.215.14", "2606:4700::1111"]
    assert dest.host_header() == "hooks.example.com:8443"
    assert dest.sni == "hooks.example.com"
    assert str(dest.request_url(dest.addresses[0])) == "https://93.184.215.14:8443/in?x=1"
    assert str(dest.request_url(dest.addresses[1])) == "https://[2606:4700::1111]:8443/in?x=1"


async def test_an_address_literal_has_no_sni() -> None:
    """An IP literal is connected to as it is, with no TLS server name (SNI takes names)."""
    dest = await check("https://8.8.8.8/in", allow_private=False, resolver=stub())
    assert dest.sni is None and dest.host_header() == "8.8.8.8"


async def test_allow_private_admits_private_destinations_but_not_credentials() -> None:
    """With private destinations allowed (a lab), loopback and private names pass; URLs
    with credentials are refused still."""
    dest = await check("http://localhost:9/h", allow_private=True, resolver=stub("127.0.0.1"))
    assert [str(a) for a in dest.addresses] == ["127.0.0.1"]
    assert await check("http://[::1]:9/h", allow_private=True)
    with pytest.raises(DestinationRefused, match="credentials"):
        await check("http://u:p@127.0.0.1/h", allow_private=True)


async def test_names_that_do_not_resolve_in_time_are_unresolved() -> None:
    """No answer, or none within the timeout, is UnresolvedName (not a refusal)."""
    with pytest.raises(UnresolvedName):
        await check("https://hooks.example.com/", allow_private=False, resolver=stub())
    never = asyncio.Event()

    async def hanging(host: str, port: int) -> list[str]:
        await never.wait()
        return []

    with pytest.raises(UnresolvedName, match="did not resolve within"):
        await check(
            "https://hooks.example.com/", allow_private=False, resolver=hanging, timeout=0.05
        )


async def test_the_system_resolver_is_what_checks_use() -> None:
    """The real resolver resolves localhost to loopback, each address of which is refused;
    a name under .invalid does not resolve."""
    found = await resolve_name("localhost", 80)
    assert found
    assert all(address_problem(ipaddress.ip_address(a)) == "loopback" for a in found)
    with pytest.raises(UnresolvedName):
        await resolve_name("receiver.invalid", 443)
