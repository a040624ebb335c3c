"""How the operator process finds and talks to the API server (kube/transport.py): in-cluster
credentials as client-go finds them, a rotated token picked up, error statuses translated, a
kept-alive connection the server dropped replaced once, and no `kubernetes` package loaded.

The cluster, node and fault layers run the same code against a real kube-apiserver (the node
layer from inside a real Pod, with a real ServiceAccount token).
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import kopf
import pytest

from pgjit.kube import transport
from pgjit.kube.transport import Connection, RestClient, load_connection


def service_account(tmp_path: Path, token: str = "first-token") -> Path:
    directory = tmp_path / "serviceaccount"
    directory.mkdir(exist_ok=True)
    (directory / "token").write_text(token + "\n")
    (directory / "namespace").write_text("pgjit-system\n")
    (directory / "ca.crt").write_text("not read here\n")
    return directory


def test_in_a_pod_the_service_account_and_the_service_address_are_used(tmp_path):
    directory = service_account(tmp_path)
    connection = load_connection({"KUBERNETES_SERVICE_HOST": "10.96.0.1",
                                  "KUBERNETES_SERVICE_PORT": "443"}, str(directory))
    assert connection.server == "https://10.96.0.1:443"
    assert connection.headers() == {"Authorization": "Bearer first-token"}
    assert connection.info.default_namespace == "pgjit-system"
    assert connection.info.ca_path == str(directory / "ca.crt")


def test_an_ipv6_service_address_is_bracketed(tmp_path):
    connection = load_connection({"KUBERNETES_SERVICE_HOST": "fd00::1",
                                  "KUBERNETES_SERVICE_PORT": "6443"},
                                 str(service_account(tmp_path)))
    assert connection.server == "https://[fd00::1]:6443"


def test_a_rotated_service_account_token_is_read_again(tmp_path, monkeypatch):
    directory = service_account(tmp_path)
    connection = load_connection({"KUBERNETES_SERVICE_HOST": "10.96.0.1",
                                  "KUBERNETES_SERVICE_PORT": "443"}, str(directory))
    (directory / "token").write_text("second-token\n")
    assert connection.headers() == {"Authorization": "Bearer first-token"}  # within a minute
    now = time.monotonic()
    monkeypatch.setattr(transport.time, "monotonic",
                        lambda: now + transport.TOKEN_REREAD_SECONDS + 1)
    assert connection.headers() == {"Authorization": "Bearer second-token"}


def test_outside_a_pod_the_kubeconfig_is_used(tmp_path, monkeypatch):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:6443/"}}],
        "users": [{"name": "u", "user": {"token": "kubeconfig-token"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    # A ServiceAccount directory alone (no service address) is not a Pod's.
    connection = load_connection({}, str(service_account(tmp_path)))
    assert connection.server == "https://127.0.0.1:6443"
    assert connection.headers() == {"Authorization": "Bearer kubeconfig-token"}


def test_no_credentials_at_all_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(kopf.LoginError, match="neither a ServiceAccount"):
        load_connection({}, str(tmp_path / "absent"))


class Answers(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the API server does
    seen: list[tuple[str, str, str | None, dict | None]] = []
    close_after_next = False

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.seen.append((self.command, self.path, self.headers.get("Authorization"), body))
        status, answer = {"/missing": (404, {"message": "leases \"x\" not found"}),
                          "/taken": (409, {"message": "the object has been modified"}),
                          "/denied": (403, {"message": "forbidden: no"}),
                          "/broken": (500, {"message": "etcd is away"})}.get(
            self.path.split("?")[0], (200, {"path": self.path}))
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        if Answers.close_after_next:
            Answers.close_after_next = False
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def rest():
    Answers.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = RestClient(Connection(kopf.ConnectionInfo(
        server=f"http://127.0.0.1:{server.server_address[1]}", token="rest-token")))
    try:
        yield client
    finally:
        client.close()
        server.shutdown()
        server.server_close()


def test_requests_carry_the_token_the_body_and_the_query(rest):
    answer = rest.request("PUT", "/apis/x", {"spec": {"a": 1}}, params={"labelSelector": "a=b"})
    assert answer == {"path": "/apis/x?labelSelector=a%3Db"}
    assert Answers.seen == [("PUT", "/apis/x?labelSelector=a%3Db", "Bearer rest-token",
                             {"spec": {"a": 1}})]


@pytest.mark.parametrize("path, error, status, message", [
    ("/missing", transport.NotFound, 404, 'leases "x" not found'),
    ("/taken", transport.Conflict, 409, "the object has been modified"),
    ("/denied", transport.Forbidden, 403, "forbidden: no"),
    ("/broken", transport.ApiError, 500, "etcd is away")])
def test_error_statuses_raise_with_the_servers_message(rest, path, error, status, message):
    with pytest.raises(error) as raised:
        rest.request("GET", path)
    assert raised.value.status == status
    assert str(raised.value).endswith(f": {message}")


def test_a_connection_the_server_closed_is_replaced(rest):
    Answers.close_after_next = True
    rest.request("GET", "/one")
    # The kept-alive connection is gone on the server's side; the next request still lands.
    assert rest.request("GET", "/two") == {"path": "/two"}
    assert [path for _, path, _, _ in Answers.seen] == ["/one", "/two"]


def test_a_refused_connection_is_the_callers_to_retry(rest):
    dead = RestClient(Connection(kopf.ConnectionInfo(server="http://127.0.0.1:1")))
    with pytest.raises(ConnectionRefusedError):
        dead.request("GET", "/")


def test_the_operator_process_never_loads_the_kubernetes_package():
    """`pgjit run` keeps the package out even though it is installed (Kopf would import it)."""
    probe = ("import sys\n"
             "from pgjit import cli\n"
             "rc = cli.main(['run'])\n"  # an invalid setting: stops after importing the runner
             "import pgjit.handlers, pgjit.readiness, pgjit.kube.coverage, kopf\n"
             "print(rc, [m for m in sys.modules if m.split('.')[0] == 'kubernetes'"
             " and sys.modules[m] is not None])\n")
    env = {**os.environ, "PGJIT_THREADS": "none"}
    ran = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    assert ran.stdout.strip() == "2 []", ran.stdout + ran.stderr
    # Without `pgjit run`'s guard, importing Kopf alone loads it: the guard is what keeps it out.
    bare = subprocess.run([sys.executable, "-c", "import sys, kopf; print('kubernetes' in "
                           "sys.modules and sys.modules['kubernetes'] is not None)"],
                          capture_output=True, text=True, timeout=120, check=True)
    assert bare.stdout.strip() == "True"
