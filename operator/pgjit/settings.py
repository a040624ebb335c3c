"""The operator's settings: one typed object, read from the environment once, at start.

``pgjit run`` builds :class:`Settings` with :meth:`Settings.load` (environment variables, then the
command line's flags over them), refuses to start on an invalid value, and hands the object to
Kopf in the operator's memo (``handlers.settings.OperatorMemo``). Nothing else reads
``PGJIT_*`` variables, and nothing writes ``os.environ``: a value passed through the environment
from one module to another is a value no type checker and no reader can follow.

Every field names its variable and says what it means (``docs/operations.md`` shows the same,
and ``tests/unit/test_docs.py`` checks the two agree by iterating :func:`fields`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Settings", "SettingsError", "Setting", "fields", "STEWARD_LIMIT"]

#: The most steward roles PGJIT_STEWARD_ROLES may ask for: their names end in two digits, and
#: core/stewards.py looks users up across all of them, so lowering the count strands no user.
STEWARD_LIMIT = 100


class SettingsError(ValueError):
    """A setting has a value the operator cannot run with; the message names the variable."""


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a positive number of seconds")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _steward_count(text: str) -> int:
    value = int(text)
    if not 0 <= value <= STEWARD_LIMIT:
        raise ValueError(f"must be 0 to {STEWARD_LIMIT}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise ValueError("must be a TCP port (1-65535)")
    return value


def _flag(text: str) -> bool:
    # The chart writes "true"/"false"; anything that reads as "off" turns the setting off.
    return text.strip().lower() not in ("false", "0", "no", "off")


def _duration(text: str) -> float:
    """Seconds, as a number or a Go-style duration of seconds or minutes (``15``, ``15s``,
    ``1.5s``, ``1m``): the chart's leaderElection values are written the way
    controller-runtime's flags are."""
    stripped = text.strip()
    scale = 1.0
    if stripped.endswith("ms"):
        stripped, scale = stripped[:-2], 0.001
    elif stripped.endswith("m"):
        stripped, scale = stripped[:-1], 60.0
    elif stripped.endswith("s"):
        stripped = stripped[:-1]
    return _seconds(stripped) * scale


def _present(text: str) -> bool:
    return bool(text)


def _text(text: str) -> str | None:
    return text or None


def _setting(variable: str, parse: Callable[[str], Any], default: Any, doc: str) -> Any:
    return field(default=default, metadata={"variable": variable, "parse": parse, "doc": doc})


@dataclass(frozen=True)
class Setting:
    """One field of :class:`Settings` as the documentation shows it."""

    name: str
    variable: str
    default: Any
    doc: str


@dataclass(frozen=True)
class Settings:
    """Everything the operator process is configured with."""

    health_seconds: float = _setting(
        "PGJIT_HEALTH_SECONDS", _seconds, 60.0,
        "Seconds between health checks of each Database (login, privileges, read-only), each "
        "followed by a sweep for managed users without a live session.")
    revalidate_seconds: float = _setting(
        "PGJIT_REVALIDATE_SECONDS", _seconds, 30.0,
        "Seconds between re-evaluations of Active sessions against the Roles; a session no Role "
        "allows any more ends with AccessRevoked.")
    expiry_tick_seconds: float = _setting(
        "PGJIT_EXPIRY_TICK_SECONDS", _seconds, 1.0,
        "Seconds between the lease loop's looks for expired sessions: the precision of expiry, "
        "and how soon a Database's activeSessions follows its sessions.")
    traits_configmap: str | None = _setting(
        "PGJIT_TRAITS_CONFIGMAP", _text, None,
        "Name of the ConfigMap holding internal traits (unset: no internal traits).")
    namespace: str | None = _setting(
        "PGJIT_NAMESPACE", _text, None,
        "The operator's own namespace, where the traits ConfigMap and the leader-election Lease "
        "are (the chart sets it).")
    prepared_statements: bool = _setting(
        "PGJIT_PREPARED_STATEMENTS", _flag, True,
        "Whether the catalog reads every activation starts with are prepared once per admin "
        "connection (planned once instead of every time); turn off behind a pooler in "
        "transaction mode that does not track prepared statements (PgBouncer before 1.21).")
    steward_roles: int = _setting(
        "PGJIT_STEWARD_ROLES", _steward_count, 64,
        "On PostgreSQL 16+, how many NOLOGIN steward roles create and administer the users, so "
        "that the admin's own checks do not slow down with every user alive (0: the admin "
        "does it itself). Ignored on 15 and for a superuser admin.")
    secret_access: bool = _setting(
        "PGJIT_SECRET_ACCESS", _flag, True,
        "Whether each session's user gets get on exactly its credentials Secret (a Role and "
        "RoleBinding named like the Secret).")
    threads: int = _setting(
        "PGJIT_THREADS", _positive_int, 16,
        "Worker threads for blocking work off the event loop (password hashing, the readiness "
        "check); Kubernetes API calls run on the event loop.")
    concurrent_openings: int = _setting(
        "PGJIT_CONCURRENT_OPENINGS", _positive_int, 64,
        "Sessions of one Database opened at once; more wait their turn in arrival order, so "
        "pgjit's work on a burst holds memory for this many, not for all (handlers/slots.py).")
    opening_queue: int = _setting(
        "PGJIT_OPENING_QUEUE", _positive_int, 1024,
        "Sessions of one Database that wait in the operator for an opening slot; past them a "
        "new session is queued in its status (Pending, Queued), holding no memory, and the "
        "Database's lease loop hands it back in arrival order (handlers/queue.py).")
    concurrent_endings: int = _setting(
        "PGJIT_CONCURRENT_ENDINGS", _positive_int, 64,
        "Sessions of one Database ended at once, apart from the openings, so that a mass "
        "deletion or expiry holds pgjit's memory for this many, not for all (handlers/slots.py).")
    metrics_port: int | None = _setting(
        "PGJIT_METRICS_PORT", _port, None,
        "Port of the Prometheus metrics endpoint (unset: none); pgjit run --metrics-port sets it.")
    namespaced: bool = _setting(
        "PGJIT_NAMESPACED", _present, False,
        "Whether only some namespaces are watched, which turns off Kopf's cluster-wide namespace "
        "scanning; pgjit run -n sets it.")
    tracemalloc_file: str | None = _setting(
        "PGJIT_TRACEMALLOC_FILE", _text, None,
        "Opt-in memory profiling (make bench-profile): tracemalloc runs from the start, and each "
        "SIGUSR2 writes the top allocation sites to this file (unset: off; slows the operator).")
    pod_name: str = _setting(
        "POD_NAME", lambda text: text or "pgjit", "pgjit",
        "The operator's pod, named as the reporting instance of its Events (the chart sets it).")
    pod_ip: str | None = _setting(
        "POD_IP", _text, None,
        "The pod's IP, where a standby finds the leader's readiness port to tell a dead leader "
        "from a slow one (the chart sets it; unset: the --readiness URL's host).")
    leader_election_lease: str | None = _setting(
        "PGJIT_LEADER_ELECTION_LEASE", _text, None,
        "Name of the coordination.k8s.io Lease, in PGJIT_NAMESPACE, that the replicas elect "
        "their leader with; only the leader watches and acts (unset: no election, the process "
        "acts at once).")
    lease_duration_seconds: float = _setting(
        "PGJIT_LEADER_ELECTION_LEASE_DURATION", _duration, 15.0,
        "Seconds a standby waits after the leader's last renewal before taking the Lease over "
        "(controller-runtime's leaseDuration).")
    renew_deadline_seconds: float = _setting(
        "PGJIT_LEADER_ELECTION_RENEW_DEADLINE", _duration, 10.0,
        "Seconds the leader may go without a successful renewal before it exits, so that it "
        "has stopped before a standby may take over (controller-runtime's renewDeadline).")
    retry_period_seconds: float = _setting(
        "PGJIT_LEADER_ELECTION_RETRY_PERIOD", _duration, 2.0,
        "Seconds between the leader's renewals and between a standby's attempts "
        "(controller-runtime's retryPeriod).")
    leader_probe: bool = _setting(
        "PGJIT_LEADER_ELECTION_PROBE", _flag, True,
        "Whether a standby takes over before leaseDuration when the leader has missed two "
        "renewals and its readiness port proves its process gone (connection refused, or "
        "another process answering).")
    shard_database_selector: str | None = _setting(
        "PGJIT_SHARD_DATABASE_SELECTOR", _text, None,
        "Serve only the Databases this label selector matches, and their sessions (a "
        "LabelSelector as JSON, or the kubectl -l syntax; unset: every Database).")

    @classmethod
    def load(cls, environ: Mapping[str, str], **overrides: Any) -> "Settings":
        """Read every setting from ``environ``; ``overrides`` (the command line's flags, where
        given and not None) win. Raises :class:`SettingsError` naming the bad variable."""
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            variable = item.metadata["variable"]
            if variable in environ:
                try:
                    values[item.name] = item.metadata["parse"](environ[variable])
                except ValueError as exc:
                    raise SettingsError(f"{variable}={environ[variable]!r}: {exc}") from None
        values.update({key: value for key, value in overrides.items() if value is not None})
        settings = cls(**values)
        settings._check_leader_election()
        return settings

    def _check_leader_election(self) -> None:
        """controller-runtime's own checks: the leader must give up (renewDeadline) before a
        standby may take over (leaseDuration), and try more than once before giving up."""
        if self.shard_database_selector and not self.leader_election_lease:
            raise SettingsError("PGJIT_SHARD_DATABASE_SELECTOR needs PGJIT_LEADER_ELECTION_LEASE: "
                                "shards find each other by their Leases, to report what none "
                                "serves")
        if not self.leader_election_lease:
            return
        if not self.namespace:
            raise SettingsError("PGJIT_LEADER_ELECTION_LEASE needs PGJIT_NAMESPACE (the Lease's "
                                "namespace)")
        if self.lease_duration_seconds <= self.renew_deadline_seconds:
            raise SettingsError(
                f"PGJIT_LEADER_ELECTION_LEASE_DURATION ({self.lease_duration_seconds:g}s) must be "
                f"longer than PGJIT_LEADER_ELECTION_RENEW_DEADLINE "
                f"({self.renew_deadline_seconds:g}s)")
        if self.renew_deadline_seconds <= 1.2 * self.retry_period_seconds:
            raise SettingsError(
                f"PGJIT_LEADER_ELECTION_RENEW_DEADLINE ({self.renew_deadline_seconds:g}s) must be "
                f"longer than 1.2 x PGJIT_LEADER_ELECTION_RETRY_PERIOD "
                f"({self.retry_period_seconds:g}s)")

    @property
    def traits_configmap_ref(self) -> tuple[str, str] | None:
        """(namespace, name) of the traits ConfigMap, when both are set."""
        if self.traits_configmap and self.namespace:
            return self.namespace, self.traits_configmap
        return None


def fields() -> list[Setting]:
    """The settings as documented: field name, variable, default and meaning."""
    return [Setting(item.name, item.metadata["variable"], item.default, item.metadata["doc"])
            for item in dataclasses.fields(Settings)]
