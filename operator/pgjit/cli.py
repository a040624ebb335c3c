"""The ``pgjit`` command line.

Each subcommand is a small function taking the parsed arguments and returning an exit code; the
parser is built in one place so that ``pgjit --help`` lists everything. The work is done in
``pgjit.client`` (connect, disconnect, sessions, explain, review, requests) and elsewhere; the functions here only
translate arguments, and import lazily so that ``pgjit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import yaml

from pgjit import __version__


def dump_yaml(documents: Sequence[dict[str, Any]]) -> str:
    """Documents as a multi-document YAML stream, in a stable, diff-friendly layout."""
    return yaml.safe_dump_all(
        documents,
        explicit_start=True,
        sort_keys=False,
        allow_unicode=True,
        width=100,
    )


def cmd_crds(args: argparse.Namespace) -> int:
    """Print the CRD manifests, or write one file per kind with --output-dir."""
    from pgjit.api.crd import build_crds  # imported here: the other commands don't need pydantic's schema work

    crds = build_crds()
    if args.output_dir is None:
        sys.stdout.write(dump_yaml(crds))
        return 0
    out_dir = pathlib.Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for crd in crds:
        path = out_dir / f"{crd['metadata']['name']}.yaml"
        path.write_text(dump_yaml([crd]))
        print(path, file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the operator until interrupted."""
    # Kopf imports the `kubernetes` package whenever it can, only to recognise the package's
    # models in kopf.adopt() and the like, which the operator never passes; its generated
    # models cost about 40 MB of RSS. The operator's own code does without it (checked by
    # import-linter), and marking it absent here makes Kopf's import fail as if uninstalled.
    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]
    from pgjit.runner import run

    return run(namespaces=args.namespace or [], all_namespaces=args.all_namespaces,
               liveness=args.liveness, metrics_port=args.metrics_port, verbose=args.verbose,
               log_json=args.log_format == "json", readiness=args.readiness)


def cmd_dev(args: argparse.Namespace) -> int:
    """Run the local stack (control plane, PostgreSQL 16, CRDs, operator, examples)."""
    from pgjit.devstack.stack import main as run_stack

    return run_stack(state_dir=pathlib.Path(args.state_dir) if args.state_dir else None)


def _duration(text: str) -> timedelta:
    """argparse type for Go-style durations (30m, 1h, 1h30m), read as the CRD reads them."""
    from pgjit.api.common import parse_duration

    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= timedelta(0):
        raise argparse.ArgumentTypeError("must be longer than zero, like 30m or 1h")
    return value


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _namespace(args: argparse.Namespace) -> str:
    from pgjit.client.kubeconfig import current_namespace

    return args.namespace or current_namespace()


def cmd_connect(args: argparse.Namespace) -> int:
    """Open a DatabaseSession as yourself, run psql with it, end it when psql exits."""
    from pgjit.client.connect import ConnectOptions, connect
    from pgjit.client.kubeconfig import api_client

    options = ConnectOptions(
        database=args.database, database_name=args.db_name, namespace=_namespace(args),
        database_roles=args.db_roles or (), duration=args.duration, reason=args.reason,
        psql_args=tuple(args.psql_args), psql_path=args.psql, keep_session=args.keep_session,
        host=args.host, port=args.port, wait_timeout=args.wait_timeout.total_seconds(),
        end_timeout=args.end_timeout.total_seconds())
    with api_client() as api:
        return connect(api, options)


def cmd_disconnect(args: argparse.Namespace) -> int:
    """End sessions: named ones, or every session pgjit connect created for you (--all)."""
    from pgjit.client.connect import report
    from pgjit.client.disconnect import disconnect
    from pgjit.client.kubeconfig import api_client

    if bool(args.names) == args.all:
        print("pgjit disconnect: name sessions or give --all (not both)", file=sys.stderr)
        return 2
    with api_client() as api:
        return disconnect(api, _namespace(args), args.names, all_mine=args.all,
                          wait=not args.no_wait, timeout=args.timeout.total_seconds(),
                          report=report)


def cmd_sessions(args: argparse.Namespace) -> int:
    """List DatabaseSessions: a table, or JSON/YAML records for scripts."""
    from pgjit.client import output
    from pgjit.client.identity import whoami
    from pgjit.client.sessions import Sessions

    def fetch(api, namespace):
        user = whoami(api).user if args.mine else None
        return Sessions(api, namespace).list(user=user)
    return _list_sessions(args, "sessions", fetch, output.to_json, output.to_yaml,
                          output.to_table)


def cmd_requests(args: argparse.Namespace) -> int:
    """List the sessions that wait for your review."""
    from pgjit.client import reviews
    from pgjit.client.reviewing import requests

    return _list_sessions(args, "requests", requests, reviews.requests_json,
                          reviews.requests_yaml, reviews.requests_table)


def _list_sessions(args: argparse.Namespace, command: str, fetch, to_json, to_yaml,
                   to_table) -> int:
    """What `pgjit sessions` and `pgjit requests` share: the scope (-n / -A), the API error
    said in one line, and the output format (-o)."""
    from kubernetes.client.rest import ApiException

    from pgjit.client.kubeconfig import api_client

    namespace = None if args.all_namespaces else _namespace(args)
    with api_client() as api:
        try:
            items = fetch(api, namespace)
        except ApiException as exc:
            where = "all namespaces" if namespace is None else f"namespace {namespace}"
            print(f"pgjit {command}: cannot list DatabaseSessions in {where}: {exc.status}"
                  f" {exc.reason}", file=sys.stderr)
            return 1
    render = {"json": to_json, "yaml": to_yaml}.get(args.output)
    sys.stdout.write(render(items) if render else
                     to_table(items, all_namespaces=namespace is None))
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    """Approve or deny a session that waits for review."""
    from pgjit.client.connect import report
    from pgjit.client.kubeconfig import api_client
    from pgjit.client.reviewing import review
    from pgjit.vocabulary import ReviewDecision

    decision = ReviewDecision.APPROVE if args.approve else ReviewDecision.DENY
    if decision is ReviewDecision.DENY and not (args.reason or "").strip():
        print("pgjit review: --deny needs --reason TEXT (the requester reads it)",
              file=sys.stderr)
        return 2
    with api_client() as api:
        return review(api, _namespace(args), args.name, decision=decision,
                      reason=(args.reason or "").strip() or None, report=report,
                      wait_seconds=args.wait.total_seconds())


def cmd_explain(args: argparse.Namespace) -> int:
    """Which Roles apply to a user on a Database, and what they grant: the operator's policy."""
    from pgjit.client.explaining import (EXIT_ERROR, EXIT_REFUSED, ExplainError, ExplainOptions,
                                         explain, parse_extra)
    from pgjit.client.kubeconfig import api_client
    from pgjit.client.traits import parse_configmap_ref

    try:
        extra = parse_extra(args.extra or ())
        traits_ref = _traits_configmap(args.traits_configmap, parse_configmap_ref)
    except ValueError as exc:
        print(f"pgjit explain: {exc}", file=sys.stderr)
        return EXIT_ERROR
    options = ExplainOptions(
        database=args.database, namespace=_namespace(args), user=args.user,
        groups=tuple(args.group) if args.group else None, extra=extra,
        database_name=args.db_name, database_roles=args.db_roles or (),
        duration=args.duration, reason=args.reason, traits_configmap=traits_ref,
        include_unmatched=not args.only_matching, objects_conninfo=args.objects)
    with api_client() as api:
        try:
            text, allowed = explain(api, options)
        except ExplainError as exc:
            print(f"pgjit explain: {exc}", file=sys.stderr)
            return EXIT_ERROR
    sys.stdout.write(text)
    return 0 if allowed else EXIT_REFUSED


def _traits_configmap(flag: str | None, parse: Callable[[str], tuple[str, str]]
                      ) -> tuple[str, str] | None:
    """--traits-configmap NS/NAME, else the operator's own settings if set in this shell."""
    if flag:
        return parse(flag)
    from pgjit.settings import Settings, SettingsError

    try:
        return Settings.load(os.environ).traits_configmap_ref
    except SettingsError:
        return None  # another operator setting is off; it is the operator's to report


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="pgjit", description="Just-in-time PostgreSQL users, leased through Kubernetes objects."
    )
    parser.add_argument("--version", action="version", version=f"pgjit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    crds = sub.add_parser("crds", help="print the CustomResourceDefinition manifests")
    crds.add_argument(
        "--output-dir",
        metavar="DIR",
        help="write one file per kind, <plural>.pgjit.dev.yaml, into DIR instead of printing",
    )
    crds.set_defaults(func=cmd_crds)

    run = sub.add_parser("run", help="run the operator")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", metavar="NS",
                       help="watch this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="watch every namespace (the default without --namespace)")
    run.add_argument("--liveness", metavar="URL", default=None,
                     help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("--readiness", metavar="URL", default=None,
                     help="serve a readiness probe that succeeds once the operator is watching, "
                          "e.g. http://0.0.0.0:8081/readyz")
    run.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                     help="serve Prometheus metrics on this port")
    run.add_argument("--log-format", choices=("plain", "json"), default="plain")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=cmd_run)

    explain = sub.add_parser(
        "explain", help="explain which Roles apply to a user on a Database and what they grant"
        " (exit 0 allowed, 1 refused, 2 could not tell)")
    explain.add_argument("database", metavar="DATABASE", help="the Database object's name")
    explain.add_argument("--user", help="the Kubernetes user name to explain for (default: you,"
                         " with your groups and extra attributes)")
    explain.add_argument("--group", action="append", metavar="GROUP",
                         help="a group of that user (repeatable; replaces your own groups)")
    explain.add_argument("--extra", action="append", metavar="KEY=V1,V2",
                         help="an extra attribute of that user, for {{external.KEY}} (repeatable)")
    explain.add_argument("--db-name", metavar="NAME", help="the PostgreSQL database to open"
                         " (default: the Database's only offered name, else any)")
    explain.add_argument("--db-roles", type=_csv, metavar="A,B",
                         help="database roles the session would ask for")
    explain.add_argument("--duration", type=_duration, default=timedelta(hours=1),
                         help="the duration the session would ask for (default 1h)")
    explain.add_argument("--reason", metavar="TEXT",
                         help="the reason the session would give (for Roles that require one)")
    explain.add_argument("--traits-configmap", metavar="NS/NAME",
                         help="the operator's traits ConfigMap (default: $PGJIT_NAMESPACE/"
                         "$PGJIT_TRAITS_CONFIGMAP when set)")
    explain.add_argument("--objects", nargs="?", const="", metavar="CONNINFO",
                         help="also list the objects the permissions resolve to, reading the"
                         " database's catalog with your own login (libpq environment or this"
                         " connection string; host and port are the Database's)")
    explain.add_argument("--only-matching", action="store_true",
                         help="leave out Roles whose subjects do not name the user")
    explain.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig's)")
    explain.set_defaults(func=cmd_explain)

    connect = sub.add_parser(
        "connect", help="open a DatabaseSession as yourself and run psql with it; the session"
        " ends when psql exits", description="Extra psql arguments go after --, e.g."
        " pgjit connect orders --db-name orders -- -c 'select 1'")
    connect.add_argument("database", metavar="DATABASE", help="the Database object's name")
    connect.add_argument("--db-name", required=True, metavar="NAME",
                         help="the PostgreSQL database to open")
    connect.add_argument("--db-roles", type=_csv, metavar="A,B",
                         help="database roles to ask for (default: all the Roles allow)")
    connect.add_argument("--duration", type=_duration, default=None,
                         help="how long the session may last, like 30m (default 1h; the Roles"
                         " may cap it)")
    connect.add_argument("--reason", metavar="TEXT",
                         help="why you need the access: reviewers read it, and Roles with"
                         " approval.requireReason refuse sessions without one")
    connect.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig's)")
    connect.add_argument("--psql", metavar="PATH", help="the psql to run (default: psql on PATH)")
    connect.add_argument("--keep-session", action="store_true",
                         help="leave the session open when psql exits (end it with pgjit"
                         " disconnect, or let it expire)")
    connect.add_argument("--host", help="connect to this host instead of the Secret's (e.g. a"
                         " port-forward)")
    connect.add_argument("--port", type=int, help="connect to this port instead of the Secret's")
    connect.add_argument("--wait-timeout", type=_duration, default=timedelta(minutes=2),
                         metavar="DURATION", help="how long to wait for Active (default 2m;"
                         " time spent waiting for reviewers does not count: the Role's"
                         " pendingTimeout bounds it)")
    connect.add_argument("--end-timeout", type=_duration, default=timedelta(minutes=1),
                         metavar="DURATION",
                         help="how long to wait for the session to be gone (default 1m)")
    connect.set_defaults(func=cmd_connect, psql_args=())

    disconnect = sub.add_parser("disconnect", help="end DatabaseSessions and wait until access"
                                " is revoked")
    disconnect.add_argument("names", nargs="*", metavar="NAME", help="sessions to end")
    disconnect.add_argument("--all", action="store_true",
                            help="every session pgjit connect created for you in the namespace")
    disconnect.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig's)")
    disconnect.add_argument("--no-wait", action="store_true",
                            help="return once the deletion is accepted")
    disconnect.add_argument("--timeout", type=_duration, default=timedelta(minutes=1),
                            metavar="DURATION", help="how long to wait per session (default 1m)")
    disconnect.set_defaults(func=cmd_disconnect)

    sessions = sub.add_parser("sessions", help="list DatabaseSessions")
    scope = sessions.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig's)")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="list sessions of every namespace")
    sessions.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    sessions.add_argument("--mine", action="store_true", help="only your own sessions")
    sessions.set_defaults(func=cmd_sessions)

    requests_ = sub.add_parser("requests", help="list the sessions that wait for your review")
    scope = requests_.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig's)")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="look in every namespace")
    requests_.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    requests_.set_defaults(func=cmd_requests)

    review = sub.add_parser("review", help="approve or deny a session that waits for review")
    review.add_argument("name", metavar="NAME", help="the DatabaseSession")
    verdict = review.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--approve", action="store_true", help="approve it")
    verdict.add_argument("--deny", action="store_true", help="deny it (ends it: Failed, Denied)")
    review.add_argument("--reason", metavar="TEXT",
                        help="why (required with --deny; the requester reads it)")
    review.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig's)")
    review.add_argument("--wait", type=_duration, default=timedelta(seconds=15),
                        metavar="DURATION",
                        help="how long to wait for the operator to count it (default 15s)")
    review.set_defaults(func=cmd_review)

    dev = sub.add_parser("dev", help="start a local stack for trying pgjit without a cluster "
                         "(needs a source checkout; Ctrl-C stops everything)")
    dev.add_argument("--state-dir", metavar="DIR",
                     help="where to write the kubeconfigs it prints (default: .cache/dev in the "
                     "checkout; removed when the stack stops)")
    dev.set_defaults(func=cmd_dev)

    return parser


#: Exit code of commands that could not reach the cluster (explain's "could not tell" is 2).
_KUBECONFIG_EXIT = {"explain": 2}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pgjit`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    psql_args: list[str] = []
    # For connect, everything after the first "--" is psql's, untouched by argparse.
    if argv[:1] == ["connect"] and "--" in argv:
        cut = argv.index("--")
        argv, psql_args = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    if args.command == "connect":
        args.psql_args = psql_args
    try:
        return args.func(args)
    except Exception as exc:
        # Imported here, not at the top: the kubernetes client is slow to import and most
        # commands that never fail this way (crds, --help) should not pay for it.
        from pgjit.client.kubeconfig import KubeconfigError

        if not isinstance(exc, KubeconfigError):
            raise
        print(f"pgjit {args.command}: {exc}", file=sys.stderr)
        return _KUBECONFIG_EXIT.get(args.command, 1)


if __name__ == "__main__":
    sys.exit(main())
