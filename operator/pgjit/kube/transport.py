"""How the operator process reaches the API server: its credentials, the error statuses it acts
on, and a small blocking JSON client for the work done in threads (leader election, the shard
coverage report, the readiness check).

The operator process does not import the `kubernetes` package (the CLI does). Kopf imports it
whenever it is installed, only to recognise its models, and its generated models alone are about
40 MB of resident memory, a third of an idle operator (README, Performance). Credentials come
from the ServiceAccount in a Pod, found the way client-go finds it (the KUBERNETES_SERVICE_*
variables, no cluster DNS needed), else from the kubeconfig through Kopf's own parser; Kopf logs
in with the same :class:`Connection` (handlers/settings.py).
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode, urlsplit

import kopf

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
#: How long a ServiceAccount token read from its file is used before the file is read again:
#: the kubelet rotates bound tokens well before they expire, and client-go rereads each minute.
TOKEN_REREAD_SECONDS = 60.0


class ApiError(Exception):
    """The API server answered with an error status; ``status`` and its ``reason`` say which."""

    def __init__(self, status: int, reason: str, message: str = ""):
        super().__init__(f"{status} {reason}" + (f": {message}" if message else ""))
        self.status, self.reason = status, reason


class NotFound(ApiError):
    """The API server answered 404."""


class Conflict(ApiError):
    """The API server answered 409: the object exists, or a precondition (uid) failed."""


class Forbidden(ApiError):
    """The API server answered 403."""


_TRANSLATED: dict[int, type[ApiError]] = {404: NotFound, 409: Conflict, 403: Forbidden}


def raise_for(status: int, reason: str, text: str) -> None:
    """Raise the :class:`ApiError` for an error answer (``text``: its body)."""
    if status < 400:
        return
    try:
        message = json.loads(text).get("message", "")
    except (ValueError, AttributeError):
        message = text[:200]
    raise _TRANSLATED.get(status, ApiError)(status, reason, message)


@dataclass
class Connection:
    """Where the API server is and how to authenticate to it."""

    info: kopf.ConnectionInfo
    #: The ServiceAccount's token file, reread now and then (None: the token is fixed).
    token_path: str | None = None
    _token_read_at: float = field(default=0.0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def server(self) -> str:
        return self.info.server.rstrip("/")

    def ssl_context(self) -> ssl.SSLContext | bool:
        """False for a plain-HTTP server (the unit tests' fake), else the TLS context."""
        if urlsplit(self.server).scheme == "http":
            return False
        return self.info.as_ssl_context()

    def headers(self) -> dict[str, str]:
        """The Authorization header, with a rotated ServiceAccount token picked up."""
        if self.token_path is not None and \
                time.monotonic() - self._token_read_at > TOKEN_REREAD_SECONDS:
            with self._lock:
                with open(self.token_path, encoding="utf-8") as file:
                    self.info = replace(self.info, token=file.read().strip() or None)
                self._token_read_at = time.monotonic()
        return self.info.as_http_headers()


def load_connection(environ: Mapping[str, str] = os.environ,
                    service_account: str = SERVICE_ACCOUNT) -> Connection:
    """In a Pod: the ServiceAccount; elsewhere: the current kubeconfig (KUBECONFIG)."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    token_path = os.path.join(service_account, "token")
    if host and port and os.path.exists(token_path):
        namespace_path = os.path.join(service_account, "namespace")
        namespace = None
        if os.path.exists(namespace_path):
            with open(namespace_path, encoding="utf-8") as file:
                namespace = file.read().strip() or None
        ca_path = os.path.join(service_account, "ca.crt")
        # An IPv6 address needs brackets in a URL.
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        info = kopf.ConnectionInfo(server=f"https://{netloc}",
                                   ca_path=ca_path if os.path.exists(ca_path) else None,
                                   default_namespace=namespace)
        connection = Connection(info, token_path=token_path)
        connection.headers()  # reads the token now: a missing one fails at startup
        return connection
    found = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    if found is None:
        raise kopf.LoginError("No Kubernetes credentials: neither a ServiceAccount (in a Pod) "
                              "nor a kubeconfig (KUBECONFIG or ~/.kube/config) was found")
    return Connection(found)


class RestClient:
    """Blocking JSON requests, one kept-alive connection per thread."""

    def __init__(self, connection: Connection):
        self.connection = connection
        parts = urlsplit(connection.server)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._context = connection.ssl_context()
        self._local = threading.local()

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._https:
            context = self._context if isinstance(self._context, ssl.SSLContext) else None
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                               context=context)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def request(self, method: str, path: str, body: Any = None, *, timeout: float = 30,
                params: Mapping[str, str] | None = None,
                content_type: str = "application/json") -> dict[str, Any]:
        """One request; the statuses pgjit acts on raise the exceptions above."""
        url = self._prefix + path + (f"?{urlencode(params)}" if params else "")
        headers = {"Accept": "application/json", **self.connection.headers()}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        while True:
            connection: http.client.HTTPConnection | None = getattr(self._local, "connection",
                                                                    None)
            reused = connection is not None
            if connection is None:
                connection = self._local.connection = self._connect(timeout)
            connection.timeout = timeout
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
            try:
                connection.request(method, url, body=data, headers=headers)
                response = connection.getresponse()
                text = response.read().decode()
                break
            except (ConnectionError, http.client.HTTPException, OSError) as error:
                connection.close()
                self._local.connection = None
                # A kept-alive connection the server closed meanwhile fails on first use: a
                # fresh one is tried once. A timeout is not retried (leader election counts
                # its deadline), nor is a failure on a fresh connection: the caller retries.
                if not reused or isinstance(error, TimeoutError):
                    raise
        raise_for(response.status, response.reason, text)
        return json.loads(text) if text else {}

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None
