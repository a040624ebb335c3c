"""Running the real ``psql`` with a session's credentials, and nothing of them on display.

The credentials never go on a command line (``ps`` shows it to every user of the machine) or
into an environment variable (``/proc/PID/environ`` and child processes see it, and psql's
``\\!`` shell inherits it). They go into files in a private directory (0700, files 0600) that
only libpq reads: a connection service file (``PGSERVICEFILE``/``PGSERVICE``, paths and a name,
no secret) naming the host, database and user, a password file (``PGPASSFILE``) for password
sessions, and ``tls.crt``/``tls.key``/``ca.crt`` for certificate sessions. The directory is
removed when psql exits, or by the next run if this one was killed first.

Signals follow ``tsh db connect``: psql runs in the foreground of the terminal, so Ctrl-C is
psql's (it cancels the running query) and pgjit ignores it; SIGTERM or SIGHUP to pgjit ends
psql, because pgjit is then being shut down and must end the session behind it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..core.credentials_secret import ConnectionTarget, bare_host, pgpass_line
from ..vocabulary import SSLMode

SERVICE_NAME = "pgjit"
SERVICE_FILE = "pg_service.conf"
PASS_FILE = "pgpass"
CERT_FILE, KEY_FILE, CA_FILE = "client.crt", "client.key", "ca.crt"

#: libpq variables that would override or add to the service's connection settings. Removed from
#: psql's environment so the session's user, and only it, is what psql connects as.
_CONNECTION_VARIABLES = (
    "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGPASSFILE",
    "PGSERVICE", "PGSERVICEFILE", "PGSSLMODE", "PGREQUIRESSL", "PGSSLCERT", "PGSSLKEY",
    "PGSSLROOTCERT", "PGSSLCRL", "PGSSLCRLDIR", "PGSSLCERTMODE", "PGSSLNEGOTIATION",
    "PGREQUIREAUTH", "PGGSSENCMODE", "PGKRBSRVNAME", "PGTARGETSESSIONATTRS",
)
#: How long psql gets to exit after SIGTERM before it is killed.
TERMINATE_GRACE_SECONDS = 5.0


class PsqlNotFound(Exception):
    """No psql executable where it was looked for."""


# --------------------------------------------------------------------------------------------
# Files (pure)


@dataclass(frozen=True)
class ConnectionFiles:
    """What goes into the private directory: file name -> content, and the service's
    parameters (which name those files by their full paths)."""

    files: Mapping[str, str]
    params: Mapping[str, str]
    has_password: bool


def connection_files(creds: Mapping[str, str], directory: Path, *, host: str | None = None,
                     port: int | None = None, password: str | None = None) -> ConnectionFiles:
    """The files and service parameters for a session's credentials Secret data.

    ``host``/``port`` replace the Secret's when the client reaches the server by another route
    than the operator (a port-forward, a certificate-auth listener). ``password`` is one the
    caller made (an IAM auth token for an awsIAM Secret, which has none). Raises ValueError when
    the Secret lacks what its credential type needs.
    """
    missing = [key for key in ("username", "host", "port", "dbname") if not creds.get(key)]
    if missing:
        raise ValueError(f"the credentials Secret lacks {', '.join(missing)}")
    target = ConnectionTarget(username=creds["username"], host=bare_host(host or creds["host"]),
                              port=int(port or creds["port"]), dbname=creds["dbname"],
                              sslmode=creds.get("sslmode") or SSLMode.PREFER)
    params = {"host": target.host, "port": str(target.port), "dbname": target.dbname,
              "user": target.username, "sslmode": target.sslmode}
    files: dict[str, str] = {}
    if creds.get("ca.crt"):
        files[CA_FILE] = creds["ca.crt"]
        params["sslrootcert"] = str(directory / CA_FILE)
    if creds.get("tls.crt") or creds.get("tls.key"):
        if not (creds.get("tls.crt") and creds.get("tls.key")):
            raise ValueError("the credentials Secret has only one of tls.crt and tls.key")
        files[CERT_FILE], files[KEY_FILE] = creds["tls.crt"], creds["tls.key"]
        params["sslcert"], params["sslkey"] = str(directory / CERT_FILE), str(directory / KEY_FILE)
    password = password or creds.get("password")
    if password:
        # Written for the host and port psql is told to use, so an override still matches.
        files[PASS_FILE] = pgpass_line(target, password)
    elif CERT_FILE not in files:
        raise ValueError("the credentials Secret has neither a password nor tls.crt/tls.key"
                         + (" (an awsIAM session: sign an IAM auth token for it)"
                            if creds.get("region") else ""))
    files[SERVICE_FILE] = service_file_text(params)
    return ConnectionFiles(files=files, params=params, has_password=bool(password))


def iam_token(creds: Mapping[str, str]) -> str:
    """An RDS IAM auth token for an awsIAM Secret's user, signed with the caller's own AWS
    identity (the standard chain: environment, profile, SSO, web identity). It goes into the
    private password file like a password, never onto a command line or into psql's
    environment."""
    from botocore.exceptions import BotoCoreError

    from ..engine.iam import IamTokens

    try:
        return IamTokens(creds["region"]).token(bare_host(creds["host"]), int(creds["port"]),
                                                creds["username"])
    except BotoCoreError as exc:
        raise ValueError(f"cannot sign an RDS IAM auth token: {exc}; sign in to AWS first"
                         " (aws sso login, AWS_PROFILE or the AWS_* variables)") from exc


def service_file_text(params: Mapping[str, str], service: str = SERVICE_NAME) -> str:
    """A connection service file with one section, ``[service]``, holding ``params``.

    libpq reads ``key=value`` lines verbatim after the first ``=`` and trims the end of each
    line, so a value cannot hold a line break or end in white space; ValueError then, rather
    than a file that connects somewhere else.
    """
    lines = [f"[{service}]"]
    for key, value in params.items():
        if any(ch in value for ch in "\r\n\x00") or value != value.rstrip():
            raise ValueError(f"{key} {value!r} cannot be written to a connection service file")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def psql_environment(base: Mapping[str, str], directory: Path, *, has_password: bool
                     ) -> dict[str, str]:
    """psql's environment: ``base`` without libpq connection variables, plus the paths of the
    service file (and password file). No value in it is a secret."""
    env = {key: value for key, value in base.items() if key not in _CONNECTION_VARIABLES}
    env["PGSERVICEFILE"] = str(directory / SERVICE_FILE)
    env["PGSERVICE"] = SERVICE_NAME
    if has_password:
        env["PGPASSFILE"] = str(directory / PASS_FILE)
    return env


# --------------------------------------------------------------------------------------------
# The private directory


PRIVATE_PREFIX = "pgjit-connect-"


def private_parent() -> Path:
    """``$XDG_RUNTIME_DIR`` when there is one (per-user, memory-backed, cleared at logout),
    else the system's temporary directory."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime if runtime and os.path.isdir(runtime) else tempfile.gettempdir())


@contextlib.contextmanager
def private_directory() -> Iterator[Path]:
    """A fresh directory only this user can enter, removed with everything in it afterwards.

    Its name carries this process's id, so that a later run can tell it was abandoned
    (``remove_abandoned_directories``) if this one is killed before it can remove it.
    """
    parent = private_parent()
    remove_abandoned_directories(parent)
    directory = Path(tempfile.mkdtemp(prefix=f"{PRIVATE_PREFIX}{os.getpid()}-",
                                      dir=parent))  # mode 0700
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def remove_abandoned_directories(parent: Path) -> list[Path]:
    """Remove the private directories that runs killed by SIGKILL or a crash left behind: their
    password file still works until the session's expiry. Only this user's own directories, and
    only those whose process is gone; a symbolic link or a name without a process id is left
    alone. Returns what was removed."""
    removed = []
    for entry in parent.glob(f"{PRIVATE_PREFIX}*"):
        pid = _creator_pid(entry.name)
        if pid is None or _process_exists(pid):
            continue
        try:
            info = entry.lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _creator_pid(name: str) -> int | None:
    pid, _, rest = name[len(PRIVATE_PREFIX):].partition("-")
    return int(pid) if pid.isdigit() and rest else None


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process has the id now: not ours to judge
        return True
    return True


def write_private_files(directory: Path, files: Mapping[str, str]) -> None:
    """Write each file with mode 0600 from the start (never briefly readable by others);
    O_EXCL refuses a file someone placed there first."""
    for name, content in files.items():
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(content)


# --------------------------------------------------------------------------------------------
# Running psql


def find_psql(override: str | None = None) -> str:
    """The psql to run: ``override`` (a path or a name on PATH), else ``psql`` on PATH."""
    wanted = override or "psql"
    found = shutil.which(wanted)
    if found is None:
        where = f'"{wanted}" is not an executable' if override else "psql is not on PATH"
        raise PsqlNotFound(f"{where}; install the PostgreSQL client (e.g. apt-get install"
                           " postgresql-client) or name it with --psql PATH")
    return found


@dataclass(frozen=True)
class PsqlExit:
    """How psql ended: its exit code, and the signal that made pgjit end it, if one did."""

    returncode: int
    terminated_by: int | None = None

    @property
    def exit_code(self) -> int:
        """pgjit's exit code: 128+N when pgjit was told to stop by signal N, else psql's own
        (128+N as well if psql died of signal N, as shells report it)."""
        if self.terminated_by is not None:
            return 128 + self.terminated_by
        return 128 - self.returncode if self.returncode < 0 else self.returncode


def run_psql(argv: list[str], env: Mapping[str, str]) -> PsqlExit:
    """Run psql in the foreground and wait for it, owning the signals as the module doc says.

    The handlers are installed before psql starts (a SIGTERM during the start is not lost) and
    restored afterwards. SIGINT gets a handler that does nothing rather than SIG_IGN, because an
    ignored signal stays ignored in the child after exec and psql would lose Ctrl-C.
    """
    state: dict[str, object] = {"proc": None, "signal": None}

    def ignore(signum, frame) -> None:
        pass

    def terminate(signum, frame) -> None:
        state["signal"] = signum
        proc = state["proc"]
        if isinstance(proc, subprocess.Popen) and proc.poll() is None:
            proc.terminate()

    previous = {signal.SIGINT: signal.signal(signal.SIGINT, ignore),
                signal.SIGTERM: signal.signal(signal.SIGTERM, terminate),
                signal.SIGHUP: signal.signal(signal.SIGHUP, terminate)}
    try:
        proc = subprocess.Popen(argv, env=dict(env))
        state["proc"] = proc
        if state["signal"] is not None:
            proc.terminate()
        kill_at: float | None = None
        while True:
            try:
                # Short waits so that a SIGTERM arriving meanwhile starts the kill deadline.
                returncode = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if state["signal"] is None:
                    continue
                if kill_at is None:
                    kill_at = time.monotonic() + TERMINATE_GRACE_SECONDS
                elif time.monotonic() >= kill_at:
                    proc.kill()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    terminated_by = state["signal"]
    return PsqlExit(returncode, terminated_by if isinstance(terminated_by, int) else None)
