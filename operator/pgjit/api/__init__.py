"""The pgjit API (group pgjit.dev, version v1alpha1): pydantic models of the kinds.

Pure code without I/O. The operator parses objects with ``Database.model_validate(body)``;
``api.crd.build_crds()`` turns the same models into the CRD manifests.
"""

from .common import (
    API_VERSION,
    Condition,
    ConditionStatus,
    LabelSelector,
    LocalObjectRef,
    ObjectMeta,
    format_duration,
    parse_duration,
)
from .database import (
    Database,
    DatabaseAdmin,
    DatabaseCredentials,
    DatabaseSpec,
    DatabaseStatus,
    DatabaseTLS,
    CredentialsType,
    SSLMode,
)
from .review import DatabaseSessionReview, DatabaseSessionReviewSpec, ReviewDecision
from .role import (
    Role,
    RoleAllow,
    RoleApproval,
    RoleDeny,
    RoleSpec,
    RoleStatus,
    Subject,
    SubjectKind,
    UserProvisioning,
    parse_template,
)
from .session import (
    DatabaseSession,
    DatabaseSessionSpec,
    DatabaseSessionStatus,
    SessionPhase,
    Teardown,
    TeardownAction,
)

__all__ = [
    "API_VERSION",
    "Condition",
    "ConditionStatus",
    "CredentialsType",
    "Database",
    "DatabaseAdmin",
    "DatabaseCredentials",
    "DatabaseSession",
    "DatabaseSessionReview",
    "DatabaseSessionReviewSpec",
    "DatabaseSessionSpec",
    "DatabaseSessionStatus",
    "DatabaseSpec",
    "DatabaseStatus",
    "DatabaseTLS",
    "LabelSelector",
    "LocalObjectRef",
    "ObjectMeta",
    "Role",
    "RoleAllow",
    "RoleApproval",
    "RoleDeny",
    "RoleSpec",
    "RoleStatus",
    "ReviewDecision",
    "SSLMode",
    "SessionPhase",
    "Subject",
    "SubjectKind",
    "Teardown",
    "TeardownAction",
    "UserProvisioning",
    "format_duration",
    "parse_duration",
    "parse_template",
]
