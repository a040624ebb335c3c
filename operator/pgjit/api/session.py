"""The DatabaseSession kind: one requester's bounded-time access to one PostgreSQL database."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .common import (
    optional_set,
    AGE_COLUMN,
    K8S_IDENTITY_MAX_LENGTH,
    K8S_NAME_MAX_LENGTH,
    READY_COLUMNS,
    ApiModel,
    Duration,
    KindModel,
    KindStatus,
    LocalObjectRef,
    ObjectName,
    PgIdentifier,
    PrinterColumn,
    Timestamp,
    cel_rule,
    validations,
)
from .role import Subject
from ..vocabulary import ReviewDecision
from ..vocabulary import SessionPhase as SessionPhase
from ..vocabulary import TeardownAction as TeardownAction
from ..vocabulary import UserProvisioning

#: Longest reason a session or a review may give (characters).
REASON_MAX_LENGTH = 1024
#: The most reviews a session's status lists (the counted ones first, then the others).
MAX_RECORDED_REVIEWS = 64

ReasonText = Annotated[
    str,
    Field(min_length=1, max_length=REASON_MAX_LENGTH, description="Free text for people."),
]

#: Suffix of the credentials Secret's default name, ``<session name>-credentials``.
SECRET_NAME_SUFFIX = "-credentials"
_MAX_NAME_FOR_DEFAULT_SECRET = K8S_NAME_MAX_LENGTH - len(SECRET_NAME_SUFFIX)


IdentityName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=K8S_IDENTITY_MAX_LENGTH,
        description="A Kubernetes user or group name.",
    ),
]
ExtraValue = Annotated[
    list[Annotated[str, Field(max_length=1024, description="One value of the attribute.")]],
    Field(max_length=256, description="Values of one user extra attribute."),
]


class DatabaseSessionSpec(ApiModel):
    """Who asks for access to which database, with which roles, for how long. Immutable."""

    model_config = {
        "json_schema_extra": validations(
            cel_rule(
                "self == oldSelf",
                message="spec is immutable: delete this DatabaseSession and create a new one",
            )
        )
    }

    user: IdentityName = Field(
        description="Kubernetes user name of the requester; becomes the PostgreSQL user name (names"
        " over 63 bytes map to a shortened name plus hash, see status.username). Must equal the"
        " requesting identity unless the requester is a session admin."
    )
    groups: list[IdentityName] | None = optional_set(
        256,
        "The requester's groups that Roles may match; a subset of the requesting"
        " identity's groups.",
    )
    extra: dict[str, ExtraValue] | None = Field(
        default=None,
        description="The requester's user extra attributes, read by {{external.KEY}} trait"
        " templates; a subset of the requesting identity's extra.",
        json_schema_extra={"maxProperties": 64},
    )
    database_ref: LocalObjectRef = Field(description="The Database object, in this namespace.")
    database_name: PgIdentifier = Field(
        description="PostgreSQL database to open (tsh --db-name)."
    )
    database_roles: list[PgIdentifier] | None = optional_set(
        64,
        "Database roles wanted: a subset of those the Roles allow (tsh --db-roles)."
        " Absent: all allowed roles.",
    )
    duration: Duration = Field(
        default="1h",
        validate_default=True,
        description="How long the session lasts, like 30m or 2h (default 1h); capped by the"
        " smallest maxSessionDuration of the allowing Roles.",
    )
    secret_name: ObjectName | None = Field(
        default=None,
        description="Name of the credentials Secret (default <session name>-credentials).",
    )
    reason: ReasonText | None = Field(
        default=None,
        description="Why the access is needed, for the reviewers of a session that needs"
        " approval; required by Roles with approval.requireReason.",
    )


class ApprovalState(ApiModel):
    """What a session that needs approval waits for: set while it waits, kept afterwards."""

    required: int = Field(ge=1, description="Distinct approvals needed.")
    approvals: int = Field(default=0, ge=0, description="Approvals counted so far.")
    reviewers: list[Subject] = Field(
        max_length=1024, description="Who may review: the reviewers of the Roles that ask for"
        " approval."
    )
    roles: list[Annotated[str, Field(max_length=K8S_NAME_MAX_LENGTH, description="A Role name.")]] = Field(
        max_length=256, description="The Roles that ask for approval."
    )
    deadline: Timestamp = Field(description="When the session fails unless approved by then.")


class ReviewRecord(ApiModel):
    """One DatabaseSessionReview of this session, counted or not, and why."""

    name: ObjectName = Field(description="The DatabaseSessionReview.")
    reviewer: IdentityName = Field(description="Who reviewed (spec.reviewer, bound to its creator).")
    decision: ReviewDecision = Field(description="Approve or Deny.")
    reason: ReasonText | None = Field(default=None, description="The reviewer's reason.")
    time: Timestamp = Field(description="When the review was created.")
    counted: bool = Field(description="Whether the review counts towards the decision.")
    message: str = Field(max_length=1024, description="How it was counted, or why it was not.")


class Reassigned(ApiModel):
    """Objects handed to the Database's objectsInheritor in one database."""

    database: str = Field(max_length=63, description="The database.")
    objects: int = Field(ge=0, description="How many objects the user owned there.")


class Teardown(ApiModel):
    """What was done to the PostgreSQL user when the session ended, and why."""

    action: TeardownAction = Field(description="Locked (login disabled, roles revoked), Dropped, Deactivated (drop refused by dependent objects, locked instead) or Released (other live sessions still use the user).")
    reason: str | None = Field(
        default=None,
        max_length=4096,
        description="Why, e.g. the objects that blocked a drop.",
    )
    reassigned: list[Reassigned] | None = Field(
        default=None,
        max_length=1024,
        description="best_effort_reassign_and_drop: what was handed to the objectsInheritor,"
        " per database.",
    )


class DatabaseSessionStatus(KindStatus):
    """What the operator granted and where the session is in its life."""

    phase: SessionPhase | None = Field(
        default=None, description="Pending, Active, Ended, Expired or Failed."
    )
    username: PgIdentifier | None = Field(
        default=None, description="The PostgreSQL user name actually used."
    )
    database_roles: list[PgIdentifier] | None = Field(
        default=None, max_length=256, description="Database roles granted."
    )
    permissions: str | None = Field(
        default=None,
        max_length=4096,
        description="Summary of the object privileges granted, such as \"SELECT on 12 tables\".",
    )
    user_provisioning: UserProvisioning | None = Field(
        default=None, description="Effective provisioning mode: keep or best_effort_drop."
    )
    matched_roles: list[Annotated[str, Field(max_length=K8S_NAME_MAX_LENGTH, description="A Role name.")]] | None = Field(
        default=None, max_length=256, description="Names of the Roles that allowed the session."
    )
    expires_at: Timestamp | None = Field(default=None, description="When the session expires.")
    secret_name: str | None = Field(
        default=None,
        max_length=K8S_NAME_MAX_LENGTH,
        description="Name of the Secret holding the credentials.",
    )
    ended_at: Timestamp | None = Field(default=None, description="When the session ended.")
    teardown: Teardown | None = Field(
        default=None, description="What was done to the PostgreSQL user at the end."
    )
    approval: ApprovalState | None = Field(
        default=None, description="Sessions that need approval: what they wait for."
    )
    reviews: list[ReviewRecord] | None = Field(
        default=None,
        max_length=MAX_RECORDED_REVIEWS,
        description="The reviews of this session, in the order they were created: who, what,"
        " why, and whether each counted.",
    )
    approved_at: Timestamp | None = Field(
        default=None,
        description="When the last approval needed arrived; the duration counts from then.",
    )


class DatabaseSession(KindModel):
    """One requester's access to one PostgreSQL database for a bounded time: a lease on a
    just-in-time PostgreSQL user."""

    plural = "databasesessions"
    singular = "databasesession"
    short_names = ("dbsession", "pgsession")
    printer_columns = (
        PrinterColumn(
            name="Phase", type="string", json_path=".status.phase", description="Session phase."
        ),
        PrinterColumn(name="User", type="string", json_path=".spec.user", description="Requester."),
        PrinterColumn(
            name="Database",
            type="string",
            json_path=".spec.databaseRef.name",
            description="Database object.",
        ),
        PrinterColumn(
            name="DB Name",
            type="string",
            json_path=".spec.databaseName",
            description="PostgreSQL database.",
            priority=1,
        ),
        PrinterColumn(
            name="PG User",
            type="string",
            json_path=".status.username",
            description="PostgreSQL user name.",
            priority=1,
        ),
        PrinterColumn(
            name="Expires",
            type="string",
            json_path=".status.expiresAt",
            description="When the session expires.",
        ),
        *READY_COLUMNS,
        AGE_COLUMN,
    )
    selectable_fields = (".spec.user", ".spec.databaseRef.name", ".spec.databaseName")
    root_validations = (
        cel_rule(
            f"has(self.spec.secretName) || size(self.metadata.name) <= {_MAX_NAME_FOR_DEFAULT_SECRET}",
            message=f"the default Secret name <session name>{SECRET_NAME_SUFFIX} would exceed"
            f" {K8S_NAME_MAX_LENGTH} characters: use a session name of at most"
            f" {_MAX_NAME_FOR_DEFAULT_SECRET} characters or set spec.secretName",
            field_path=".spec.secretName",
        ),
    )

    kind: Literal["DatabaseSession"] = Field(default="DatabaseSession", description="DatabaseSession")
    spec: DatabaseSessionSpec = Field(description="Desired state; immutable.")
    status: DatabaseSessionStatus = Field(
        default_factory=DatabaseSessionStatus, description="Observed state."
    )

    @property
    def credentials_secret_name(self) -> str:
        """The Secret the credentials go to: spec.secretName or ``<name>-credentials``."""
        return self.spec.secret_name or f"{self.metadata.name}{SECRET_NAME_SUFFIX}"
