"""Free ports for the servers the test beds start on the loopback address."""

from __future__ import annotations

import contextlib
import random
import socket

HOST = "127.0.0.1"
# Linux hands out ports for bind-to-0 from 32768-60999 (net.ipv4.ip_local_port_range).
BELOW_EPHEMERAL = (20000, 32000)


def free_ports(count: int, *, bound_later: bool = False) -> list[int]:
    """`count` distinct ports that are free now; a server may still lose a race for one.

    Every port stays bound until all are chosen: two bind-to-0 calls, each closed before
    the next, may get the same port back, and CI once got readiness.port == metrics.port.
    Ports a server binds only minutes later (chart values chosen when a test module loads)
    come from below the ephemeral range, since every server started meanwhile binds to 0
    and could take one of them (a kube-apiserver once answered the operator's /readyz).
    """
    with contextlib.ExitStack() as held:
        ports: list[int] = []
        attempts = 0
        while len(ports) < count:
            attempts += 1
            if attempts > 200 + count:
                where = f"in {BELOW_EPHEMERAL}" if bound_later else "from the kernel"
                raise RuntimeError(f"no {count} free ports {where}")
            sock = held.enter_context(socket.socket())
            try:
                sock.bind((HOST, random.randint(*BELOW_EPHEMERAL) if bound_later else 0))
            except OSError:
                continue
            ports.append(sock.getsockname()[1])
        return ports


def free_port(*, bound_later: bool = False) -> int:
    return free_ports(1, bound_later=bound_later)[0]
