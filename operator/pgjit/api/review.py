"""The DatabaseSessionReview kind: one reviewer's approval or denial of a session that waits.

A review is a statement by whoever creates it. The chart's admission policy binds
``spec.reviewer`` (and ``spec.reviewerGroups``) to the creating identity, so the operator can
take them as given; the CRD makes the statement immutable. The operator only reads reviews: it
records each one in the session's ``status.reviews``, counted or not and why, and posts Events
about it. There is no status of its own, since nothing here is the operator's to write.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ..vocabulary import ReviewDecision as ReviewDecision
from .common import (
    AGE_COLUMN,
    ApiModel,
    KindModel,
    LocalObjectRef,
    PrinterColumn,
    cel_rule,
    validations,
)
from .session import IdentityName, ReasonText


class DatabaseSessionReviewSpec(ApiModel):
    """Which session, approved or denied, by whom and why. Immutable."""

    model_config = {
        "json_schema_extra": validations(
            cel_rule(
                "self == oldSelf",
                message="a review cannot be changed: create another one (the last word of a"
                " reviewer is a new review)",
            ),
            cel_rule(
                "self.decision != 'Deny' || has(self.reason)",
                message="a denial must say why: set spec.reason",
                field_path=".reason",
            ),
        )
    }

    session_ref: LocalObjectRef = Field(description="The DatabaseSession, in this namespace.")
    decision: ReviewDecision = Field(description="Approve or Deny.")
    reason: ReasonText | None = Field(
        default=None, description="Why; required for Deny, shown to the requester."
    )
    reviewer: IdentityName = Field(
        description="Kubernetes user name of the reviewer: must be the identity creating the"
        " review (the chart's admission policy refuses anything else)."
    )
    reviewer_groups: list[IdentityName] | None = Field(
        default=None,
        max_length=256,
        description="The reviewer's groups that Role approval.reviewers may name; a subset of"
        " the creating identity's groups.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class DatabaseSessionReview(KindModel):
    """A reviewer's approval or denial of a DatabaseSession that waits for approval. Owned by
    the session (pgjit review sets the owner reference), so it goes when the session goes."""

    plural = "databasesessionreviews"
    singular = "databasesessionreview"
    short_names = ("dbreview",)
    has_status: ClassVar[bool] = False
    printer_columns = (
        PrinterColumn(
            name="Session",
            type="string",
            json_path=".spec.sessionRef.name",
            description="The DatabaseSession reviewed.",
        ),
        PrinterColumn(
            name="Decision", type="string", json_path=".spec.decision",
            description="Approve or Deny.",
        ),
        PrinterColumn(
            name="Reviewer", type="string", json_path=".spec.reviewer", description="Who."
        ),
        PrinterColumn(
            name="Reason",
            type="string",
            json_path=".spec.reason",
            description="Why.",
            priority=1,
        ),
        AGE_COLUMN,
    )
    selectable_fields = (".spec.sessionRef.name", ".spec.reviewer")

    kind: Literal["DatabaseSessionReview"] = Field(
        default="DatabaseSessionReview", description="DatabaseSessionReview"
    )
    spec: DatabaseSessionReviewSpec = Field(description="The review; immutable.")
