import base64
import re

from pgjit.core.credentials import generate_password, scram_sha256_verifier


def test_passwords_are_long_random_and_uri_safe():
    passwords = {generate_password() for _ in range(50)}
    assert len(passwords) == 50
    for password in passwords:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", password)  # 32 bytes -> 256 bits


def test_verifier_has_postgres_format_and_no_plaintext():
    verifier = scram_sha256_verifier("s3cret-pass", 4096, salt=b"0123456789abcdef")
    match = re.fullmatch(r"SCRAM-SHA-256\$4096:([^$]+)\$([^:]+):(.+)", verifier)
    assert match
    assert base64.b64decode(match.group(1)) == b"0123456789abcdef"
    assert len(base64.b64decode(match.group(2))) == 32
    assert "s3cret" not in verifier


def test_verifier_depends_on_salt_and_iterations():
    a = scram_sha256_verifier("p", 1, salt=b"x" * 16)
    assert a == scram_sha256_verifier("p", 1, salt=b"x" * 16)
    assert a != scram_sha256_verifier("p", 2, salt=b"x" * 16)
    assert a != scram_sha256_verifier("p", 1)
