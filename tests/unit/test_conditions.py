from datetime import datetime, timedelta, timezone

import pytest

from pgjit.api.common import Condition, KindStatus
from pgjit.core import conditions as C

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
T1 = T0 + timedelta(minutes=3)


def types(conds):
    return [c["type"] for c in conds]


def test_ready_from_nothing():
    conds = C.ready(None, 3, "Active", "Session is active", now=T0)
    assert conds == [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Active",
            "message": "Session is active",
            "lastTransitionTime": "2024-05-01T12:00:00Z",
            "observedGeneration": 3,
        }
    ]


def test_in_progress_sets_ready_false_and_reconciling():
    conds = C.in_progress([], 1, "DatabaseNotReady", "Database orders is not Ready", now=T0)
    assert types(conds) == ["Ready", "Reconciling"]
    ready, reconciling = conds
    assert (ready["status"], ready["reason"]) == ("False", "DatabaseNotReady")
    assert (reconciling["status"], reconciling["reason"]) == ("True", "DatabaseNotReady")
    assert reconciling["message"] == ready["message"]


def test_stalled_replaces_reconciling():
    before = C.in_progress([], 1, "Progressing", "Creating user", now=T0)
    conds = C.stalled(before, 1, "UserConflict", "role alice exists and is not managed", now=T1)
    assert types(conds) == ["Ready", "Stalled"]
    assert conds[1]["status"] == "True"
    # Ready stayed False: its transition time is the first one.
    assert conds[0]["lastTransitionTime"] == "2024-05-01T12:00:00Z"
    assert conds[0]["reason"] == "UserConflict"


def test_ready_removes_abnormal_conditions():
    before = C.stalled([], 1, "AccessDenied", "no Role allows this", now=T0)
    conds = C.ready(before, 1, "Active", "", now=T1)
    assert types(conds) == ["Ready"]
    assert conds[0]["lastTransitionTime"] == "2024-05-01T12:03:00Z"


def test_not_ready_is_settled():
    before = C.ready([], 1, "Active", "", now=T0)
    conds = C.not_ready(before, 1, "Expired", "Session expired", now=T1)
    assert types(conds) == ["Ready"]
    assert conds[0]["status"] == "False"


def test_transition_time_preserved_while_status_unchanged():
    first = C.in_progress([], 1, "Progressing", "step 1", now=T0)
    second = C.in_progress(first, 2, "DatabaseNotReady", "step 2", now=T1)
    for old, new in zip(first, second):
        assert new["lastTransitionTime"] == old["lastTransitionTime"] == "2024-05-01T12:00:00Z"
        assert new["observedGeneration"] == 2
        assert new["message"] == "step 2"


def test_transition_time_changes_with_status():
    first = C.in_progress([], 1, "Progressing", "", now=T0)
    second = C.ready(first, 1, "Active", "", now=T1)
    assert second[0]["lastTransitionTime"] == "2024-05-01T12:03:00Z"


def test_reappearing_abnormal_condition_gets_new_transition_time():
    conds = C.in_progress([], 1, "Progressing", "", now=T0)
    conds = C.ready(conds, 1, "Active", "", now=T1)
    later = T1 + timedelta(hours=1)
    conds = C.in_progress(conds, 1, "Progressing", "", now=later)
    assert C.find_condition(conds, "Reconciling")["lastTransitionTime"] == "2024-05-01T13:03:00Z"


def test_unmanaged_conditions_are_kept_after_managed_ones():
    other = {"type": "SecretPublished", "status": "True", "reason": "Written", "message": "",
             "lastTransitionTime": "2024-01-01T00:00:00Z"}
    previous = [other, *C.in_progress([], 1, "Progressing", "", now=T0)]
    conds = C.ready(previous, 1, "Active", "", now=T1)
    assert types(conds) == ["Ready", "SecretPublished"]
    assert conds[1] == other


def test_identical_state_yields_identical_list():
    first = C.stalled([], 4, "MissingDatabaseRole", "role reader does not exist", now=T0)
    again = C.stalled(first, 4, "MissingDatabaseRole", "role reader does not exist", now=T1)
    assert again == first


def test_accepts_models_and_readonly_mappings():
    from types import MappingProxyType

    previous = C.ready([], 1, "Active", "", now=T0)
    as_models = KindStatus.model_validate({"conditions": previous}).conditions
    assert isinstance(as_models[0], Condition)
    assert C.ready(as_models, 1, "Active", "", now=T1) == previous
    proxies = [MappingProxyType(c) for c in previous]
    assert C.ready(proxies, 1, "Active", "", now=T1) == previous


def test_output_validates_against_the_api_model():
    conds = C.stalled(None, 7, "InsufficientPrivilege", "GRANT reader TO admin WITH ADMIN OPTION",
                      now=T0)
    status = KindStatus.model_validate({"conditions": conds})
    assert status.condition("Stalled").observed_generation == 7


def test_generation_none_omits_observed_generation():
    (ready,) = C.ready(None, None, "Connected", "", now=T0)
    assert "observedGeneration" not in ready


def test_unknown_ready_via_build_conditions():
    desired = C.DesiredConditions(C.ConditionStatus.UNKNOWN, "Progressing", "starting",
                                  C.Progress.RECONCILING)
    conds = C.build_conditions(None, 1, desired, now=T0)
    assert [c["status"] for c in conds] == ["Unknown", "True"]


@pytest.mark.parametrize("reason", ["", "not camel", "Trailing,", "1Active", "Has-Dash"])
def test_bad_reason_is_a_bug(reason):
    with pytest.raises(ValueError, match="CamelCase"):
        C.ready(None, 1, reason, "")


def test_naive_now_rejected():
    with pytest.raises(ValueError, match="timezone-aware"):
        C.ready(None, 1, "Active", "", now=datetime(2024, 1, 1))


def test_rfc3339_converts_to_utc():
    plus_two = timezone(timedelta(hours=2))
    assert C.rfc3339(datetime(2024, 1, 1, 14, 30, 5, 999999, tzinfo=plus_two)) == "2024-01-01T12:30:05Z"


# --------------------------------------------------------------------------------------------
# Redaction


@pytest.mark.parametrize(
    ("message", "leaked"),
    [
        ("could not connect: host=db user=alice password=hunter2 dbname=x", "hunter2"),
        ("conninfo password = 'two words' sslmode=require", "two words"),
        ("jdbc:postgresql://h/db?user=a&password=s3cr%40t&sslmode=require", "s3cr%40t"),
        ("bad uri postgresql://alice:hunter2@db:5432/orders", "hunter2"),
        ("verifier SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy was refused", "c3RvcmVk"),
        ("PASSWORD:hunter2", "hunter2"),
        ("key -----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY----- end", "MIGHAgEAMBMG"),
        ("truncated -----BEGIN EC PRIVATE KEY-----\nMHcCAQEEI", "MHcCAQEEI"),
    ],
)
def test_redaction_masks_secrets(message, leaked):
    conds = C.stalled(None, 1, "Failed", message, now=T0)
    for condition in conds:
        assert leaked not in condition["message"]
        assert "***" in condition["message"] or "redacted" in condition["message"]


@pytest.mark.parametrize(
    "message",
    [
        'password authentication failed for user "alice"',
        "set passwordSecretRef (a Secret key holding the admin password)",
        "GRANT reader TO \"pgjit-admin\" WITH ADMIN OPTION",
        "Secret orders-admin has no key password: add it",
        "connect to postgresql://alice@db:5432/orders failed",
    ],
)
def test_redaction_leaves_ordinary_messages_alone(message):
    assert C.redact_secrets(message) == message


def test_long_messages_are_truncated_to_the_api_limit():
    (ready, _) = C.stalled(None, 1, "Failed", "x" * 100_000, now=T0)
    assert len(ready["message"]) == C.MAX_MESSAGE_LENGTH
    assert ready["message"].endswith("(truncated)")


# --------------------------------------------------------------------------------------------
# Transitions


def test_condition_changed():
    a = {"type": "Ready", "status": "False", "reason": "DatabaseNotReady", "message": "m1"}
    assert not C.condition_changed(a, {**a, "message": "m2", "lastTransitionTime": "x"})
    assert C.condition_changed(a, {**a, "reason": "AccessDenied"})
    assert C.condition_changed(a, {**a, "status": "True"})
    assert C.condition_changed(None, a)
    assert C.condition_changed(a, None)
    assert not C.condition_changed(None, None)


def test_condition_changed_between_builds():
    first = C.in_progress([], 1, "Progressing", "creating", now=T0)
    retry = C.in_progress(first, 1, "Progressing", "creating (attempt 2)", now=T1)
    done = C.ready(retry, 1, "Active", "", now=T1)
    find = C.find_condition
    assert not C.condition_changed(find(first, "Ready"), find(retry, "Ready"))
    assert C.condition_changed(find(retry, "Ready"), find(done, "Ready"))
    assert C.condition_changed(find(retry, "Reconciling"), find(done, "Reconciling"))
