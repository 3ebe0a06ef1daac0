"""Free loopback ports for tests that start real servers (shared by e2e and console tests)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port free for both TCP and UDP right now (DC-09 binds both)."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")
