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
POSTGRES_OPERATIONS = Counter("pgjit_postgres_operations_total",
                              "Engine operations by kind and outcome", ["operation", "outcome"])
DRIFT_CORRECTED = Counter(
    "pgjit_drift_corrected_total",
    "Users found holding memberships or privileges no session granted, and corrected",
    ["where"])


@contextmanager
def reconcile(controller: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    except kopf.TemporaryError:
        RECONCILE_TOTAL.labels(controller, "requeue_after").inc()
        raise
    except kopf.PermanentError:
        RECONCILE_TOTAL.labels(controller, "error").inc()
        TERMINAL_ERRORS.labels(controller).inc()
        raise
    except Exception:
        RECONCILE_TOTAL.labels(controller, "error").inc()
        RECONCILE_ERRORS.labels(controller).inc()
        raise
    else:
        RECONCILE_TOTAL.labels(controller, "success").inc()
    finally:
        RECONCILE_TIME.labels(controller).observe(time.monotonic() - started)


def serve(port: int) -> None:
    start_http_server(port)
