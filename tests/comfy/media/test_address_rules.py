"""Which addresses count as public: the rules behind every URL check, address by address."""

from __future__ import annotations

import ipaddress

import pytest

from comfy.media.url_safety import UnsafeURL, check_url, why_not_public


@pytest.mark.parametrize("address, reason", [
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.5.4", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "cloud metadata"),
    ("169.254.170.2", "cloud metadata"),  # AWS ECS task credentials
    ("100.100.100.200", "cloud metadata"),  # Alibaba Cloud
    ("169.254.1.1", "link-local"),
    ("100.64.0.7", "carrier-grade NAT"),
    ("0.0.0.0", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fd12:3456::1", "private"),
    ("fd00:ec2::254", "cloud metadata"),
    ("::ffff:127.0.0.1", "loopback address (127.0.0.1) inside an IPv6 address"),
    ("::ffff:169.254.169.254", "cloud metadata address (169.254.169.254) inside"),
    ("2002:7f00:1::1", "loopback address (127.0.0.1) inside"),  # 6to4 around 127.0.0.1
    ("2002:a9fe:a9fe::1", "cloud metadata address (169.254.169.254) inside"),
])
def test_non_public_addresses_are_named(address, reason):
    found = why_not_public(ipaddress.ip_address(address))
    assert found is not None and reason in found


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8",
                                     "2002:808:808::1"])
def test_public_addresses_pass(address):
    assert why_not_public(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("url, named", [
    ("http://[2002:7f00:1::1]:8188/prompt", "127.0.0.1"),
    ("http://[::ffff:a9fe:a9fe]/latest/meta-data/", "169.254.169.254"),
    ("http://0x7f.1/x.png", "127.0.0.1"),  # the resolver reads hex/short forms as 127.0.0.1
    ("http://2130706433/x.png", "127.0.0.1"),
    ("https://metadata.google.internal./computeMetadata/v1/", "metadata"),
])
def test_disguised_private_urls_are_refused(url, named):
    with pytest.raises(UnsafeURL) as caught:
        check_url(url)
    assert named in caught.value.message and "ALLOW_PRIVATE_URLS" in caught.value.message


def test_allow_private_urls_lets_them_through_with_the_addresses_checked():
    checked = check_url("http://[::1]:9/x", allow_private=True)
    assert checked.addresses == (ipaddress.ip_address("::1"),) and checked.port == 9


@pytest.mark.parametrize("url, named", [
    ("http://user:pw@example.com/x", "user:password"),
    ("http:///x", "no host"),
    ("gopher://example.com/", "scheme 'gopher'"),
    ("http://example.com:99999/", "malformed"),
])
def test_malformed_or_credentialed_urls_are_refused(url, named):
    with pytest.raises(UnsafeURL, match=named):
        check_url(url)
