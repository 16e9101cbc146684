"""Is a URL safe for the worker to fetch? (server-side request forgery protection)

A job's input URL is chosen by whoever submits the job, and the worker fetches it from
inside the provider's network. Without checks a URL could read the cloud metadata service
(credentials), ComfyUI's own API on loopback, or anything else on the private network.

`check_url` parses the URL, resolves its host name and refuses the request when ANY
resolved address is loopback, private, link-local, CGNAT (100.64/10), multicast,
reserved, unspecified or a known metadata address, unless private URLs are allowed.
It returns the addresses it checked: the downloader connects to one of those exact
addresses (pinning), so a DNS answer that changes between check and connect (DNS
rebinding) cannot send the request elsewhere. Redirects are checked again hop by hop
by the downloader.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from comfy.deadline import Deadline
from comfy.errors import JobError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
METADATA_ADDRESSES = frozenset({
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, DigitalOcean, ...
    ipaddress.ip_address("169.254.170.2"),  # AWS ECS task credentials
    ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
})
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
# Name look-ups that must end by a job's deadline run here; one stuck in a silent resolver
# holds a thread until the resolver gives up, never the job.
_RESOLVER = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="resolve")


class UnsafeURL(JobError):
    """The URL is not http(s), or its host is (or resolves to) a non-public address."""

    error_type = "input_url_refused"


@dataclass(frozen=True)
class CheckedURL:
    """A URL that passed the check, with the addresses its host resolved to."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


def why_not_public(address: IPAddress) -> str | None:
    """The reason an address is not a public internet address, or None if it is."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d is that IPv4 address, nothing more
            reason = why_not_public(address.ipv4_mapped)
            return f"{reason} ({address.ipv4_mapped}) inside an IPv6 address" if reason else None
        # 6to4 and Teredo addresses carry an IPv4 address too: judge it as well, so
        # 2002:7f00:1:: is not a way around the IPv4 rules.
        for inner in (address.sixtofour, *(address.teredo or ())):
            if inner is not None and (reason := why_not_public(inner)):
                return f"{reason} ({inner}) inside an IPv6 address"
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    checks = (
        ("is_loopback", "a loopback address"),
        ("is_unspecified", "the unspecified address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    )
    for attribute, reason in checks:
        if getattr(address, attribute):
            return reason
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "a carrier-grade NAT address"
    if not address.is_global:
        return "not a public address"
    return None


def resolve(host: str, port: int, deadline: Deadline | None = None) -> tuple[IPAddress, ...]:
    """Every address `host` resolves to (IPv4 and IPv6), in resolver order, deduplicated.

    With a `deadline`, a resolver that has not answered by then fails the job's time, not later.
    """
    try:
        if deadline is None:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        else:
            lookup = _RESOLVER.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
            try:
                infos = lookup.result(timeout=deadline.remaining())
            except concurrent.futures.TimeoutError:
                raise deadline.exceeded(f"resolving host {host}") from None
    except socket.gaierror as exc:
        raise UnsafeURL(f"cannot resolve host {host!r}: {exc.strerror or exc}", details={"host": host}) from None
    seen: dict[IPAddress, None] = {}
    for _family, _type, _proto, _name, sockaddr in infos:
        seen.setdefault(ipaddress.ip_address(str(sockaddr[0]).split("%")[0]), None)
    return tuple(seen)


def check_url(url: str, allow_private: bool = False, deadline: Deadline | None = None) -> CheckedURL:
    """Parse and vet a URL; raise UnsafeURL saying what is wrong with it."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"malformed URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeURL(f"URL scheme {scheme or '(none)'!r} is not allowed (http and https only): {url!r}")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise UnsafeURL(f"URL has no host: {url!r}")
    if parts.username or parts.password:
        raise UnsafeURL(f"URLs with user:password are not accepted (host {host})", details={"host": host})
    port = port or (443 if scheme == "https" else 80)
    if not allow_private and host in METADATA_HOSTS:
        raise UnsafeURL(
            f"host {host} is a cloud metadata service; refused (ALLOW_PRIVATE_URLS=true allows it)",
            details={"host": host},
        )
    try:
        addresses: tuple[IPAddress, ...] = (ipaddress.ip_address(host),)
    except ValueError:
        addresses = resolve(host, port, deadline)
    if not addresses:
        raise UnsafeURL(f"host {host} resolved to no address", details={"host": host})
    if not allow_private:
        for address in addresses:
            reason = why_not_public(address)
            if reason:
                shown = host if host == str(address) else f"{host} ({address})"
                raise UnsafeURL(
                    f"host {shown} is {reason}; refused (set ALLOW_PRIVATE_URLS=true to allow private URLs)",
                    details={"host": host, "address": str(address), "reason": reason},
                )
    return CheckedURL(url=url, scheme=scheme, host=host, port=port, addresses=addresses)


def pinned_request_parts(
    checked: CheckedURL, address: IPAddress, url: str | None = None
) -> tuple[str, dict[str, str], dict[str, str]]:
    """(URL, headers, httpx extensions) of a request for `url` (default: the checked URL; the
    same scheme, host and port) that connects to `address`, one of the checked addresses.

    The URL names the IP, so nothing resolves the name again (no DNS rebinding between the
    check and the connection); `Host` still names the host, and httpcore's `sni_hostname`
    extension sends SNI and verifies the TLS certificate for the name, not the IP.
    """
    parts = urlsplit(url or checked.url)
    ip_host = f"[{address}]" if address.version == 6 else str(address)
    default_port = 443 if checked.scheme == "https" else 80
    netloc = ip_host if checked.port == default_port else f"{ip_host}:{checked.port}"
    pinned_url = urlunsplit((checked.scheme, netloc, parts.path or "/", parts.query, ""))
    name = f"[{checked.host}]" if ":" in checked.host else checked.host  # an IPv6 literal keeps its brackets
    host_header = name if checked.port == default_port else f"{name}:{checked.port}"
    extensions = {"sni_hostname": checked.host} if checked.scheme == "https" else {}
    return pinned_url, {"Host": host_header}, extensions
