"""The ``pgjit`` command line.

Each subcommand is a small function taking the parsed arguments and returning an exit code; the
parser is built in one place so that ``pgjit --help`` lists everything. Subcommands that do not
exist yet are registered as stubs so the command line's shape is fixed from the start.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from pgjit import __version__

EXIT_NOT_IMPLEMENTED = 2


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
    from pgjit.runner import run

    return run(namespaces=args.namespace or [], all_namespaces=args.all_namespaces,
               liveness=args.liveness, metrics_port=args.metrics_port, verbose=args.verbose,
               log_json=args.log_format == "json")


def cmd_dev(args: argparse.Namespace) -> int:
    """Run the local stack (control plane, PostgreSQL 16, CRDs, operator, examples)."""
    from pgjit.devstack.stack import main as run_stack

    return run_stack()


def cmd_explain(args: argparse.Namespace) -> int:
    """Which Roles apply to a user on a Database, and what they grant: the operator's policy."""
    import kubernetes

    from pgjit import GROUP, VERSION
    from pgjit.api.database import Database
    from pgjit.api.role import Role
    from pgjit.core.explain import render_explanation
    from pgjit.core.policy import AccessRequest, evaluate

    kubernetes.config.load_kube_config()
    custom = kubernetes.client.CustomObjectsApi()
    namespace = args.namespace or kubernetes.config.list_kube_config_contexts()[1].get(
        "context", {}).get("namespace", "default")
    try:
        database = Database.model_validate(custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "databases", args.database))
    except kubernetes.client.ApiException as exc:
        print(f'pgjit explain: Database "{args.database}" in namespace "{namespace}": '
              f"{exc.reason}", file=sys.stderr)
        return 1
    roles = [Role.model_validate(item) for item in custom.list_namespaced_custom_object(
        GROUP, VERSION, namespace, "roles")["items"]]
    request = AccessRequest(user=args.user, database_name=args.db_name or "*",
                            groups=tuple(args.group or ()),
                            database_roles=tuple(r for r in (args.db_roles or "").split(",") if r))
    decision = evaluate(request, database, roles)
    sys.stdout.write(render_explanation(decision))
    return 0 if decision.allowed else 1


def _not_implemented(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        print(f"pgjit {name}: not implemented yet", file=sys.stderr)
        return EXIT_NOT_IMPLEMENTED

    return run


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
    run.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                     help="serve Prometheus metrics on this port")
    run.add_argument("--log-format", choices=("plain", "json"), default="plain")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=cmd_run)

    explain = sub.add_parser("explain", help="explain which Roles apply to a user on a Database, "
                             "and what they grant (exit 1 when the session would be refused)")
    explain.add_argument("database", metavar="DATABASE", help="the Database object's name")
    explain.add_argument("--user", required=True,
                         help="the Kubernetes user name the session would be for")
    explain.add_argument("--group", action="append", metavar="GROUP",
                         help="a group of that user (repeatable)")
    explain.add_argument("--db-name", metavar="NAME", help="the PostgreSQL database to open")
    explain.add_argument("--db-roles", metavar="A,B", help="database roles the session would ask for")
    explain.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig's)")
    explain.set_defaults(func=cmd_explain)

    dev = sub.add_parser("dev", help="start a local stack for trying pgjit without a cluster "
                         "(needs a source checkout; Ctrl-C stops everything)")
    dev.set_defaults(func=cmd_dev)

    # Registered now, implemented later; each keeps its final name and help text.
    stubs = {
        "connect": "open a DatabaseSession and run psql with its credentials",
        "sessions": "list DatabaseSessions",
    }
    for name, help_text in stubs.items():
        stub = sub.add_parser(name, help=f"{help_text} (not implemented yet)")
        stub.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        stub.set_defaults(func=_not_implemented(name))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pgjit`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
