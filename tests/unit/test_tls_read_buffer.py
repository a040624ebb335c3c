"""The operator's TLS connections read through a small buffer, and still carry any payload."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from asyncio import sslproto

from cryptography.hazmat.primitives import serialization
from test_certificates import make_ca, pem_key

from pgjit import runner


def _server_context(tmp_path) -> ssl.SSLContext:
    cert, key = make_ca(name="localhost")  # self-signed; the client does not verify it
    (tmp_path / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "tls.key").write_bytes(pem_key(key))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    return context


def test_tls_connections_read_through_the_small_buffer_and_lose_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(sslproto.SSLProtocol, "max_size", sslproto.SSLProtocol.max_size)
    runner.small_tls_read_buffers()
    assert sslproto.SSLProtocol.max_size == runner.TLS_READ_BUFFER == 32 * 1024
    payload = os.urandom(3 * 1024 * 1024 + 17)  # many buffers' worth, not a multiple of one

    async def exchange() -> tuple[bytes, int]:
        async def send(reader, writer):
            writer.write(payload)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(send, "127.0.0.1", 0, ssl=_server_context(tmp_path))
        port = server.sockets[0].getsockname()[1]
        client = ssl.create_default_context()
        client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        buffer = len(writer.transport._ssl_protocol._ssl_buffer)
        received = await reader.read(-1)
        writer.close()
        server.close()
        await server.wait_closed()
        return received, buffer

    received, buffer = asyncio.run(exchange())
    assert buffer == 32 * 1024
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
