"""Running the ``pgjit`` command line in tests: as a control-plane identity, with or without a
terminal, and the RBAC a person running it gets in a namespace."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import kubernetes
import pexpect

USER = "alice"
PROMPT = "app=> "
#: Generous for a busy 2-core machine; every wait below ends as soon as its condition holds.
TIMEOUT = 60


def grant_cli_access(api: kubernetes.client.ApiClient, namespace: str, user: str = USER) -> None:
    """What a person running the CLI needs in a namespace, and nothing on Secrets."""
    rbac = kubernetes.client.RbacAuthorizationV1Api(api)
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "pgjit-cli-user"},
        "rules": [
            {"apiGroups": ["pgjit.dev"], "resources": ["databasesessions"],
             "verbs": ["create", "get", "list", "watch", "delete"]},
            {"apiGroups": ["pgjit.dev"], "resources": ["databases", "roles"],
             "verbs": ["get", "list"]},
        ]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": f"pgjit-cli-{user}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "pgjit-cli-user"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})


def cli_env(control_plane, identity: str = USER) -> dict[str, str]:
    env = dict(os.environ, KUBECONFIG=str(control_plane.kubeconfig(identity)),
               PYTHONUNBUFFERED="1", PSQLRC="/dev/null", PAGER="cat", PSQL_PAGER="cat")
    for name in ("PGPASSWORD", "PGHOST", "PGUSER", "PGSERVICE", "PGSERVICEFILE", "PGPASSFILE"):
        env.pop(name, None)
    return env


def run_cli(control_plane, *args: str, identity: str = USER, timeout: float = TIMEOUT
            ) -> subprocess.CompletedProcess[str]:
    """``pgjit ARGS`` as a subprocess without a terminal."""
    return subprocess.run([sys.executable, "-m", "pgjit.cli", *args],
                          env=cli_env(control_plane, identity), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def spawn_connect(control_plane, namespace: str, *args: str, database: str = "db"
                  ) -> pexpect.spawn:
    """``pgjit connect`` in a pseudo-terminal, as a person would run it; ``.transcript`` holds
    everything it printed."""
    child = pexpect.spawn(sys.executable,
                          ["-m", "pgjit.cli", "connect", database, "--db-name", "app",
                           "-n", namespace, *args],
                          env=cli_env(control_plane), encoding="utf-8", timeout=TIMEOUT,
                          dimensions=(40, 200))
    child.transcript = io.StringIO()
    child.logfile_read = child.transcript
    return child


def finish(child: pexpect.spawn) -> int:
    """Wait for the process to exit; its exit status, or 128+N if a signal N killed it."""
    child.expect(pexpect.EOF)
    child.wait()
    return child.exitstatus if child.exitstatus is not None else 128 + child.signalstatus
