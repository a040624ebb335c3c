"""Shard selectors (core/sharding.py): parsing, matching, and what the API server is asked."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgjit.core.sharding import (NOTHING, SESSION_DATABASE_LABEL, ShardSelector,
                                 ShardSelectorError, database_label_value, live_instances,
                                 not_served_message, session_selector)


@pytest.mark.parametrize("text, labels, selected", [
    ("shard=a", {"shard": "a"}, True),
    ("shard=a", {"shard": "b"}, False),
    ("shard==a", {"shard": "a"}, True),
    ("shard!=a", {}, True),
    ("shard!=a", {"shard": "a"}, False),
    ("shard in (a, b)", {"shard": "b"}, True),
    ("shard notin (a,b)", {"shard": "c"}, True),
    ("shard notin (a,b)", {"shard": "a"}, False),
    ("example.com/tier", {"example.com/tier": ""}, True),
    ("!legacy", {"legacy": "yes"}, False),
    ("shard=a,!legacy", {"shard": "a"}, True),
    ('{"matchLabels": {"shard": "a"}}', {"shard": "a"}, True),
    ('{"matchExpressions": [{"key": "shard", "operator": "In", "values": ["x"]}]}',
     {"shard": "a"}, False),
])
def test_a_selector_in_either_syntax_selects_as_kubernetes_does(text, labels, selected):
    selector = ShardSelector.parse(text)
    assert selector.sharded
    assert selector.matches(labels) is selected
    # What the API server is asked is the same selector.
    assert ShardSelector.parse(selector.render()).matches(labels) is selected


@pytest.mark.parametrize("text", [None, "", "  ", "{}", '{"matchLabels": {}}'])
def test_no_selector_serves_everything(text):
    selector = ShardSelector.parse(text)
    assert not selector.sharded and selector.render() == ""
    assert selector.matches({"anything": "x"}) and selector.matches(None)


@pytest.mark.parametrize("text", [
    "shard in ()", "a b", "=a", "shard=a,,b", '{"matchLabel": {"shard": "a"}}', "{not json",
    '{"matchExpressions": [{"key": "k", "operator": "In"}]}'])
def test_a_bad_selector_is_refused_rather_than_read_as_everything(text):
    with pytest.raises(ShardSelectorError):
        ShardSelector.parse(text)


_names = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)


@given(st.dictionaries(_names, _names, max_size=3), st.dictionaries(_names, _names, max_size=4),
       st.lists(st.tuples(_names, st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]),
                          st.lists(_names, min_size=1, max_size=3)), max_size=3))
def test_render_round_trips(match_labels, labels, expressions):
    data = {"matchLabels": match_labels, "matchExpressions": [
        {"key": k, "operator": op, **({"values": v} if op in ("In", "NotIn") else {})}
        for k, op, v in expressions]}
    selector = ShardSelector.parse(json.dumps(data))
    again = ShardSelector.parse(selector.render())
    assert again.matches(labels) == selector.matches(labels)


def test_the_session_label_names_namespace_and_database():
    assert database_label_value("team-a", "main") == "team-a.main"
    assert database_label_value("n" * 30, "d" * 32) == "n" * 30 + "." + "d" * 32
    assert database_label_value("n" * 30, "d" * 33) is None


def test_the_session_watch_asks_for_exactly_the_served_databases():
    assert session_selector([("b", "main"), ("a", "main"), ("a", "main")]) == \
        f"{SESSION_DATABASE_LABEL} in (a.main,b.main)"
    assert session_selector([("n" * 40, "d" * 40)]) == NOTHING
    assert session_selector([]) == NOTHING
    # The selector of nothing selects nothing, labelled or not.
    nothing = ShardSelector.parse(NOTHING)
    assert not nothing.matches({}) and not nothing.matches({SESSION_DATABASE_LABEL: "a.main"})


def _lease(namespace, name, renewed, selector=None):
    return {"metadata": {"namespace": namespace, "name": name,
                         "annotations": {"pgjit.dev/shard-selector": selector or ""}},
            "spec": {"holderIdentity": "x",
                     "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}}


def test_live_instances_are_the_recently_renewed_leases_in_name_order():
    now = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)
    leases = [_lease("pgjit-b", "pgjit", now - timedelta(seconds=3), "shard=b"),
              _lease("pgjit-a", "pgjit", now - timedelta(seconds=1), "shard=a"),
              _lease("old", "pgjit", now - timedelta(minutes=5), "shard=c"),
              _lease("bad", "pgjit", now, "a b")]
    instances = live_instances(leases, now, "pgjit.dev/shard-selector")
    assert [i.lease for i in instances] == ["pgjit-a/pgjit", "pgjit-b/pgjit"]
    assert instances[0].selector.matches({"shard": "a"})
    assert not instances[0].selector.matches({"shard": "b"})


def test_the_not_served_message_says_why_and_names_the_instances():
    now = datetime.now(timezone.utc)
    instances = live_instances([_lease("pgjit-a", "pgjit", now, "shard=a")], now,
                               "pgjit.dev/shard-selector")
    message = not_served_message("team", "orders", {"shard": "c"}, instances)
    assert '"orders"' in message and "shard=c" in message and "pgjit-a/pgjit (shard=a)" in message
    assert "does not exist" in not_served_message("team", "orders", None, instances, exists=False)
    assert "at most 63" in not_served_message("t" * 40, "d" * 40, {}, instances)
