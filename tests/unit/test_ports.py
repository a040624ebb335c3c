"""The test beds' port picker: distinct ports, free when returned, in the range asked for."""

import itertools
import socket

import pytest

from pgjit.devstack import ports
from pgjit.devstack.ports import BELOW_EPHEMERAL, free_ports


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((ports.HOST, port))
        except OSError:
            return False
        return True


@pytest.mark.parametrize("bound_later", [False, True])
def test_ports_are_distinct_and_free(bound_later: bool) -> None:
    chosen = free_ports(300, bound_later=bound_later)
    assert len(set(chosen)) == 300
    assert all(_bindable(port) for port in chosen)


def test_ports_bound_later_are_below_the_ephemeral_range() -> None:
    low, high = BELOW_EPHEMERAL
    assert all(low <= port <= high for port in free_ports(50, bound_later=True))


def test_a_port_drawn_twice_or_taken_is_skipped(monkeypatch) -> None:
    with socket.socket() as taken:
        taken.bind((ports.HOST, 0))
        busy = taken.getsockname()[1]
        free = free_ports(2)
        draws = itertools.chain([busy, free[0], free[0]], itertools.repeat(free[1]))
        monkeypatch.setattr(ports.random, "randint", lambda low, high: next(draws))
        assert free_ports(2, bound_later=True) == free


def test_no_free_port_is_an_error_not_a_hang(monkeypatch) -> None:
    with socket.socket() as taken:
        taken.bind((ports.HOST, 0))
        busy = taken.getsockname()[1]
        monkeypatch.setattr(ports.random, "randint", lambda low, high: busy)
        with pytest.raises(RuntimeError, match="free ports"):
            free_ports(1, bound_later=True)
