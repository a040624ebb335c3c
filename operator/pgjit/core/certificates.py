"""Client certificates for session users (credentials type ``clientCertificate``). Pure: no I/O.

PostgreSQL's ``cert`` authentication accepts a client whose certificate chains to the server's
``ssl_ca_file`` and whose subject CN equals the user name it logs in as. pgjit signs one such
certificate per session with the Database's client CA (``credentials.clientCASecretRef``), valid
until the session expires: ``VALID UNTIL`` does not apply to certificate logins, so the
certificate's notAfter is the backstop when the operator is down.

Decisions:

- **Key**: a fresh EC P-256 key per session, PKCS#8 PEM without encryption (libpq reads it; the
  Secret is the protection). P-256 is accepted by every OpenSSL PostgreSQL links against.
- **CN**: the PostgreSQL user name, UTF-8 (``UTF8String``, which PostgreSQL compares byte-wise
  with the user name). ``cryptography`` limits a CN to 64 *bytes* of UTF-8, stricter than X.509's
  64 characters; PostgreSQL names are at most 63 bytes, so every valid user name fits and
  anything longer is refused as not a PostgreSQL name.
- **Validity**: notBefore is five minutes in the past so a client or server whose clock is a
  little behind still accepts the certificate. notAfter is the session's expiry, **capped** at
  the CA's own notAfter (a certificate outliving its issuer fails verification anyway). The cap is
  reported in :attr:`IssuedCertificate.capped` with the actual ``not_after``, so the caller can
  shorten the session's ``expiresAt`` and say so in a condition message, as it does for
  ``maxSessionDuration``. :func:`ca_not_after` lets the caller apply the cap before activation.
  A CA that has already expired or is not yet valid raises :class:`CertificateAuthorityError`.
- **Chain**: when the CA certificate PEM holds a chain (an intermediate first, as in a
  ``kubernetes.io/tls`` Secret), the intermediates (every certificate that is not self-signed) are
  appended after the leaf, so a server that trusts only the root can still build the path.
- **CA keys**: RSA (PKCS#1 v1.5 with SHA-256), EC (ECDSA with SHA-256/384/512 matched to the
  curve size) and Ed25519/Ed448. The key must match the CA certificate, and the certificate
  must be allowed to sign certificates; both are checked up front with an actionable error
  instead of issuing certificates the server will reject.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Tolerated clock skew between the operator, the client and the server.
CLOCK_SKEW = timedelta(minutes=5)
#: PostgreSQL's identifier limit (NAMEDATALEN - 1), in bytes of UTF-8.
MAX_COMMON_NAME_BYTES = 63

_SigningKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)


class CertificateAuthorityError(ValueError):
    """The client CA cannot issue certificates (unreadable, mismatched, expired, not a CA)."""


@dataclass(frozen=True)
class IssuedCertificate:
    """A signed client certificate and its private key, both PEM.

    ``not_after`` is when the certificate actually expires; ``capped`` is true when that is
    earlier than requested because the CA expires first.
    """

    cert_pem: bytes
    key_pem: bytes
    not_after: datetime
    capped: bool


# --------------------------------------------------------------------------------------------
# Loading and checking the CA


def _load_ca_certificates(ca_cert_pem: bytes) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(ca_cert_pem)
    except ValueError as error:
        raise CertificateAuthorityError(
            f"the client CA certificate is not a readable PEM certificate: {error}"
        ) from None
    return certificates


def _load_ca_key(ca_key_pem: bytes) -> _SigningKey:
    try:
        key = serialization.load_pem_private_key(ca_key_pem, password=None)
    except TypeError:
        # Raised when the key is encrypted: there is no passphrase to give it.
        raise CertificateAuthorityError(
            "the client CA key is encrypted: store it unencrypted in the Secret's tls.key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        # The underlying message may quote parts of the key; keep it out of status and logs.
        raise CertificateAuthorityError(
            "the client CA key is not a readable PEM private key"
        ) from None
    if not isinstance(key, _SigningKey):
        raise CertificateAuthorityError(
            f"the client CA key type {type(key).__name__} cannot sign certificates here:"
            " use an RSA, EC or Ed25519 key"
        )
    return key


def _public_der(key: object) -> bytes:
    der: bytes = key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _check_key_matches(ca_cert: x509.Certificate, ca_key: _SigningKey) -> None:
    if _public_der(ca_cert.public_key()) != _public_der(ca_key.public_key()):
        raise CertificateAuthorityError(
            "the client CA key does not belong to the client CA certificate (tls.key and"
            f" tls.crt of the Secret do not match; certificate subject"
            f" {ca_cert.subject.rfc4514_string()})"
        )


def _extension(certificate: x509.Certificate, kind: type) -> object | None:
    try:
        return certificate.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _check_can_sign(ca_cert: x509.Certificate) -> None:
    # Absent extensions are tolerated: old v1 roots carry none, and OpenSSL accepts them.
    constraints = _extension(ca_cert, x509.BasicConstraints)
    if constraints is not None and not constraints.ca:  # type: ignore[attr-defined]
        raise CertificateAuthorityError(
            f"the client CA certificate {ca_cert.subject.rfc4514_string()} is not a CA"
            " (basicConstraints CA:FALSE): PostgreSQL would reject what it signs"
        )
    usage = _extension(ca_cert, x509.KeyUsage)
    if usage is not None and not usage.key_cert_sign:  # type: ignore[attr-defined]
        raise CertificateAuthorityError(
            f"the client CA certificate {ca_cert.subject.rfc4514_string()} may not sign"
            " certificates (keyUsage lacks keyCertSign)"
        )


def _check_valid_now(ca_cert: x509.Certificate, now: datetime) -> None:
    if now >= ca_cert.not_valid_after_utc:
        raise CertificateAuthorityError(
            f"the client CA certificate expired at {ca_cert.not_valid_after_utc.isoformat()}:"
            " renew it in the Secret named by credentials.clientCASecretRef"
        )
    if now < ca_cert.not_valid_before_utc - CLOCK_SKEW:
        raise CertificateAuthorityError(
            "the client CA certificate is not valid before"
            f" {ca_cert.not_valid_before_utc.isoformat()}"
        )


def ca_not_after(ca_cert_pem: bytes) -> datetime:
    """When the client CA expires (UTC): no session certificate can be valid beyond it."""
    return _load_ca_certificates(ca_cert_pem)[0].not_valid_after_utc


# --------------------------------------------------------------------------------------------
# Issuing


def _check_common_name(common_name: str) -> None:
    size = len(common_name.encode("utf-8"))
    if not 0 < size <= MAX_COMMON_NAME_BYTES:
        raise ValueError(
            f"the certificate CN must be a PostgreSQL user name of 1 to {MAX_COMMON_NAME_BYTES}"
            f" bytes in UTF-8, got {size} bytes"
        )
    if "\x00" in common_name:
        raise ValueError("the certificate CN cannot contain a NUL character")


def _aware(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return moment.astimezone(timezone.utc)


# The hashes ``CertificateBuilder.sign`` accepts (its stubs name them; the base class is too wide).
_SignatureHash = hashes.SHA256 | hashes.SHA384 | hashes.SHA512


def _signature_hash(ca_key: _SigningKey) -> _SignatureHash | None:
    if isinstance(ca_key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None  # EdDSA hashes internally
    if isinstance(ca_key, ec.EllipticCurvePrivateKey):
        # Match the hash strength to the curve, as RFC 5480 recommends.
        if ca_key.curve.key_size > 384:
            return hashes.SHA512()
        if ca_key.curve.key_size > 256:
            return hashes.SHA384()
    return hashes.SHA256()


def _authority_key_identifier(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    # Reuse the CA's own SKI when it has one: that is the value path builders look up.
    ski = _extension(ca_cert, x509.SubjectKeyIdentifier)
    if isinstance(ski, x509.SubjectKeyIdentifier):
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(
        ca_cert.public_key()  # type: ignore[arg-type]  # a CA key is never X25519/X448
    )


def _is_self_signed(certificate: x509.Certificate) -> bool:
    if certificate.issuer != certificate.subject:
        return False
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def issue_client_certificate(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    common_name: str,
    not_after: datetime,
    now: datetime | None = None,
) -> IssuedCertificate:
    """Sign a new client certificate for PostgreSQL user ``common_name`` until ``not_after``.

    ``ca_cert_pem`` and ``ca_key_pem`` are the client CA's ``tls.crt`` and ``tls.key``. Raises
    :class:`CertificateAuthorityError` when the CA cannot issue (see module doc) and ValueError
    for a bad name or an expiry that is not in the future.
    """
    now = _aware(now or datetime.now(timezone.utc), "now")
    requested_not_after = _aware(not_after, "not_after")
    _check_common_name(common_name)
    if requested_not_after <= now:
        raise ValueError("the certificate's expiry must be in the future")

    ca_chain = _load_ca_certificates(ca_cert_pem)
    ca_cert = ca_chain[0]
    ca_key = _load_ca_key(ca_key_pem)
    _check_key_matches(ca_cert, ca_key)
    _check_can_sign(ca_cert)
    _check_valid_now(ca_cert, now)

    effective_not_after = min(requested_not_after, ca_cert.not_valid_after_utc)
    # Starting before the issuer does is pointless and trips strict verifiers.
    not_before = max(now - CLOCK_SKEW, ca_cert.not_valid_before_utc)

    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(effective_not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_identifier(ca_cert), critical=False)
        .sign(ca_key, _signature_hash(ca_key))
    )

    intermediates = [c for c in ca_chain if not _is_self_signed(c)]
    cert_pem = b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in [certificate, *intermediates]
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return IssuedCertificate(
        cert_pem=cert_pem,
        key_pem=key_pem,
        not_after=certificate.not_valid_after_utc,
        capped=effective_not_after < requested_not_after,
    )
