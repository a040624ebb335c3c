from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, unquote, unquote_plus, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from pgjit.api.database import SSLMode
from pgjit.core import credentials_secret as S

EXPIRES = datetime(2024, 5, 1, 13, 0, 0, tzinfo=timezone.utc)

HOSTILE_NAMES = [
    "alice@example.com",
    "system:serviceaccount:team-a:deployer",
    "a/b\\c",
    "100% sure",
    "with space",
    "ünïcødé-Ωmega-名前",
    "emoji-😀",
    "q?a#frag",
    "a&b=c;d",
    "+plus+",
    "*",
    "#hash",
    "quote'\"",
    "[brackets]",
    ":",
    "\\",
]
HOSTS = ["orders-pg.data.svc", "10.1.2.3", "::1", "[2001:db8::5]", "fe80::1%eth0"]

# Text PostgreSQL can hold in a name or password: anything but NUL.
# Names arrive as JSON from the API server: valid UTF-8, so never a lone surrogate (category Cs).
pg_text = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)),
                  min_size=1, max_size=40)


def target(username="alice", host="orders-pg.data.svc", dbname="orders", sslmode="require"):
    return S.ConnectionTarget(username=username, host=host, port=5432, dbname=dbname,
                              sslmode=sslmode)


# --------------------------------------------------------------------------------------------
# Parsers standing in for the consumers


def parse_jdbc(url):
    """What pgJDBC's Driver.parseURL reads: raw host, URLDecoder-decoded dbname and params."""
    assert url.startswith("jdbc:postgresql://")
    server, _, args = url[len("jdbc:postgresql://"):].partition("?")
    address, _, dbname = server.partition("/")
    host, _, port = address.rpartition(":")
    params = {}
    for pair in args.split("&"):
        key, _, value = pair.partition("=")
        params[unquote_plus(key)] = unquote_plus(value)  # URLDecoder: '+' is a space
    return {"host": host, "port": port, "dbname": unquote_plus(dbname), **params}


def pgpass_lookup(line, host, port, dbname, user):
    """libpq's passwordFromFile for one line: the password if the line matches, else None."""
    line = line.rstrip("\r\n")
    if not line or line.startswith("#"):
        return None
    rest = line
    for token in (host, port, dbname, user):
        rest = _pgpass_match(rest, token)
        if rest is None:
            return None
    password, i = [], 0
    while i < len(rest) and rest[i] != ":":
        if rest[i] == "\\" and i + 1 < len(rest):
            i += 1
        password.append(rest[i])
        i += 1
    return "".join(password)


def _pgpass_match(buf, token):
    # Port of pwdfMatchesString.
    if buf.startswith("*:"):
        return buf[2:]
    i, j, escaped = 0, 0, False
    while i < len(buf):
        if buf[i] == "\\" and not escaped:
            i += 1
            escaped = True
            if i >= len(buf):
                break
        if buf[i] == ":" and j == len(token) and not escaped:
            return buf[i + 1:]
        escaped = False
        if j == len(token) or buf[i] != token[j]:
            return None
        i += 1
        j += 1
    return None


# --------------------------------------------------------------------------------------------
# uri


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize("host", HOSTS)
def test_uri_round_trips_through_libpq(name, host):
    uri = S.postgres_uri(target(name, host, dbname=name), password=name + "-pw:@/")
    parsed = conninfo_to_dict(uri)
    assert parsed == {
        "user": name,
        "password": name + "-pw:@/",
        "host": S.bare_host(host),
        "port": "5432",
        "dbname": name,
        "sslmode": "require",
    }


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_uri_round_trips_through_urllib(name):
    uri = S.postgres_uri(target(name, "::1", dbname=name), password=name)
    parts = urlsplit(uri)
    assert parts.scheme == "postgresql"
    assert unquote(parts.username) == name
    assert unquote(parts.password) == name
    assert parts.hostname == "::1"
    assert parts.port == 5432
    assert unquote(parts.path[1:]) == name
    assert parse_qs(parts.query) == {"sslmode": ["require"]}


@settings(max_examples=200, deadline=None)
@given(user=pg_text, password=pg_text, dbname=pg_text)
def test_uri_round_trips_any_text(user, password, dbname):
    parsed = conninfo_to_dict(S.postgres_uri(target(user, dbname=dbname), password))
    assert (parsed["user"], parsed["password"], parsed["dbname"]) == (user, password, dbname)


def test_uri_shape():
    uri = S.postgres_uri(target("alice@example.com", sslmode=SSLMode.VERIFY_FULL), "pw")
    assert uri == "postgresql://alice%40example.com:pw@orders-pg.data.svc:5432/orders?sslmode=verify-full"


def test_ipv6_hosts_are_bracketed_with_zone_encoded():
    assert "@[::1]:5432/" in S.postgres_uri(target(host="::1"))
    assert "@[2001:db8::5]:5432/" in S.postgres_uri(target(host="[2001:db8::5]"))
    assert "@[fe80::1%25eth0]:5432/" in S.postgres_uri(target(host="fe80::1%eth0"))


def test_uri_without_password_and_with_file_params():
    uri = S.postgres_uri(target(), extra_params={"sslcert": "/tmp/x y/tls.crt", "sslkey": "/k"})
    parsed = conninfo_to_dict(uri)
    assert "password" not in parsed
    assert parsed["sslcert"] == "/tmp/x y/tls.crt"
    assert parsed["sslkey"] == "/k"
    assert parsed["sslmode"] == "require"


# --------------------------------------------------------------------------------------------
# jdbc-uri


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize("host", HOSTS[:4])
def test_jdbc_uri_round_trips_as_pgjdbc_reads_it(name, host):
    url = S.jdbc_uri(target(name, host, dbname=name), password=name + "+&=")
    bare = S.bare_host(host)
    assert parse_jdbc(url) == {
        "host": f"[{bare}]" if ":" in bare else bare,
        "port": "5432",
        "dbname": name,
        "user": name,
        "password": name + "+&=",
        "sslmode": "require",
    }


def test_jdbc_uri_shape():
    url = S.jdbc_uri(target("a b+c"), "p w")
    assert url == "jdbc:postgresql://orders-pg.data.svc:5432/orders?user=a%20b%2Bc&password=p%20w&sslmode=require"


def test_jdbc_uri_without_password():
    assert "password" not in S.jdbc_uri(target())


# --------------------------------------------------------------------------------------------
# pgpass


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize("host", HOSTS)
def test_pgpass_reads_back(name, host):
    line = S.pgpass_line(target(name, host, dbname=name), password=name + ":\\pw")
    assert line.endswith("\n") and line.count("\n") == 1
    bare = S.bare_host(host)
    assert pgpass_lookup(line, bare, "5432", name, name) == name + ":\\pw"


@settings(max_examples=200, deadline=None)
@given(user=pg_text, password=pg_text, dbname=pg_text)
def test_pgpass_reads_back_any_text(user, password, dbname):
    if any(ch in user + password + dbname for ch in "\r\n"):
        with pytest.raises(ValueError):
            S.pgpass_line(target(user, dbname=dbname), password)
        return
    line = S.pgpass_line(target(user, dbname=dbname), password)
    assert pgpass_lookup(line, "orders-pg.data.svc", "5432", dbname, user) == password


def test_pgpass_does_not_match_other_users():
    line = S.pgpass_line(target("*"), "pw")
    assert pgpass_lookup(line, "orders-pg.data.svc", "5432", "orders", "*") == "pw"
    assert pgpass_lookup(line, "orders-pg.data.svc", "5432", "orders", "bob") is None


def test_pgpass_host_starting_with_hash_is_not_a_comment():
    line = S.pgpass_line(target(host="#weird"), "pw")
    assert not line.startswith("#")
    assert pgpass_lookup(line, "#weird", "5432", "orders", "alice") == "pw"


def test_pgpass_escapes():
    assert S.pgpass_line(target("a:b\\c", host="::1"), "p:w") == "\\:\\:1:5432:orders:a\\:b\\\\c:p\\:w\n"


# --------------------------------------------------------------------------------------------
# Secret data


def test_password_secret_data():
    data = S.password_secret_data(target("alice@example.com", host="[::1]"), "pw", EXPIRES)
    assert set(data) == {"username", "password", "host", "port", "dbname", "sslmode", "uri",
                         "jdbc-uri", "pgpass", "expiresAt"}
    assert data["username"] == "alice@example.com"
    assert data["host"] == "::1"
    assert data["port"] == "5432"
    assert data["expiresAt"] == "2024-05-01T13:00:00Z"
    assert conninfo_to_dict(data["uri"])["password"] == "pw"
    assert all(isinstance(v, str) for v in data.values())


def test_password_secret_data_with_server_ca():
    data = S.password_secret_data(target(), "pw", EXPIRES, server_ca_pem=b"SERVER CA")
    assert data["ca.crt"] == "SERVER CA"


def test_password_secret_without_pgpass_when_unrepresentable():
    data = S.password_secret_data(target("line\nbreak"), "pw", EXPIRES)
    assert "pgpass" not in data
    assert conninfo_to_dict(data["uri"])["user"] == "line\nbreak"


def test_certificate_secret_data():
    data = S.certificate_secret_data(target(), b"CERT", "KEY", b"CLIENT CA", EXPIRES)
    assert set(data) == {"username", "host", "port", "dbname", "sslmode", "uri", "jdbc-uri",
                         "expiresAt", "tls.crt", "tls.key", "ca.crt"}
    assert (data["tls.crt"], data["tls.key"], data["ca.crt"]) == ("CERT", "KEY", "CLIENT CA")
    parsed = conninfo_to_dict(data["uri"])
    assert "password" not in parsed and parsed["sslmode"] == "require"
    assert "password" not in data["jdbc-uri"]


def test_certificate_secret_prefers_server_ca():
    data = S.certificate_secret_data(target(), "C", "K", "CLIENT CA", EXPIRES, server_ca_pem="SERVER CA")
    assert data["ca.crt"] == "SERVER CA"


def test_naive_expiry_rejected():
    with pytest.raises(ValueError, match="timezone-aware"):
        S.password_secret_data(target(), "pw", datetime(2024, 1, 1))


# --------------------------------------------------------------------------------------------
# Metadata


def test_labels_and_annotations():
    assert S.secret_labels("alice-orders-x7k2") == {
        "pgjit.dev/session": "alice-orders-x7k2",
        "app.kubernetes.io/managed-by": "pgjit",
    }
    assert S.secret_annotations("alice-orders-x7k2", EXPIRES + timedelta(seconds=0.5)) == {
        "pgjit.dev/session": "alice-orders-x7k2",
        "pgjit.dev/expires-at": "2024-05-01T13:00:00Z",
    }
    assert S.SECRET_TYPE == "Opaque"


@pytest.mark.parametrize("name", ["a" * 63, "a" * 64, "a" * 62 + "-.b" + "c" * 100, "x." * 120 + "y"])
def test_label_value_is_always_valid_and_distinct(name):
    import re

    value = S.session_label_value(name)
    assert len(value) <= 63
    assert re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", value)
    if len(name) <= 63:
        assert value == name
    else:
        assert value != S.session_label_value(name + "z")
