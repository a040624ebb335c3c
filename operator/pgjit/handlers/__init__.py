"""Kopf handlers: thin glue between Kubernetes objects, the policy core and the engine.

Importing this package registers every handler with Kopf.
"""

from . import databases, indexes, object_labels, roles, sessions, settings  # noqa: F401
