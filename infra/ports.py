"""Free TCP ports on 127.0.0.1 for the brokers, web and SQL endpoints that tests and benchmarks start."""

from __future__ import annotations

import random
import socket
from contextlib import ExitStack
from pathlib import Path

LOOPBACK = "127.0.0.1"
# Ports are drawn below the kernel's ephemeral range: a port chosen there can be taken by any outgoing
# connection (a Kafka client's, say) between choosing it and the service binding it, a minute later.
_LOWEST = 20000
_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_start() -> int:
    try:
        return int(_EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _pool() -> range:
    start = _ephemeral_start()
    return range(_LOWEST, start) if start - _LOWEST >= 1000 else range(_LOWEST, 32768)


def _bind(stack: ExitStack, port: int) -> bool:
    s = stack.enter_context(socket.socket())
    try:
        s.bind((LOOPBACK, port))
    except OSError:
        return False
    return True


def port_run(n: int, tries: int = 500) -> int:
    """The first of n consecutive free ports (services numbered from one base port: web_port + i)."""
    pool = _pool()
    for _ in range(tries):
        base = random.randrange(pool.start, pool.stop - n)
        with ExitStack() as stack:
            if all(_bind(stack, base + i) for i in range(n)):
                return base
    raise OSError(f"no run of {n} free ports in {tries} tries")


def free_ports(n: int) -> list[int]:
    """n distinct free ports on 127.0.0.1; every socket is held until all are chosen so none repeats."""
    pool, out = _pool(), []
    if n <= 0:
        return out
    with ExitStack() as stack:
        for _ in range(100 * n):
            port = random.randrange(pool.start, pool.stop)
            if port not in out and _bind(stack, port):
                out.append(port)
                if len(out) == n:
                    return out
    raise OSError(f"no {n} free ports below the ephemeral range")


def broker_ports(extra: int) -> list[int]:
    """A broker's client port whose next port is free too (its controller's: KafkaBroker takes port + 1
    unless told), then `extra` more distinct free ports."""
    base = port_run(2)
    with ExitStack() as stack:
        for port in (base, base + 1):  # held so the extras differ from the pair
            _bind(stack, port)
        return [base, *free_ports(extra)]
