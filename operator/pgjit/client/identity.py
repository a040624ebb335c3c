"""Who the current kubeconfig identity is, as the API server sees it.

``pgjit connect`` must put the requester's own user name, groups and extra attributes into the
DatabaseSession: the chart's admission policy rejects anything else. Reading them from a
SelfSubjectReview rather than from the kubeconfig is the only way that works for every
authentication method (tokens, client certificates, exec plugins, OIDC): only the API server
knows what a credential maps to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import kubernetes

#: Every authenticated identity carries this group; kept in sessions anyway (see session_groups).
AUTHENTICATED_GROUP = "system:authenticated"


@dataclass(frozen=True)
class Identity:
    """A Kubernetes user as authenticated by the API server."""

    user: str
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def whoami(api: kubernetes.client.ApiClient) -> Identity:
    """The identity behind ``api``'s credentials (SelfSubjectReview, authentication.k8s.io/v1)."""
    review = kubernetes.client.AuthenticationV1Api(api).create_self_subject_review(
        kubernetes.client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1",
                                              kind="SelfSubjectReview"))
    info = review.status.user_info
    return Identity(
        user=info.username,
        groups=tuple(info.groups or ()),
        extra={key: tuple(values or ()) for key, values in (info.extra or {}).items()},
    )


def session_groups(identity: Identity) -> tuple[str, ...]:
    """The groups a session of ``identity`` carries: all of them, in the API server's order.

    ``system:authenticated`` stays in. It is a real group of the requester (so the admission
    policy's subset rule holds), and a Role naming it means "every authenticated user" exactly
    as it does in Kubernetes RBAC; dropping it would make such a Role silently never match.
    ``pgjit explain`` uses the same list, so it predicts what ``connect`` gets.
    """
    return tuple(dict.fromkeys(identity.groups))


def session_extra(identity: Identity) -> dict[str, list[str]]:
    """The extra attributes a session of ``identity`` carries (external traits): all of them,
    since the admission policy accepts any subset and Roles may read any key."""
    return {key: list(values) for key, values in identity.extra.items()}
