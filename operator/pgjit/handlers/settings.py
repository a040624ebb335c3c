"""The operator's memo (settings and shared state) and Kopf's own settings, at start."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from .. import GROUP
from ..api.common import KOPF_STATUS_FIELD
from ..kube.client import Kube
from ..kube.engines import EngineRegistry
from ..kube.transport import load_connection
from ..settings import Settings
from . import metrics
from .passwords import SharedPasswords
from .shard import ShardState
from .slots import DatabaseSlots

FINALIZER = f"{GROUP}/finalizer"

#: What of an object's metadata Kopf compares to tell a change (its default essence).
_ESSENTIAL_METADATA = ("labels", "annotations")


class LeanDiffBaseStorage(kopf.StatusDiffBaseStorage):
    """Kopf's diff base in ``status.pgjit``, with the object's essence built from only what
    it keeps.

    Kopf builds the essence (what its update handlers compare, on every watch event) by
    deep-copying the whole object and then deleting its status and most of its metadata:
    managedFields, Kopf's own bookkeeping and every status field are copied to be thrown away.
    The same essence comes from copying only the spec, the labels and the annotations (and
    any other top-level field), as plain JSON values rather than through ``copy.deepcopy`` and
    Kopf's views: for a session's event 36 µs in Kopf's build, 25 µs in Kopf's build of the
    kept fields alone, 11 µs this way (README, Performance, session 13). A field handler on
    anything else, a field that does not resolve through objects, or ignored fields get Kopf's
    own build.
    """

    def build(self, *, body, extra_fields=None):
        fields = [tuple(f.split(".")) if isinstance(f, str) else tuple(f)
                  for f in extra_fields or ()]
        plain = _plain(body)
        if self.ignored_fields or plain is None or any(
                f[:1] == ("status",) or (f[:1] == ("metadata",) and f[1:2] and
                                         f[1] not in _ESSENTIAL_METADATA) for f in fields):
            return super().build(body=body, extra_fields=extra_fields)
        essence = {key: _json_copy(value) for key, value in plain.items()
                   if key not in ("apiVersion", "kind", "metadata", "status")}
        metadata = plain.get("metadata")
        metadata = metadata if isinstance(metadata, dict) else {}
        kept = {key: _json_copy(metadata[key]) for key in _ESSENTIAL_METADATA if key in metadata}
        annotations = kept.get("annotations")
        if isinstance(annotations, dict):
            ignored = self._detect_marked_prefixes(annotations)
            for key in list(annotations):
                if key == _LAST_APPLIED or any(key.startswith(f"{p}/") for p in ignored):
                    del annotations[key]
        if kept:
            essence["metadata"] = kept
        for path in fields:
            # As Kopf's cherrypick: a field present in the object is in the essence, even an
            # annotation the filter above dropped.
            found = _resolved(plain, path)
            if found is _MISSING:
                continue
            if found is _NOT_AN_OBJECT:
                return super().build(body=body, extra_fields=extra_fields)
            *parents, last = path
            target = essence
            for key in parents:
                target = target.setdefault(key, {})
            target[last] = _json_copy(found)
        self.remove_empty_stanzas(cast(Any, essence))
        return essence


_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_MISSING, _NOT_AN_OBJECT = object(), object()


def _plain(body: Any) -> dict | None:
    """The body's top level as a dict: its values are the event's own, not Kopf's views."""
    if isinstance(body, dict):
        return body
    return dict(body) if isinstance(body, Mapping) else None


def _resolved(d: dict, path: tuple) -> Any:
    value: Any = d
    for key in path:
        if not isinstance(value, dict):
            return _NOT_AN_OBJECT
        if key not in value:
            return _MISSING
        value = value[key]
    return value


def _json_copy(value: Any) -> Any:
    """A deep copy of a JSON value (what a watch event's body is made of)."""
    if isinstance(value, dict):
        return {key: _json_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_copy(item) for item in value]
    return value


@dataclass
class OperatorMemo:
    """What every handler gets as ``memo``: Kopf hands each object a shallow copy, so these are
    shared by all. ``kube`` and ``engines`` exist from the startup handler on."""

    settings: Settings
    kube: Kube = field(init=False)
    engines: EngineRegistry = field(init=False)
    shared_passwords: SharedPasswords = field(default_factory=SharedPasswords)
    #: How many sessions of each Database are opened, and ended, at once (handlers/slots.py).
    openings: DatabaseSlots = field(init=False)
    endings: DatabaseSlots = field(init=False)
    #: Which Databases this instance serves (handlers/shard.py); everything by default.
    shard: ShardState = field(default_factory=ShardState)
    #: Gives the leader-election Lease up (None without election; handlers/leadership.py).
    release_leadership: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self.openings = DatabaseSlots("open", self.settings.concurrent_openings,
                                      queue=self.settings.opening_queue)
        self.endings = DatabaseSlots("end", self.settings.concurrent_endings)


@kopf.on.login()
def login(**_) -> kopf.ConnectionInfo:
    """Kopf's credentials, found as pgjit's own client finds them (kube/transport.py). Kopf
    calls it again after a 401: a rotated ServiceAccount token is read afresh."""
    return load_connection().info


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: OperatorMemo, **_) -> None:
    # Everything Kopf stores on objects lives under pgjit's own API group, not Kopf's defaults,
    # so other Kopf operators never touch pgjit's finalizer or progress (conventions §1.3-1.4).
    settings.persistence.finalizer = FINALIZER
    # Kopf's bookkeeping goes in status.pgjit, next to the status the handlers write: the
    # patch that records a handler as done is then one status patch, not a status patch plus
    # a patch of the object's annotations (one API write less per session opened).
    settings.persistence.progress_storage = kopf.StatusProgressStorage(name=KOPF_STATUS_FIELD)
    settings.persistence.diffbase_storage = LeanDiffBaseStorage(name=KOPF_STATUS_FIELD)
    settings.posting.reporting_component = "pgjit"
    settings.posting.reporting_instance = memo.settings.pod_name
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # A Database's finalizer waits for its daemon and timer to exit. They give up at once when
    # stopped (databases.py), so a moment's wait spares the deletion a polling cycle; for
    # anything slower, Kopf's default 60 s between checks kept a deleted Database a minute.
    settings.background.instant_exit_timeout = 1.0
    settings.background.cancellation_polling = 2.0
    settings.watching.connect_timeout = 30
    settings.execution.max_workers = memo.settings.threads
    # A handler's unexpected errors are almost always the API server or the network being away
    # for a moment (a restart, a failover); Kopf's default 60 s left a session opened during
    # an API server restart waiting a minute after the server was back (tests/faults).
    settings.execution.default_backoff = 10
    if memo.settings.namespaced:
        settings.scanning.disabled = True
    memo.kube = Kube(load_connection())
    memo.engines = EngineRegistry(memo.kube,
                                  prepared_statements=memo.settings.prepared_statements,
                                  steward_roles=memo.settings.steward_roles)
    if memo.settings.metrics_port:
        metrics.serve(memo.settings.metrics_port)


@kopf.on.cleanup()
async def close_engines(memo: OperatorMemo, **_) -> None:
    engines = getattr(memo, "engines", None)
    if engines is not None:
        await engines.close()
    kube = getattr(memo, "kube", None)
    if kube is not None:
        await kube.close()
