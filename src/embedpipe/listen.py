"""Where the CLI's local servers listen: port parsing, the loopback rule and bind errors.

The dashboard serves the text of every chunk, without authentication. It listens on loopback unless
the user asks for another address and says so twice (``--host`` and ``--allow-remote``).
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from embedpipe.errors import ConfigError

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def parse_port(value: str | int, flag: str = "--port") -> int:
    """A TCP port from a flag: 1-65535, or 0 for any free one.

    Raises:
        ConfigError: Not a number, or outside 0-65535.
    """
    text = str(value).strip()
    if not text.isdigit() or int(text) > 65535:
        raise ConfigError(f"{flag}={value}: expected a TCP port 1-65535 (or 0 for any free one)")
    return int(text)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback only: 127.0.0.0/8, ::1 or localhost."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to any interface


def require_exposure_allowed(host: str, allow_remote: bool, what: str) -> None:
    """Refuse a non-loopback address unless ``--allow-remote`` was given.

    Args:
        host: The address to bind.
        allow_remote: Whether ``--allow-remote`` was given.
        what: What becomes visible, for the message (e.g. "the text of every chunk").

    Raises:
        ConfigError: ``host`` is not loopback and ``allow_remote`` is not set.
    """
    if not is_loopback(host) and not allow_remote:
        raise ConfigError(
            f"--host={host} is not a loopback address: anyone who can reach it would see {what}, "
            "without a password. Use the default (127.0.0.1) and an SSH tunnel, or pass --allow-remote"
        )


def exposure_warning(host: str, port: int, what: str) -> str | None:
    """The stderr warning of a server listening beyond loopback (``None`` on loopback)."""
    if is_loopback(host):
        return None
    return (
        f"embedpipe: warning: serving on {host}:{port}: {what} will be visible to anyone who can "
        "reach this address (no authentication)"
    )


def bind_error(host: str, port: int, e: OSError) -> ConfigError:
    """A one-line error for a server that cannot listen on ``host:port``."""
    if e.errno == errno.EADDRINUSE:
        why = "the port is already in use; pick another with --port (0: any free one)"
    elif e.errno == errno.EACCES:
        why = "permission denied (ports below 1024 need privileges); pick a port above 1023"
    elif isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:
        why = "no such address on this machine; pass one of its addresses, or 127.0.0.1"
    else:
        why = f"{type(e).__name__}: {e.strerror or e}"
    return ConfigError(f"cannot listen on host={host} port={port}: {why}")


def family(host: str) -> socket.AddressFamily:
    """The address family to bind ``host`` with (IPv6 for an IPv6 literal)."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET
