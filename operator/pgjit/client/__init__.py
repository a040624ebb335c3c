"""The people-facing side of pgjit: what ``pgjit connect``, ``disconnect``, ``sessions`` and
``explain`` do against the API server as the person running them.

Kept apart from ``handlers``/``kube`` (the operator's side) because it runs with the user's own
kubeconfig and permissions, synchronously, in a terminal. Pure pieces (names, file contents,
tables, progress lines) live in their own modules so they are unit-tested without a cluster.
"""
