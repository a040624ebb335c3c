"""pgjit: just-in-time PostgreSQL users, leased through Kubernetes objects."""

__version__ = "0.1.0"
GROUP = "pgjit.dev"
VERSION = "v1alpha1"
