from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store

from pgjit.core.certificates import (
    CLOCK_SKEW,
    CertificateAuthorityError,
    ca_not_after,
    issue_client_certificate,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
SESSION_END = NOW + timedelta(hours=1)


def pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(key=None, *, name="pgjit test client CA", not_before=NOW - timedelta(days=1),
            not_after=NOW + timedelta(days=365), issuer=None, ca=True, key_cert_sign=True,
            with_ski=True):
    """A CA certificate (self-signed unless ``issuer=(cert, key)``) and its key."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer or (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=key_cert_sign,
                          crl_sign=key_cert_sign, encipher_only=False, decipher_only=False),
            critical=True,
        )
    )
    if with_ski:
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                        critical=False)
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()),
            critical=False,
        )
    algorithm = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = builder.sign(issuer_key, algorithm)
    return cert, key


def issue(ca_cert, ca_key, name="alice@example.com", not_after=SESSION_END, now=NOW):
    return issue_client_certificate(ca_cert.public_bytes(serialization.Encoding.PEM), pem_key(ca_key),
                                    name, not_after, now=now)


def leaf_of(issued):
    return x509.load_pem_x509_certificates(issued.cert_pem)[0]


def verify_as_client(issued, root, at=NOW + timedelta(minutes=1)):
    """Path validation with RFC 5280 client policy, as a TLS server would do it.

    The Web PKI defaults require a subjectAltName on the leaf; PostgreSQL authenticates by CN and
    needs none, so that one extension is made optional. Everything else (EKU clientAuth, key
    usage, basic constraints, AKI, validity, signatures along the chain) is checked as is.
    """
    chain = x509.load_pem_x509_certificates(issued.cert_pem)
    ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    verifier = (
        PolicyBuilder()
        .store(Store([root]))
        .time(at)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy)
        .build_client_verifier()
    )
    return verifier.verify(chain[0], chain[1:])


@pytest.mark.parametrize(
    "ca_key",
    [
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ed25519.Ed25519PrivateKey.generate(),
    ],
    ids=["ec-p256", "ec-p384", "rsa-2048", "ed25519"],
)
def test_issued_certificate_fields_and_signature(ca_key):
    ca_cert, _ = make_ca(ca_key)
    issued = issue(ca_cert, ca_key)
    leaf = leaf_of(issued)

    leaf.verify_directly_issued_by(ca_cert)
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice@example.com"
    assert leaf.issuer == ca_cert.subject
    assert leaf.not_valid_before_utc == NOW - CLOCK_SKEW
    assert leaf.not_valid_after_utc == SESSION_END == issued.not_after
    assert not issued.capped
    assert leaf.serial_number > 0
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert leaf.public_key().curve.name == "secp256r1"

    ext = leaf.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest

    if not isinstance(ca_key, ed25519.Ed25519PrivateKey):  # no client policy support for EdDSA
        verify_as_client(issued, ca_cert)


def test_private_key_matches_certificate_and_is_pkcs8():
    ca_cert, ca_key = make_ca()
    issued = issue(ca_cert, ca_key)
    assert issued.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(issued.key_pem, password=None)
    assert key.public_key() == leaf_of(issued).public_key()


def test_rsa_ca_signature_is_pkcs1v15_sha256():
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_cert, _ = make_ca(ca_key)
    leaf = leaf_of(issue(ca_cert, ca_key))
    ca_key.public_key().verify(leaf.signature, leaf.tbs_certificate_bytes, padding.PKCS1v15(),
                               hashes.SHA256())


def test_ec_hash_matches_curve():
    ca_cert, ca_key = make_ca(ec.generate_private_key(ec.SECP384R1()))
    assert isinstance(leaf_of(issue(ca_cert, ca_key)).signature_hash_algorithm, hashes.SHA384)


def test_serials_are_random():
    ca_cert, ca_key = make_ca()
    serials = {leaf_of(issue(ca_cert, ca_key)).serial_number for _ in range(5)}
    assert len(serials) == 5


@pytest.mark.parametrize(
    "name",
    ["ü" * 31 + "x", "名" * 21, "a" * 63, "system:serviceaccount:ns:sa", "with space, comma+plus=\"q\""],
)
def test_common_name_round_trips_utf8(name):
    assert len(name.encode("utf-8")) <= 63
    ca_cert, ca_key = make_ca()
    attr = leaf_of(issue(ca_cert, ca_key, name)).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0]
    assert attr.value == name
    # UTF8String (tag 12): PostgreSQL compares the CN's bytes with the user name's UTF-8 bytes.
    assert attr._type.value == 12


@pytest.mark.parametrize("name", ["", "a" * 64, "ü" * 32, "nul\x00byte"])
def test_common_name_that_is_no_postgres_name_is_refused(name):
    ca_cert, ca_key = make_ca()
    with pytest.raises(ValueError, match="CN"):
        issue(ca_cert, ca_key, name)


def test_mismatched_key_is_a_clear_error():
    ca_cert, _ = make_ca()
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(CertificateAuthorityError, match="does not belong to the client CA certificate"):
        issue(ca_cert, other)


def test_mismatched_key_type_is_a_clear_error():
    ca_cert, _ = make_ca()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(CertificateAuthorityError, match="does not belong"):
        issue(ca_cert, other)


def test_ca_expiring_before_the_session_caps_not_after():
    ca_end = NOW + timedelta(minutes=30)
    ca_cert, ca_key = make_ca(not_after=ca_end)
    assert ca_not_after(ca_cert.public_bytes(serialization.Encoding.PEM)) == ca_end
    issued = issue(ca_cert, ca_key)
    assert issued.capped
    assert issued.not_after == ca_end == leaf_of(issued).not_valid_after_utc
    verify_as_client(issued, ca_cert, at=ca_end - timedelta(seconds=1))


def test_expired_ca_is_refused():
    ca_cert, ca_key = make_ca(not_before=NOW - timedelta(days=10), not_after=NOW - timedelta(days=1))
    with pytest.raises(CertificateAuthorityError, match="expired"):
        issue(ca_cert, ca_key)


def test_not_yet_valid_ca_is_refused():
    ca_cert, ca_key = make_ca(not_before=NOW + timedelta(hours=1))
    with pytest.raises(CertificateAuthorityError, match="not valid before"):
        issue(ca_cert, ca_key)


def test_leaf_never_starts_before_the_ca():
    ca_start = NOW - timedelta(minutes=1)
    ca_cert, ca_key = make_ca(not_before=ca_start)
    assert leaf_of(issue(ca_cert, ca_key)).not_valid_before_utc == ca_start


def test_non_ca_certificate_is_refused():
    ca_cert, ca_key = make_ca(ca=False, key_cert_sign=False)
    with pytest.raises(CertificateAuthorityError, match="not a CA"):
        issue(ca_cert, ca_key)


def test_ca_without_cert_sign_usage_is_refused():
    ca_cert, ca_key = make_ca(key_cert_sign=False)
    with pytest.raises(CertificateAuthorityError, match="keyCertSign"):
        issue(ca_cert, ca_key)


def test_expiry_in_the_past_is_refused():
    ca_cert, ca_key = make_ca()
    with pytest.raises(ValueError, match="future"):
        issue(ca_cert, ca_key, not_after=NOW)


def test_naive_times_are_refused():
    ca_cert, ca_key = make_ca()
    with pytest.raises(ValueError, match="timezone-aware"):
        issue(ca_cert, ca_key, not_after=datetime(2030, 1, 1))


def test_unreadable_inputs_are_clear_errors():
    ca_cert, ca_key = make_ca()
    cert_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CertificateAuthorityError, match="not a readable PEM certificate"):
        issue_client_certificate(b"garbage", pem_key(ca_key), "alice", SESSION_END, now=NOW)
    with pytest.raises(CertificateAuthorityError, match="not a readable PEM private key"):
        issue_client_certificate(cert_pem, b"garbage", "alice", SESSION_END, now=NOW)
    encrypted = ca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.BestAvailableEncryption(b"pass"))
    with pytest.raises(CertificateAuthorityError, match="encrypted"):
        issue_client_certificate(cert_pem, encrypted, "alice", SESSION_END, now=NOW)


def test_ca_without_ski_still_gets_an_aki():
    ca_cert, ca_key = make_ca(with_ski=False)
    aki = leaf_of(issue(ca_cert, ca_key)).extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    expected = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())
    assert aki.value.key_identifier == expected.key_identifier


def test_intermediate_ca_chain_is_appended_without_the_root():
    root_cert, root_key = make_ca(name="root")
    inter_cert, inter_key = make_ca(name="intermediate", issuer=(root_cert, root_key))
    bundle = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (inter_cert, root_cert))
    issued = issue_client_certificate(bundle, pem_key(inter_key), "alice", SESSION_END, now=NOW)
    chain = x509.load_pem_x509_certificates(issued.cert_pem)
    assert [c.subject for c in chain[1:]] == [inter_cert.subject]
    verify_as_client(issued, root_cert)


def test_self_signed_ca_is_not_appended():
    ca_cert, ca_key = make_ca()
    assert len(x509.load_pem_x509_certificates(issue(ca_cert, ca_key).cert_pem)) == 1
