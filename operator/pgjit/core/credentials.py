"""Generated passwords and the SCRAM-SHA-256 verifiers sent in their place.

pgjit never sends a plaintext password to PostgreSQL: ``CREATE ROLE … PASSWORD`` receives a
verifier computed here (RFC 5802/7677, PostgreSQL's ``SCRAM-SHA-256$iter:salt$stored:server``
format), so ``log_statement = all`` or a failed statement in the server log reveals nothing that
logs in. Computing it is a PBKDF2 run: callers on an event loop run it in a thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

PASSWORD_BYTES = 32  # 256 bits of entropy, well above the 190 bits the docs promise
SALT_BYTES = 16  # PostgreSQL's own default salt length
DEFAULT_SCRAM_ITERATIONS = 4096


def generate_password() -> str:
    """A random password, URL-safe so it needs no escaping in a URI or a pgpass line."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


def scram_sha256_verifier(password: str, iterations: int = DEFAULT_SCRAM_ITERATIONS,
                          salt: bytes | None = None) -> str:
    if iterations < 1:
        raise ValueError("SCRAM iteration count must be at least 1")
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    # pgjit's passwords are ASCII, so SASLprep leaves them unchanged.
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
