"""``pgjit connect``: open a DatabaseSession as yourself, run psql with it, end it afterwards.

The order of events, and what happens to the session at each point:

1. Who am I (SelfSubjectReview); create the session (signals held back during the request, so
   a session is never created without pgjit knowing its name).
2. Wait until Active, printing each change. Ctrl-C here: delete the session, exit 130. SIGTERM
   or SIGHUP: delete it, exit 128+N. A final phase: print the operator's message, delete, exit 1.
   A session that needs approval waits for its reviewers here (they are named, and the command
   they run); Ctrl-C withdraws the request. That wait is bounded by the Role's pendingTimeout,
   not by ``--wait-timeout``.
3. Read the credentials Secret, write the private files, run psql (see ``psql``). psql's exit
   code becomes pgjit's.
4. End the session: delete it and wait until it is gone, so that when pgjit returns, access is
   revoked. ``--keep-session`` skips this once psql has run.

Any error after step 1 still ends the session. SIGKILL cannot be handled: the session then lasts
until its expiry, which the operator (and VALID UNTIL / the certificate's notAfter) enforce.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import kubernetes
from kubernetes.client.rest import ApiException

from . import psql
from .identity import whoami
from .kubeconfig import api_error
from .progress import active_line
from .sessions import Sessions, SessionError, session_manifest

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class ConnectOptions:
    database: str
    database_name: str
    namespace: str
    database_roles: tuple[str, ...] = ()
    duration: timedelta | None = None
    reason: str | None = None
    psql_args: tuple[str, ...] = ()
    psql_path: str | None = None
    keep_session: bool = False
    host: str | None = None
    port: int | None = None
    wait_timeout: float = 120.0
    end_timeout: float = 60.0
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))


class Stopped(Exception):
    """pgjit was told to stop by a signal other than SIGINT."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def report(line: str) -> None:
    """Progress for people, on stderr so that psql's output on stdout stays clean."""
    print(f"pgjit: {line}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _stop_signals_raise() -> Iterator[None]:
    """SIGTERM/SIGHUP raise Stopped (SIGINT raises KeyboardInterrupt as usual)."""
    def stop(signum, frame):
        raise Stopped(signum)

    previous = {signum: signal.signal(signum, stop) for signum in _STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold back SIGINT/SIGTERM/SIGHUP: the first that came is raised again when the block
    ends, to the handler in place before it.

    Recorded by a handler, not blocked with the signal mask: a mask holds a signal back in the
    main thread only, and the kernel hands a signal sent to the process to any other thread
    that does not block it, whose arrival Python then handles in the main thread at once.
    """
    came: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: came.append(signum))
                for signum in (signal.SIGINT, *_STOP_SIGNALS)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if came:
            signal.raise_signal(came[0])


def connect(api: kubernetes.client.ApiClient, options: ConnectOptions) -> int:
    """Run ``pgjit connect``; the return value is the process's exit code."""
    try:
        psql_path = psql.find_psql(options.psql_path)
    except psql.PsqlNotFound as exc:
        report(str(exc))
        return EXIT_ERROR
    sessions = Sessions(api, options.namespace)
    with _stop_signals_raise():
        try:
            identity = whoami(api)
        except ApiException as exc:
            report(f"cannot tell who you are (SelfSubjectReview): {api_error(exc)}")
            return EXIT_ERROR
        except (KeyboardInterrupt, Stopped) as exc:
            return _interrupted_code(exc)
        body = session_manifest(identity, options.database, options.database_name,
                                database_roles=options.database_roles, duration=options.duration,
                                reason=options.reason)
        report(f"opening a session for {identity.user} on Database {options.database}"
               f' (database "{options.database_name}") in namespace {options.namespace}')
        name: str | None = None
        try:
            with _signals_held():
                name = sessions.create(body)["metadata"]["name"]
        except (KeyboardInterrupt, Stopped) as exc:
            # A signal held back during the request arrives here, once the name is known.
            if name is None:
                return _interrupted_code(exc)
            report("interrupted")
            return _end(sessions, name, options, _interrupted_code(exc))
        except ApiException as exc:
            report(f"cannot create the session: {api_error(exc)}")
            return EXIT_ERROR
        return _use_and_end(sessions, name, psql_path, options)


def _interrupted_code(exc: BaseException) -> int:
    return 128 + exc.signum if isinstance(exc, Stopped) else EXIT_INTERRUPTED


def _use_and_end(sessions: Sessions, name: str, psql_path: str, options: ConnectOptions) -> int:
    psql_ran = False
    try:
        session = sessions.wait_active(name, timeout=options.wait_timeout, report=report)
        report(active_line(name, session))
        secret_name = session["status"].get("secretName") or f"{name}-credentials"
        creds = sessions.credentials(secret_name)
        with psql.private_directory() as directory:
            token = (psql.iam_token(creds) if creds.get("region") and not creds.get("password")
                     else None)
            files = psql.connection_files(creds, directory, host=options.host, port=options.port,
                                          password=token)
            psql.write_private_files(directory, files.files)
            env = psql.psql_environment(options.environ, directory,
                                        has_password=files.has_password)
            psql_ran = True
            outcome = psql.run_psql([psql_path, *options.psql_args], env)
        code = outcome.exit_code
        if outcome.terminated_by is not None:
            report(f"stopped by {signal.Signals(outcome.terminated_by).name}; psql ended")
    except KeyboardInterrupt:
        report("interrupted")
        code = EXIT_INTERRUPTED
    except Stopped as exc:
        report(f"stopped by {signal.Signals(exc.signum).name}")
        code = 128 + exc.signum
    except SessionError as exc:
        report(str(exc))
        code = EXIT_ERROR
    except (ApiException, ValueError, OSError) as exc:
        report(f"error: {api_error(exc) if isinstance(exc, ApiException) else exc}")
        code = EXIT_ERROR
    if psql_ran and options.keep_session:
        report(f"session {name} kept (--keep-session); end it with:"
               f" pgjit disconnect -n {options.namespace} {name}")
        return code
    return _end(sessions, name, options, code)


def _end(sessions: Sessions, name: str, options: ConnectOptions, code: int) -> int:
    """End the session whatever happened before; a failure to end it is an error of its own."""
    with _stop_signals_raise():
        try:
            # Held back so that an impatient Ctrl-C cannot cut off the request itself.
            with _signals_held():
                existed = sessions.delete(name)
            if existed:
                sessions.wait_gone(name, timeout=options.end_timeout, report=report)
            else:
                report(f"session {name} was already gone")
            return code
        except (KeyboardInterrupt, Stopped):
            report(f"not waiting any longer; the operator is ending session {name}")
            return code or EXIT_INTERRUPTED
        except SessionError as exc:
            report(str(exc))
        except ApiException as exc:
            report(f"cannot end session {name}: {api_error(exc)}; it lasts until its expiry"
                   f" unless you run: pgjit disconnect -n {options.namespace} {name}")
    return code or EXIT_ERROR

