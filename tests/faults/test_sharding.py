"""Sharding: two releases split the Databases between them by a label selector.

The control plane has the chart's admission policies for the sessions' ``pgjit.dev/database``
label (the MutatingAdmissionPolicy sets it), two releases (``shard-a``: ``shard=a``,
``shard-b``: ``shard=b``) and Databases of one name, ``main``, in two namespaces, one per shard:
the case that makes the label name the namespace too. A third Database no selector matches is
reported, and then relabelled into a shard, which picks it up.
"""

from __future__ import annotations

import re
import subprocess

from faultkit import Burst, check_no_leaks, settle
from operatorkit import Env, condition_of, wait_for

CHART = "charts/pgjit"


def install_label_policies(stack) -> None:
    cp = stack.control_plane
    from pgjit.devstack.kube_binaries import find_repo_root
    manifest = subprocess.run(
        [str(cp.binaries.helm), "template", "pgjit", str(find_repo_root() / CHART),
         "--show-only", "templates/session-database-label.yaml", "--api-versions",
         "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy"],
        capture_output=True, text=True, check=True).stdout
    subprocess.run([str(cp.binaries.kubectl), f"--kubeconfig={cp.kubeconfig()}", "apply", "-f",
                    "-"], input=manifest, capture_output=True, text=True, check=True)


def database_env(stack, shard: str | None, pods) -> Env:
    """A namespace with Database "main" labelled for ``shard`` (not waited for)."""
    env = Env(stack.api, stack.namespace(), stack.server, pods, managed_role="")
    env.managed_role = f"pgjit-{env.namespace}"
    env.create_secret("admin", {"password": stack.server.admin_password})
    labels = {"env": "test", **({"shard": shard} if shard else {})}
    env.create("Database", "main", {
        "host": stack.server.host, "port": stack.server.port, "databases": ["app"],
        "admin": {"username": stack.server.admin_user,
                  "passwordSecretRef": {"name": "admin", "key": "password"}},
        "managedRole": env.managed_role, "credentials": {"scramIterations": 1}}, labels=labels)
    env.role("analysts", "best_effort_drop")
    return env


def objects_in_log(pod, namespace: str) -> list[str]:
    """Log lines where the pod handled the Database or a session of ``namespace`` (Roles are
    every shard's: a Role may select Databases of several)."""
    return [line for line in pod.log_path.read_text(errors="replace").splitlines()
            if re.search(rf"\[{re.escape(namespace)}/(main|b\d{{3}}|lost)\]", line)]


def test_two_shards_serve_disjoint_databases_and_report_the_rest(stack):
    install_label_policies(stack)
    shard_a = stack.add_pods(1, lease="shard-a",
                             extra_env={"PGJIT_SHARD_DATABASE_SELECTOR": "shard=a"}).pods[0]
    shard_b = stack.add_pods(1, lease="shard-b", extra_env={
        "PGJIT_SHARD_DATABASE_SELECTOR": '{"matchLabels": {"shard": "b"}}'}).pods[0]
    wait_for("both shards leading", lambda: shard_b.role() == "leader", 30)
    env_a = database_env(stack, "a", stack.pods)
    env_b = database_env(stack, "b", stack.pods)
    for env in (env_a, env_b):
        env.wait_ready("Database", "main", "True", timeout=60)

    # Bursts on both shards at once.
    bursts = [Burst(env, count=25, pace=0.05, database="main").start() for env in (env_a, env_b)]
    for env, burst in zip((env_a, env_b), bursts):
        burst.join()
        settle(env, burst)
    # The label names namespace and Database; each shard only ever saw its own.
    session = env_a.list("DatabaseSession")[0]
    assert session["metadata"]["labels"]["pgjit.dev/database"] == f"{env_a.namespace}.main"
    assert objects_in_log(shard_a, env_b.namespace) == []
    assert objects_in_log(shard_b, env_a.namespace) == []
    assert objects_in_log(shard_a, env_a.namespace) and objects_in_log(shard_b, env_b.namespace)

    # A Database no shard selects, and a session on it: both say so instead of hanging.
    env_c = database_env(stack, "c", stack.pods)
    env_c.create("DatabaseSession", "lost", env_c.session_spec("lost-user", database="main"))

    def not_served(kind: str, name: str):
        ready = env_c.condition(kind, name) or {}
        return ready if ready.get("reason") == "NotServed" else None
    ready = wait_for("the Database reported as not served",
                     lambda: not_served("Database", "main"), 30, interval=0.5)
    assert "shard=c" in ready["message"] and "pgjit-system/shard-a (shard=a)" in ready["message"]
    assert condition_of(env_c.get("Database", "main"), "Stalled")["reason"] == "NotServed"
    wait_for("the session reported as not served", lambda: not_served("DatabaseSession", "lost"),
             30, interval=0.5)
    assert env_c.get("DatabaseSession", "lost")["status"]["phase"] == "Pending"
    env_c.wait_event("main", "NotServed", "Warning")
    # Role status from all Databases (the report), not from one shard's view.
    wait_for("the Role's selection", lambda: (env_c.get("Role", "analysts").get("status") or {})
             .get("selectedDatabases") == ["main"], 30, interval=0.5)

    # Relabelled into shard a: shard a restarts its watches, serves it, opens the session.
    body = env_c.get("Database", "main")
    body["metadata"]["labels"]["shard"] = "a"
    env_c.custom.replace_namespaced_custom_object("pgjit.dev", "v1alpha1", env_c.namespace,
                                                  "databases", "main", body)
    env_c.wait_phase("lost", "Active", timeout=60)
    env_c.wait_ready("Database", "main", "True", timeout=30)
    assert "Restarting the watches: Shard: the served Databases changed" in \
        shard_a.log_path.read_text()
    assert objects_in_log(shard_b, env_c.namespace) == []

    for env, burst in zip((env_a, env_b), bursts):
        check_no_leaks(env, burst)
    env_c.delete("DatabaseSession", "lost")
    env_c.wait_gone("DatabaseSession", "lost")
    assert env_c.login_capable_managed_users() == set()
