"""What goes into a DatabaseSession's credentials Secret. Pure: no I/O.

The keys (api.md): ``username``, ``host``, ``port``, ``dbname``, ``sslmode``, ``uri``,
``jdbc-uri``, ``expiresAt``, and then either ``password`` and ``pgpass`` (password type) or
``tls.crt``, ``tls.key`` and ``ca.crt`` (clientCertificate type). Values are text; the Kubernetes
adapter base64-encodes them (or sends them as ``stringData``).

Decisions:

- **Secret type ``Opaque``.** ``kubernetes.io/tls`` requires ``tls.crt`` and ``tls.key``, which
  the password type does not have, and a Secret's type is immutable; one type for both keeps
  consumers and RBAC rules uniform. ``kubernetes.io/basic-auth`` would misdescribe the cert type.
- **Encoding.** ``uri`` percent-encodes every component (user, password, host, database, query
  values), which libpq decodes everywhere, including inside an IPv6 literal's brackets (so a
  zone id ``%eth0`` is written ``%25eth0``). ``jdbc-uri`` percent-encodes the database and the
  query values, which pgJDBC decodes with ``URLDecoder`` (so ``+`` must be ``%2B``, and is); it
  does not decode the host, so the host goes in as written, bracketed when it is IPv6.
- **Client certificates.** The URIs carry no password and no file parameters: the Secret cannot
  know where a consumer will mount ``tls.crt``/``tls.key``/``ca.crt``, so the consumer adds
  ``sslcert=…&sslkey=…`` (and ``sslrootcert=…``) for the paths it wrote them to.
  :func:`postgres_uri` takes those as ``extra_params`` for programs such as ``pgjit connect``.
  libpq refuses a key file readable by group or others: mount the Secret with ``defaultMode:
  0600``. ``tls.key`` is PKCS#8 PEM (what libpq reads; pgJDBC needs it converted to DER).
  There is no ``pgpass`` for this type: a pgpass line exists to hold a password.
- **``ca.crt``** holds the CA bundle that verifies the *server* when the Database names one
  (``spec.tls.caSecretRef``), because that is what a client needs (libpq's ``sslrootcert``); it is
  then written for both credential types. For the clientCertificate type without a server CA, it
  holds the client CA's certificate, the issuer of ``tls.crt``, which is what ``ca.crt`` means in
  a ``kubernetes.io/tls`` Secret.
- **pgpass.** Fields are escaped as libpq's ``passwordFromFile`` reads them: ``\\`` and ``:``
  always, a field that is exactly ``*`` (otherwise a wildcard) and a leading ``#`` on the line
  (otherwise a comment). A line break cannot be represented in the format at all; the ``pgpass``
  key is then left out of the Secret rather than written wrong (:func:`pgpass_line` raises).
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from pgjit.core.conditions import rfc3339

SECRET_TYPE = "Opaque"

SESSION_LABEL = "pgjit.dev/session"
#: The uid of the session an object was written for, on its Secret, Role and RoleBinding: what
#: the end of a session deletes them by, several sessions' at once (kube/batched_deletes.py).
OWNER_UID_LABEL = "pgjit.dev/session-uid"
SESSION_ANNOTATION = "pgjit.dev/session"
EXPIRES_AT_ANNOTATION = "pgjit.dev/expires-at"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "pgjit"

_LABEL_VALUE_MAX = 63
_LABEL_HASH_CHARS = 10


@dataclass(frozen=True)
class ConnectionTarget:
    """Where a session's user connects: the parts every credentials Secret shares."""

    username: str
    host: str
    port: int
    dbname: str
    sslmode: str


# --------------------------------------------------------------------------------------------
# Hosts


def _ip_version(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def bare_host(host: str) -> str:
    """The host as libpq's ``host=`` parameter and pgpass expect it: an IPv6 literal without the
    brackets a URI needs. Database ``spec.host`` may be written either way."""
    if host.startswith("[") and host.endswith("]") and _ip_version(host[1:-1]) == 6:
        return host[1:-1]
    return host


def _is_ipv6(host: str) -> bool:
    return _ip_version(host) == 6


# --------------------------------------------------------------------------------------------
# URIs


def _pct(value: str) -> str:
    # safe="" so that '/', ':', '@', '?', '#', '&', '=' and '+' are all encoded: every one of
    # them is a delimiter somewhere in a connection URI.
    return quote(value, safe="")


def _query(params: dict[str, str]) -> str:
    return "&".join(f"{_pct(key)}={_pct(value)}" for key, value in params.items())


def postgres_uri(
    target: ConnectionTarget,
    password: str | None = None,
    extra_params: dict[str, str] | None = None,
) -> str:
    """A libpq connection URI, ``postgresql://user[:password]@host:port/dbname?sslmode=…``.

    ``extra_params`` are appended after ``sslmode`` (for example ``sslcert``/``sslkey`` paths).
    """
    host = bare_host(target.host)
    # Inside the brackets ':' must stay literal; libpq still percent-decodes the rest.
    host_part = f"[{quote(host, safe=':')}]" if _is_ipv6(host) else _pct(host)
    userinfo = _pct(target.username)
    if password is not None:
        userinfo += ":" + _pct(password)
    params = {"sslmode": str(target.sslmode), **(extra_params or {})}
    return (
        f"postgresql://{userinfo}@{host_part}:{int(target.port)}/{_pct(target.dbname)}"
        f"?{_query(params)}"
    )


def jdbc_uri(target: ConnectionTarget, password: str | None = None) -> str:
    """A pgJDBC URL, ``jdbc:postgresql://host:port/dbname?user=…&password=…&sslmode=…``.

    User and password go in the query because pgJDBC does not read URI userinfo.
    """
    host = bare_host(target.host)
    host_part = f"[{host}]" if _is_ipv6(host) else host
    params = {"user": target.username}
    if password is not None:
        params["password"] = password
    params["sslmode"] = str(target.sslmode)
    return (
        f"jdbc:postgresql://{host_part}:{int(target.port)}/{_pct(target.dbname)}"
        f"?{_query(params)}"
    )


# --------------------------------------------------------------------------------------------
# pgpass


def _pgpass_field(value: str) -> str:
    if any(ch in value for ch in "\r\n\x00"):
        raise ValueError("a pgpass entry cannot contain line breaks or NUL characters")
    escaped = value.replace("\\", "\\\\").replace(":", "\\:")
    # A field that is exactly '*' matches anything; a literal asterisk must be escaped.
    return "\\*" if escaped == "*" else escaped


def pgpass_line(target: ConnectionTarget, password: str) -> str:
    """One ``hostname:port:database:username:password`` line (with trailing newline), escaped
    so that libpq reads back exactly these values. Raises ValueError for values containing line
    breaks, which the format cannot hold."""
    fields = [
        bare_host(target.host), str(int(target.port)), target.dbname, target.username, password,
    ]
    line = ":".join(_pgpass_field(field) for field in fields)
    # libpq skips lines starting with '#' as comments; an escaped '#' is read as itself.
    if line.startswith("#"):
        line = "\\" + line
    return line + "\n"


# --------------------------------------------------------------------------------------------
# Secret contents


def _text(pem: str | bytes) -> str:
    return pem.decode("ascii") if isinstance(pem, bytes) else pem


def _common_data(target: ConnectionTarget, expires_at: datetime) -> dict[str, str]:
    return {
        "username": target.username,
        "host": bare_host(target.host),
        "port": str(int(target.port)),
        "dbname": target.dbname,
        "sslmode": str(target.sslmode),
        "expiresAt": rfc3339(expires_at),
    }


def password_secret_data(
    target: ConnectionTarget,
    password: str,
    expires_at: datetime,
    server_ca_pem: str | bytes | None = None,
) -> dict[str, str]:
    """Secret data for a password-type session. ``ca.crt`` is added when the Database names the
    CA that verifies the server (needed for ``verify-ca``/``verify-full`` with a private CA)."""
    data = _common_data(target, expires_at)
    data["password"] = password
    data["uri"] = postgres_uri(target, password)
    data["jdbc-uri"] = jdbc_uri(target, password)
    try:
        data["pgpass"] = pgpass_line(target, password)
    except ValueError:
        pass  # unrepresentable (line break in a name): no pgpass rather than a wrong one
    if server_ca_pem:
        data["ca.crt"] = _text(server_ca_pem)
    return data


def certificate_secret_data(
    target: ConnectionTarget,
    cert_pem: str | bytes,
    key_pem: str | bytes,
    issuer_ca_pem: str | bytes,
    expires_at: datetime,
    server_ca_pem: str | bytes | None = None,
) -> dict[str, str]:
    """Secret data for a clientCertificate-type session: ``tls.crt``/``tls.key`` instead of a
    password; ``ca.crt`` is the server CA when known, else ``issuer_ca_pem`` (see module doc)."""
    data = _common_data(target, expires_at)
    data["uri"] = postgres_uri(target)
    data["jdbc-uri"] = jdbc_uri(target)
    data["tls.crt"] = _text(cert_pem)
    data["tls.key"] = _text(key_pem)
    data["ca.crt"] = _text(server_ca_pem) if server_ca_pem else _text(issuer_ca_pem)
    return data


def iam_secret_data(
    target: ConnectionTarget,
    region: str,
    expires_at: datetime,
    server_ca_pem: str | bytes | None = None,
) -> dict[str, str]:
    """Secret data for an awsIAM-type session: where to connect and the AWS region to sign the
    user's own IAM auth token for; no password, since the token is the client's to make
    (``pgjit connect`` does it, as does any AWS SDK's RDS signer)."""
    data = _common_data(target, expires_at)
    data["region"] = region
    data["uri"] = postgres_uri(target)
    data["jdbc-uri"] = jdbc_uri(target)
    if server_ca_pem:
        data["ca.crt"] = _text(server_ca_pem)
    return data


# --------------------------------------------------------------------------------------------
# Metadata


def session_label_value(session_name: str) -> str:
    """The ``pgjit.dev/session`` label value for a session.

    Session names are DNS subdomains of up to 253 characters but label values stop at 63. Longer
    names keep a readable prefix and a hash of the full name, so the label stays unique per
    session and selectable; the full name is in the ``pgjit.dev/session`` annotation.
    """
    if len(session_name) <= _LABEL_VALUE_MAX:
        return session_name
    digest = hashlib.sha256(session_name.encode("utf-8")).hexdigest()[:_LABEL_HASH_CHARS]
    prefix = session_name[: _LABEL_VALUE_MAX - _LABEL_HASH_CHARS - 1].rstrip(".-")
    return f"{prefix}-{digest}"


def secret_labels(session_name: str) -> dict[str, str]:
    """Labels of a session's Secret: the session it belongs to and who manages it."""
    return {SESSION_LABEL: session_label_value(session_name), MANAGED_BY_LABEL: MANAGED_BY}


def secret_annotations(session_name: str, expires_at: datetime) -> dict[str, str]:
    """Annotations of a session's Secret: the full session name (labels may hold a shortened
    one) and the expiry, readable without decoding the data."""
    return {SESSION_ANNOTATION: session_name, EXPIRES_AT_ANNOTATION: rfc3339(expires_at)}
