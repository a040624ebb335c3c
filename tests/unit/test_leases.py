from datetime import datetime, timedelta, timezone

from pgjit.core.leases import MODE_DROP, Lease, Ledger

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def lease(sid, minutes, roles=("reader",), db="orders"):
    return Lease(sid, NOW + timedelta(minutes=minutes), tuple(roles), db)


def test_round_trip_through_comment_text():
    ledger = Ledger(identity="ä@x", mode=MODE_DROP).with_lease(lease("ns/a", 10), MODE_DROP)
    parsed = Ledger.parse(ledger.render())
    assert parsed == ledger


def test_foreign_or_broken_comments_read_as_empty():
    for text in (None, "", "hand-written note", "{}", '{"pgjit": 99}', '{"pgjit": 1, "leases": 5}'):
        assert Ledger.parse(text).leases == {}


def test_live_excludes_expired_and_named_lease():
    ledger = Ledger().with_lease(lease("a", 10), "keep").with_lease(lease("b", -1), "keep")
    ledger = ledger.with_lease(lease("c", 5), "keep")
    assert [l.session_id for l in ledger.live(NOW)] == ["a", "c"]
    assert [l.session_id for l in ledger.live(NOW, excluding="a")] == ["c"]
    assert ledger.latest_expiry(NOW) == NOW + timedelta(minutes=10)
    assert set(ledger.without({"a"}).leases) == {"b", "c"}
