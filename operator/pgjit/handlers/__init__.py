"""Kopf handlers: thin glue between Kubernetes objects, the policy core and the engine.

Importing this package registers every handler with Kopf.

Typing: Kopf's handler protocols (``kopf.ChangingFn`` and the like) list only Kopf's own keyword
arguments, not the indexes it passes by their names as well, so mypy refuses every handler that
takes an index. Those decorators carry ``# type: ignore[arg-type]  # index kwargs``, nothing else.
"""

from ..settings import Settings
from . import (approvals, databases, indexes, leadership, object_labels, queue,  # noqa: F401 - registers them
               roles, sessions, settings, shard)


def register(operator_settings: Settings) -> None:
    """Register the handlers whose schedule is a setting: Kopf fixes a timer's interval when
    the timer is registered, before any memo exists."""
    databases.register(operator_settings)
