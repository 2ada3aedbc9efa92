"""HOST:PORT text, both ways: `host:port`, `[v6]:port`, and the forms the CLI also allows.

One parser for every place an address is read (CLI options, config files, records, dialling),
so IPv6 in brackets works everywhere or nowhere.
"""

from __future__ import annotations

import functools
import ipaddress

# A DNS name is at most 253 characters; an address in a record or an option is never longer.
MAX_HOST_LEN = 253


class AddressError(ValueError):
    """Text that is not HOST:PORT; the message says why, for the user."""


def parse_host_port(
    text: str, *, default_host: str | None = None, allow_port_zero: bool = False
) -> tuple[str, int]:
    """(host, port) from `HOST:PORT` or `[IPv6]:PORT`; with *default_host*, also `:PORT`/`PORT`.

    The host comes back without brackets. Raises `AddressError`.
    """
    raw = text.strip()
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0 or raw[end + 1 : end + 2] != ":":
            raise AddressError(f"{text!r} is not HOST:PORT")
        host, port = raw[1:end], raw[end + 2 :]
        if not is_ip(host) or ":" not in host:
            raise AddressError(f"{text!r}: {host!r} in brackets is not an IPv6 address")
    else:
        host, sep, port = raw.rpartition(":")
        if not sep:
            host, port = "", raw
        if ":" in host:
            raise AddressError(f"{text!r}: write an IPv6 address in brackets, [ADDRESS]:PORT")
    if not host:
        if default_host is None:
            raise AddressError(f"{text!r} is not HOST:PORT")
        host = default_host
    if len(host) > MAX_HOST_LEN or any(c.isspace() for c in host):
        raise AddressError(f"{text!r}: not a host name or address")
    lowest = 0 if allow_port_zero else 1
    if not port.isdigit() or not lowest <= int(port) <= 65535:
        raise AddressError(f"{text!r}: the port must be a number from {lowest} to 65535")
    return host, int(port)


def format_host_port(host: str, port: int) -> str:
    """The inverse of `parse_host_port`: brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@functools.lru_cache(maxsize=4096)
def is_ip(text: str) -> bool:
    """True for an IPv4 or IPv6 address literal (no brackets), not for a DNS name."""
    if len(text) > 64:
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
