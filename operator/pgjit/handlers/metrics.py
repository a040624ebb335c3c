"""Prometheus metrics in controller-runtime's naming, so existing dashboards and alerts apply.

Kopf has no metrics of its own. Labels are low-cardinality: the controller (kind) and the
outcome, never an object or user name.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import kopf
from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILE_TOTAL = Counter("controller_runtime_reconcile_total",
                          "Reconciliations per controller and result", ["controller", "result"])
RECONCILE_ERRORS = Counter("controller_runtime_reconcile_errors_total",
                           "Reconciliations that ended in an error", ["controller"])
TERMINAL_ERRORS = Counter("controller_runtime_terminal_reconcile_errors_total",
                          "Reconciliations that ended in a permanent error", ["controller"])
RECONCILE_TIME = Histogram("controller_runtime_reconcile_time_seconds",
                           "Time per reconciliation", ["controller"])
ACTIVE_SESSIONS = Gauge("pgjit_active_sessions", "DatabaseSessions currently Active")
PROVISIONING_LATENCY = Histogram(
    "pgjit_session_provisioning_seconds",
    "From DatabaseSession creation to Active (credentials written)",
    buckets=(0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
WAITING_FOR_SLOT = Gauge(
    "pgjit_sessions_waiting_for_slot",
    "DatabaseSessions waiting for a free slot of their Database to be opened (step=open, "
    "PGJIT_CONCURRENT_OPENINGS) or ended (step=end, PGJIT_CONCURRENT_ENDINGS)", ["step"])
#: Read from the index of sessions at each scrape (handlers/approvals.py sets the function).
AWAITING_APPROVAL = Gauge("pgjit_sessions_awaiting_approval",
                          "DatabaseSessions waiting for reviewers' approval")
APPROVAL_LATENCY = Histogram(
    "pgjit_session_approval_seconds",
    "From DatabaseSession creation to the approval that completed it",
    buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400))
POSTGRES_OPERATIONS = Counter("pgjit_postgres_operations_total",
                              "Engine operations by kind and outcome", ["operation", "outcome"])
LEADER = Gauge("pgjit_leader",
                "1 while this process holds the leader-election Lease and acts, 0 while it "
                "stands by")
DRIFT_CORRECTED = Counter(
    "pgjit_drift_corrected_total",
    "Users found holding memberships or privileges no session granted, and corrected",
    ["where"])


class Reconciliation:
    """What a handler tells :func:`reconcile` besides raising.

    pgjit's handlers end most terminal failures by writing them into the status (a Failed
    session, an invalid Role) and returning, so that Kopf does not retry them; only the handler
    knows that the reconciliation failed for good.
    """

    def __init__(self) -> None:
        self.terminal = False

    def failed_terminally(self) -> None:
        self.terminal = True


@contextmanager
def reconcile(controller: str) -> Iterator[Reconciliation]:
    """Count and time one reconciliation, as controller-runtime does.

    A terminal failure (:meth:`Reconciliation.failed_terminally`, or ``kopf.PermanentError``)
    counts as ``result="error"`` and a terminal error (docs/operations.md, Metrics).
    """
    started = time.monotonic()
    reconciliation = Reconciliation()
    try:
        yield reconciliation
    except kopf.TemporaryError:
        RECONCILE_TOTAL.labels(controller, "requeue_after").inc()
        raise
    except kopf.PermanentError:
        _count_error(controller, terminal=True)
        raise
    except Exception:
        _count_error(controller, terminal=False)
        raise
    else:
        if reconciliation.terminal:
            _count_error(controller, terminal=True)
        else:
            RECONCILE_TOTAL.labels(controller, "success").inc()
    finally:
        RECONCILE_TIME.labels(controller).observe(time.monotonic() - started)


def _count_error(controller: str, *, terminal: bool) -> None:
    # Terminal failures are decided outcomes (a refused session), not the unexpected errors
    # that operations.md alerts on, so they stay out of RECONCILE_ERRORS.
    RECONCILE_TOTAL.labels(controller, "error").inc()
    (TERMINAL_ERRORS if terminal else RECONCILE_ERRORS).labels(controller).inc()


_serving: set[int] = set()


def serve(port: int) -> None:
    """Start the metrics endpoint once per process: the runner starts it before the election
    (a standby reports pgjit_leader 0), and Kopf's startup, which may run again, finds it up."""
    if port not in _serving:
        start_http_server(port)
        _serving.add(port)
