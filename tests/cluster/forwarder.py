"""A TCP forwarder to a PostgreSQL server that a test can make vanish or hang.

The cluster layer holds a Database's connections at it (a server that stops answering); the
fault layer cuts it (a host that is down) and restores it.
"""

from __future__ import annotations

import selectors
import socket
import threading


class Forwarder:
    """Forwards 127.0.0.1:``port`` to ``target``.

    - ``restore()`` opens the port (again, the same port) and forwards;
    - ``cut()`` closes the port and every connection through it: clients get "connection
      refused", as from a host that is down;
    - ``hold()``: new connections are accepted and never answered, as by a hung host; those
      forwarded already go on working. ``held`` lists them.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.held: list[socket.socket] = []
        self._holding = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def restore(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False, backlog=64)
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, args=(listener,), daemon=True,
                                        name="forwarder")
        self._thread.start()

    def hold(self) -> None:
        self._holding.set()

    def cut(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _serve(self, listener: socket.socket) -> None:
        chooser = selectors.DefaultSelector()
        chooser.register(listener, selectors.EVENT_READ)
        peer: dict[socket.socket, socket.socket] = {}
        try:
            while not self._stop.is_set():
                for key, _ in chooser.select(timeout=0.1):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is listener:
                        self._accept(listener, chooser, peer)
                        continue
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    other = peer.get(sock)
                    if not data or other is None:
                        for end in (sock, other):
                            if end is not None and end in peer:
                                chooser.unregister(end)
                                peer.pop(end)
                                end.close()
                        continue
                    try:
                        other.sendall(data)
                    except OSError:
                        pass
        finally:
            for sock in [listener, *peer, *self.held]:
                sock.close()
            self.held.clear()
            chooser.close()

    def _accept(self, listener: socket.socket, chooser: selectors.BaseSelector,
                peer: dict[socket.socket, socket.socket]) -> None:
        client, _ = listener.accept()
        if self._holding.is_set():
            self.held.append(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        peer[client], peer[upstream] = upstream, client
        for end in (client, upstream):
            chooser.register(end, selectors.EVENT_READ)
