"""Leader election on a ``coordination.k8s.io`` Lease, with controller-runtime's semantics.

Several replicas of the operator run; only the one holding the Lease watches and acts. The
others stand by: they poll the Lease every ``retryPeriod`` and take it over once it has not been
renewed for ``leaseDuration`` (measured on their own monotonic clock from the moment they saw it
change, as client-go does, so clock skew between nodes does not matter).

Fencing, the rule that makes this safe: the leader stops before anyone may start. It counts
``renewDeadline`` (shorter than ``leaseDuration``) from the *start* of its last successful
renewal, and when that passes without another success it exits the process at once
(``os._exit``, as controller-runtime does), whatever it was doing: nothing it holds in memory
may be acted on after a standby could have taken over. Three things enforce the deadline, so
that neither a slow API server, nor a blocked event loop, nor a stopped process escapes it:

- the renewal thread, after each attempt;
- a watchdog thread that compares the clock with the last renewal every quarter second;
- a ``SIGCONT`` handler: a process stopped (SIGSTOP, a frozen VM, a partition that suspended it)
  and resumed runs it first thing, before its event loop goes on with stale state.

All of this runs in threads of its own with their own API connection pool, not on the event
loop and not in the thread pool the handlers use: a burst of sessions must not delay a renewal.

Early takeover (pgjit's addition, ``PGJIT_LEADER_ELECTION_PROBE``): a leader killed with
SIGKILL or by the OOM killer releases nothing, so a standby would wait the full
``leaseDuration``. The leader therefore publishes its readiness endpoint in the Lease
(annotation ``pgjit.dev/leader-endpoint``). A standby that has seen no renewal for two retry
periods asks that endpoint who it is; it takes over early only on proof that the holder's
process is gone: the connection is refused (nothing listens on the leader's port at the
leader's address any more) or another process answers (the container was restarted). A timeout
or any other error proves nothing, and the standby waits out the lease as usual; a leader that
is merely partitioned or stopped never gets here, because its port still accepts connections
(the kernel does that for a stopped process) but does not answer.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .transport import Conflict, NotFound, RestClient

log = logging.getLogger("pgjit.leadership")

#: Where the holder's readiness endpoint is published, for a standby's probe.
ENDPOINT_ANNOTATION = "pgjit.dev/leader-endpoint"
#: The shard selector of the instance holding the Lease (for the coverage report).
SHARD_ANNOTATION = "pgjit.dev/shard-selector"
#: Every pgjit leader-election Lease carries it: how instances find each other's Leases.
LEASE_LABEL = "pgjit.dev/leader-election"
#: A standby acquiring waits retryPeriod times up to this much more, so that several standbys
#: do not all ask at once.
JITTER = 0.2
#: A standby probes the holder only after this many retry periods without a renewal.
MISSED_RENEWALS = 2
PROBE_TIMEOUT = 1.0


def micro_time(moment: datetime | None = None) -> str:
    """A MicroTime as the API server writes it."""
    moment = moment or datetime.now(timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_identity(pod_name: str) -> str:
    """This process's identity: the pod name for people, a random part so that a restarted
    container (same pod name) is never mistaken for the process that held the Lease."""
    return f"{pod_name}_{uuid.uuid4().hex[:10]}"


class LeaseLost(Exception):
    """Another identity holds the Lease now."""


def exit_now(message: str) -> None:
    """Leave at once: no cleanup handler, no finally block, no pending write may run."""
    log.critical("Leader election lost: %s; exiting so that nothing acts on stale state",
                 message)
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001 - exiting regardless
            pass
    sys.stderr.flush()
    os._exit(1)


@dataclass
class ElectionConfig:
    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    #: The readiness endpoint's /leader URL, published for the standby's probe (None: none).
    endpoint: str | None = None
    probe: bool = True
    annotations: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


class LeaderElector:
    """One process's side of the election. Blocking methods: call them from threads."""

    def __init__(self, rest: RestClient | None, config: ElectionConfig, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_lost: Callable[[str], None] = exit_now,
                 on_reconnected: Callable[[], None] | None = None):
        self.config = config
        #: Called (from the renewal thread) when a renewal succeeds after failed ones: the API
        #: server was away, and watch streams may have missed events meanwhile.
        self.on_reconnected = on_reconnected
        self._renewal_failed = False
        self._rest = rest
        self._clock = clock
        self._on_lost = on_lost
        self._lease: dict[str, Any] | None = None
        #: What this process saw of the Lease last, and when (monotonic): a standby's clock.
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self.holder: str | None = None
        #: Monotonic start of the last successful renewal (or of the acquisition).
        self.last_renewed: float | None = None
        self.leader = False
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lost = threading.Event()

    # -- the API ---------------------------------------------------------------------------

    def _timeout(self) -> float:
        return max(0.5, min(self.config.retry_period, self.config.renew_deadline / 2))

    def _path(self, name: str | None = None) -> str:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{self.config.namespace}/leases"
        return path if name is None else f"{path}/{name}"

    def _get(self) -> dict[str, Any] | None:
        assert self._rest is not None
        try:
            return self._rest.request("GET", self._path(self.config.name),
                                      timeout=self._timeout())
        except NotFound:
            return None

    def _write(self, body: dict[str, Any], *, create: bool) -> dict[str, Any]:
        assert self._rest is not None
        if create:
            return self._rest.request("POST", self._path(), body, timeout=self._timeout())
        return self._rest.request("PUT", self._path(self.config.name), body,
                                  timeout=self._timeout())

    def _claim(self, lease: dict[str, Any] | None) -> dict[str, Any]:
        """The Lease with this process as holder, renewed now."""
        now = micro_time()
        spec = dict((lease or {}).get("spec") or {})
        metadata = dict((lease or {}).get("metadata") or {
            "name": self.config.name, "namespace": self.config.namespace})
        if spec.get("holderIdentity") != self.config.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (
                1 if lease is not None else 0)
        spec.update(holderIdentity=self.config.identity, renewTime=now,
                    leaseDurationSeconds=math.ceil(self.config.lease_duration))
        annotations = {key: value for key, value in (metadata.get("annotations") or {}).items()
                       if key not in (ENDPOINT_ANNOTATION, SHARD_ANNOTATION)}
        annotations.update(self.config.annotations)
        if self.config.endpoint:
            annotations[ENDPOINT_ANNOTATION] = self.config.endpoint
        metadata["annotations"] = annotations
        metadata["labels"] = {**(metadata.get("labels") or {}), LEASE_LABEL: "true",
                              **self.config.labels}
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
                "spec": spec}

    # -- standing by -----------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """One attempt: True when this process holds the Lease now."""
        started = self._clock()
        lease = self._get()
        if lease is None:
            try:
                self._lease = self._write(self._claim(None), create=True)
            except Conflict:
                return False  # another standby created it first
            self._became_leader(started, previous=None)
            return True
        spec = lease.get("spec") or {}
        seen = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("acquireTime"),
                spec.get("leaseTransitions"), lease["metadata"].get("resourceVersion"))
        if seen != self._observed:
            self._observed, self._observed_at = seen, started
        holder = spec.get("holderIdentity") or ""
        self.holder = holder or None
        if holder and holder != self.config.identity:
            unrenewed = started - self._observed_at
            duration = spec.get("leaseDurationSeconds") or math.ceil(self.config.lease_duration)
            if unrenewed < duration:
                if not (self.config.probe
                        and unrenewed >= MISSED_RENEWALS * self.config.retry_period
                        and self._holder_gone(lease, holder)):
                    return False
                log.info("Leader %s missed its renewals for %.1fs and its process is gone: "
                         "taking over before the lease ends", holder, unrenewed)
        try:
            self._lease = self._write(self._claim(lease), create=False)
        except Conflict:
            return False  # renewed, or taken by another standby, since the read
        self._became_leader(started, previous=holder or None)
        return True

    def _holder_gone(self, lease: dict[str, Any], holder: str) -> bool:
        """Whether the holder's process provably no longer exists (see the module doc)."""
        endpoint = (lease["metadata"].get("annotations") or {}).get(ENDPOINT_ANNOTATION)
        if not endpoint:
            return False
        try:
            with urllib.request.urlopen(endpoint, timeout=PROBE_TIMEOUT) as response:
                answer = json.loads(response.read())
        except urllib.error.URLError as error:
            return isinstance(error.reason, ConnectionRefusedError)
        except ConnectionRefusedError:
            return True
        except Exception:  # noqa: BLE001 - a timeout or a garbled answer proves nothing
            return False
        return isinstance(answer, dict) and bool(answer.get("identity")) \
            and answer["identity"] != holder

    def acquire(self, stop: threading.Event) -> bool:
        """Stand by until this process holds the Lease (True) or ``stop`` is set (False)."""
        logged_holder = None
        while not stop.is_set():
            try:
                if self.try_acquire():
                    return True
            except Exception as error:  # noqa: BLE001 - the API server may be away; keep trying
                log.warning("Leader election: reading the Lease %s/%s failed: %s",
                            self.config.namespace, self.config.name, error)
            if self.holder != logged_holder:
                logged_holder = self.holder
                log.info("Standing by: Lease %s/%s is held by %s", self.config.namespace,
                         self.config.name, self.holder)
            stop.wait(self.config.retry_period * (1 + JITTER * random.random()))
        return False

    def _became_leader(self, started: float, *, previous: str | None) -> None:
        self.last_renewed, self.leader, self.holder = started, True, self.config.identity
        log.info("Leader election: this process (%s) holds Lease %s/%s%s",
                 self.config.identity, self.config.namespace, self.config.name,
                 f", taken over from {previous}" if previous else "")

    # -- leading ---------------------------------------------------------------------------

    def renew_once(self) -> None:
        """One renewal; raises LeaseLost when another identity holds the Lease."""
        assert self._lease is not None
        try:
            self._lease = self._write(self._claim(self._lease), create=False)
            return
        except (NotFound, Conflict):
            pass
        # Someone else wrote the Lease (or deleted it): only a fresh read tells whether it is
        # still ours to renew.
        current = self._get()
        holder = ((current or {}).get("spec") or {}).get("holderIdentity")
        if current is not None and holder != self.config.identity:
            raise LeaseLost(f"the Lease is held by {holder or 'nobody'} now")
        self._lease = self._write(self._claim(current), create=current is None)

    def overdue(self) -> bool:
        return self.leader and self.last_renewed is not None and \
            self._clock() - self.last_renewed > self.config.renew_deadline

    def _lose(self, message: str) -> None:
        if not self._lost.is_set():
            self._lost.set()
            self.leader = False
            self._on_lost(message)

    def renew_pass(self) -> bool:
        """One renewal with its bookkeeping; False once leadership is lost (and reported)."""
        started = self._clock()
        try:
            self.renew_once()
            self.last_renewed = started
        except LeaseLost as error:
            self._lose(str(error))
            return False
        except Exception as error:  # noqa: BLE001 - retried until the deadline
            log.warning("Leader election: renewing the Lease failed: %s", error)
            self._renewal_failed = True
        else:
            if self._renewal_failed:
                self._renewal_failed = False
                if self.on_reconnected is not None:
                    self.on_reconnected()
        if self.overdue():
            self._lose(f"no successful renewal for {self.config.renew_deadline:g}s "
                       "(renewDeadline)")
            return False
        return True

    def _renew_loop(self) -> None:
        while not self._stopping.is_set():
            started = self._clock()
            if not self.renew_pass():
                return
            self._stopping.wait(max(0.0, started + self.config.retry_period - self._clock()))

    def _watchdog(self) -> None:
        interval = min(0.25, self.config.retry_period / 4)
        while not self._stopping.wait(interval):
            if self.overdue():
                self._lose(f"the last renewal began more than {self.config.renew_deadline:g}s "
                           "ago (the process was stopped or starved)")
                return

    def _on_sigcont(self, signum: int, frame: object) -> None:
        if self.overdue():
            self._lose("resumed after being stopped for longer than renewDeadline")

    def start_renewing(self) -> None:
        """Renew from now on; call from the main thread (it installs the SIGCONT handler)."""
        signal.signal(signal.SIGCONT, self._on_sigcont)
        for target, name in ((self._renew_loop, "lease-renewal"), (self._watchdog, "lease-watchdog")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def release(self) -> None:
        """Give the Lease up on a clean stop, so a standby takes over at once (controller-
        runtime's ReleaseOnCancel): holder cleared, duration one second."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=self.config.retry_period + 1)
        if not self.leader or self.overdue() or self._lease is None:
            return
        body = self._claim(self._lease)
        body["spec"].update(holderIdentity="", leaseDurationSeconds=1)
        try:
            self._write(body, create=False)
        except Exception as error:  # noqa: BLE001 - the standby then waits out the lease
            log.warning("Leader election: releasing the Lease failed: %s", error)
            return
        self.leader = False
        log.info("Leader election: released Lease %s/%s", self.config.namespace,
                 self.config.name)
