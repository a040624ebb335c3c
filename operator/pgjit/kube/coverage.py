"""The coverage report: what no shard serves is said so, on the objects themselves.

Sharded instances (core/sharding.py) watch only their own Databases and those Databases'
sessions, so a Database that no instance's selector matches, and the sessions on it, would get
no status at all: to the user, a session that hangs. Every instance publishes its selector in its
leader-election Lease (annotation ``pgjit.dev/shard-selector``); the leader of the instance whose
Lease sorts first (``namespace/name``) reads them all every ``PGJIT_HEALTH_SECONDS`` and:

- gives each Database no selector matches ``Ready=False``/``Stalled=True``, reason
  ``NotServed``, with the instances and their selectors in the message, and a Warning Event;
- does the same to every session no shard can watch: one whose Database is not served or does not
  exist, or whose ``<namespace>.<Database>`` does not fit a label value. It finds them with one
  server-side filtered list, ``pgjit.dev/database notin (<every served Database>)``, so the cost
  is that of the unserved sessions, not of all sessions;
- labels the sessions that lack ``pgjit.dev/database`` (created before the chart's mutating
  admission policy, or on a cluster without it), so that their shard sees them;
- writes each valid Role's ``status.selectedDatabases`` from all Databases: every shard sees only
  its own, so the shards leave that field to this report.

Writes are conditional on the object's resourceVersion: a shard that has just started serving a
Database and written a session's status wins over a report computed a moment earlier. Nothing is
done while no instance is sharded.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from .. import GROUP, VERSION
from ..api.role import Role
from ..core import conditions
from ..core.sharding import (SESSION_DATABASE_LABEL, Instance, database_label_value,
                             live_instances, not_served_message)
from ..vocabulary import TERMINAL_PHASES, Reason, SessionPhase
from .leadership import LEASE_LABEL, SHARD_ANNOTATION
from .transport import ApiError, Conflict, Forbidden, NotFound, RestClient

log = logging.getLogger("pgjit.coverage")


class CoverageReport:
    def __init__(self, rest: RestClient, *, lease: str, namespace: str,
                 reporting_instance: str, watched: list[str] | None = None):
        self.rest = rest
        self.lease_id = f"{namespace}/{lease}"
        self.namespace = namespace
        self.reporting_instance = reporting_instance
        #: The namespaces this instance watches (None: all), the only ones it may list.
        self.watched = watched
        self._overlaps_logged: set[str] = set()

    # -- reading ---------------------------------------------------------------------------

    def _leases(self) -> list[dict[str, Any]]:
        params = {"labelSelector": f"{LEASE_LABEL}=true"}
        try:
            listed = self.rest.request("GET", "/apis/coordination.k8s.io/v1/leases",
                                       params=params)
        except Forbidden:
            # A namespaced installation may list Leases in its own namespace only: it then
            # sees the instances installed there.
            listed = self.rest.request(
                "GET", f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases",
                params=params)
        return listed["items"]

    def _list(self, plural: str, label_selector: str = "") -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        api = f"/apis/{GROUP}/{VERSION}"
        paths = ([f"{api}/{plural}"] if self.watched is None else
                 [f"{api}/namespaces/{namespace}/{plural}" for namespace in self.watched])
        return [item for path in paths
                for item in self.rest.request("GET", path, params=params, timeout=60)["items"]]

    # -- one pass --------------------------------------------------------------------------

    def run_once(self) -> dict[str, int]:
        """One report, if this instance is the one to write it; counts of what it did."""
        done = {"databases": 0, "sessions": 0, "labelled": 0, "roles": 0}
        instances = live_instances(self._leases(), datetime.now(timezone.utc), SHARD_ANNOTATION)
        if not instances or instances[0].lease != self.lease_id:
            return done
        if not any(instance.selector.sharded for instance in instances):
            return done
        databases = self._list("databases")
        served: set[tuple[str, str]] = set()
        existing: set[tuple[str, str]] = set()
        for body in databases:
            metadata = body["metadata"]
            key = (metadata["namespace"], metadata["name"])
            existing.add(key)
            labels = metadata.get("labels") or {}
            matched = [i for i in instances if i.selector.matches(labels)]
            if len(matched) > 1 and "/".join(key) not in self._overlaps_logged:
                self._overlaps_logged.add("/".join(key))
                log.warning("Database %s/%s is served by more than one instance: %s", *key,
                            ", ".join(i.describe() for i in matched))
            if matched:
                served.add(key)
            elif self._report(body, "databases", not_served_message(
                    key[0], key[1], labels, instances)):
                done["databases"] += 1
        values = sorted(v for ns, name in served if (v := database_label_value(ns, name)))
        selector = f"{SESSION_DATABASE_LABEL} notin ({','.join(values)})" if values else ""
        labels_of = {(b["metadata"]["namespace"], b["metadata"]["name"]):
                     b["metadata"].get("labels") or {} for b in databases}
        for body in self._list("databasesessions", label_selector=selector):
            self._session(body, existing, served, labels_of, instances, done)
        done["roles"] = self._role_selections(databases)
        if any(done.values()):
            log.info("Coverage report: %s", done)
        return done

    def _session(self, body: dict[str, Any], existing: set[tuple[str, str]],
                 served: set[tuple[str, str]], labels_of: dict[tuple[str, str], dict[str, str]],
                 instances: list[Instance], done: dict[str, int]) -> None:
        if (body.get("status") or {}).get("phase") in TERMINAL_PHASES:
            return
        metadata = body["metadata"]
        namespace = metadata["namespace"]
        database = ((body.get("spec") or {}).get("databaseRef") or {}).get("name") or ""
        value = database_label_value(namespace, database)
        if value is not None and SESSION_DATABASE_LABEL not in (metadata.get("labels") or {}):
            # Its shard selects sessions by this label; with it, the shard sees it.
            self._patch("databasesessions", namespace, metadata["name"],
                        {"metadata": {"labels": {SESSION_DATABASE_LABEL: value},
                                      "resourceVersion": metadata["resourceVersion"]}})
            done["labelled"] += 1
            return
        key = (namespace, database)
        if key in served and value is not None and \
                (metadata.get("labels") or {}).get(SESSION_DATABASE_LABEL) == value:
            return  # its shard has it (listed between a Database's arrival and this pass)
        message = not_served_message(namespace, database, labels_of.get(key), instances,
                                     exists=key in existing)
        if self._report(body, "databasesessions", message, phase=SessionPhase.PENDING):
            done["sessions"] += 1

    def _report(self, body: dict[str, Any], plural: str, message: str, *,
                phase: SessionPhase | None = None) -> bool:
        """Write NotServed (and post an Event) unless the object says so already."""
        metadata, status = body["metadata"], body.get("status") or {}
        ready = conditions.find_condition(status.get("conditions"), "Ready") or {}
        if ready.get("reason") == Reason.NOT_SERVED and ready.get("message") == message:
            return False
        new_status: dict[str, Any] = {"conditions": conditions.stalled(
            status.get("conditions"), metadata.get("generation"), Reason.NOT_SERVED, message)}
        if phase is not None and not status.get("phase"):
            new_status["phase"] = phase
        if not self._patch(plural, metadata["namespace"], metadata["name"],
                           {"metadata": {"resourceVersion": metadata["resourceVersion"]},
                            "status": new_status}, status=True):
            return False
        if ready.get("reason") != Reason.NOT_SERVED:
            self._event(body, message)
        return True

    def _patch(self, plural: str, namespace: str, name: str, patch: dict[str, Any], *,
               status: bool = False) -> bool:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}/{name}" + (
            "/status" if status else "")
        try:
            self.rest.request("PATCH", path, patch,
                              content_type="application/merge-patch+json")
        except (NotFound, Conflict):
            return False  # gone, or changed since the list: the next pass looks again
        return True

    def _event(self, body: dict[str, Any], message: str) -> None:
        metadata = body["metadata"]
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "metadata": {"generateName": f"{metadata['name']}.", "namespace": metadata["namespace"]},
            "involvedObject": {"apiVersion": body["apiVersion"], "kind": body["kind"],
                               "name": metadata["name"], "namespace": metadata["namespace"],
                               "uid": metadata["uid"]},
            "reason": Reason.NOT_SERVED.value, "message": message[:1024], "type": "Warning",
            "source": {"component": "pgjit"}, "reportingComponent": "pgjit",
            "reportingInstance": self.reporting_instance, "firstTimestamp": now,
            "lastTimestamp": now, "count": 1}
        try:
            self.rest.request("POST", f"/api/v1/namespaces/{metadata['namespace']}/events",
                              event)
        except ApiError as error:
            log.warning("Posting the NotServed Event failed: %s", error)

    def _role_selections(self, databases: list[dict[str, Any]]) -> int:
        written = 0
        for body in self._list("roles"):
            status = body.get("status") or {}
            ready = conditions.find_condition(status.get("conditions"), "Ready") or {}
            if ready.get("reason") != Reason.VALID:
                continue  # not validated yet, or invalid: its shard's handler reports that
            try:
                role = Role.model_validate(body)
            except ValidationError:
                continue
            namespace = body["metadata"]["namespace"]
            selector = role.spec.allow.database_selector if role.spec.allow else None
            selected = sorted(
                d["metadata"]["name"] for d in databases
                if d["metadata"]["namespace"] == namespace and selector is not None
                and selector.matches(d["metadata"].get("labels") or {}))
            if selected != status.get("selectedDatabases"):
                if self._patch("roles", namespace, body["metadata"]["name"],
                               {"status": {"selectedDatabases": selected}}, status=True):
                    written += 1
        return written

    async def run(self, interval: float) -> None:
        """Report every ``interval`` seconds until cancelled; a failed pass is retried next time."""
        while True:
            try:
                await asyncio.to_thread(self.run_once)
            except Exception as error:  # noqa: BLE001 - the API server may be away
                log.warning("Coverage report failed: %s", error)
            await asyncio.sleep(interval)
