"""Free TCP ports on 127.0.0.1 for the brokers, web and SQL endpoints that tests and benchmarks start."""

from __future__ import annotations

import socket
from contextlib import ExitStack

LOOPBACK = "127.0.0.1"


def free_ports(n: int) -> list[int]:
    """n distinct free ports on 127.0.0.1; every socket is held until all are chosen so none repeats."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((LOOPBACK, 0))
        return [int(s.getsockname()[1]) for s in socks]


def broker_ports(extra: int, tries: int = 50) -> list[int]:
    """A broker's client port whose next port is free too (its controller's: KafkaBroker takes port + 1
    unless told), then `extra` more distinct free ports."""
    for _ in range(tries):
        with ExitStack() as stack:
            socks = [stack.enter_context(socket.socket()) for _ in range(extra + 1)]
            for s in socks:
                s.bind((LOOPBACK, 0))
            ports = [int(s.getsockname()[1]) for s in socks]
            if ports[0] + 1 in ports:
                continue
            try:
                stack.enter_context(socket.socket()).bind((LOOPBACK, ports[0] + 1))
            except OSError:
                continue
            return ports
    raise OSError(f"no free pair of ports for a broker in {tries} tries")
