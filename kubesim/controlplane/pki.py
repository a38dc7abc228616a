"""A throwaway PKI for one control plane: a CA, serving and client certificates, service-account keys.

Everything is generated at start and lives in the control plane's work directory (mode 0600 keys); nothing
is reused between runs. ECDSA P-256 keeps generation fast (RSA-2048 only for the service-account key pair,
the type every Kubernetes client and token verifier expects).
"""
from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=7)  # a control plane for tests; a week covers any session


@dataclass(frozen=True)
class CertFiles:
    cert: str
    key: str


def _write(path: str, data: bytes, private: bool = False) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    return x509.Name(attrs + [x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class Pki:
    """Issues certificates from one CA into `directory`."""

    def __init__(self, directory: str, ca_name: str = "kubesim-ca"):
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)
        self._not_before = now - datetime.timedelta(minutes=5)  # tolerate small clock differences
        self._not_after = now + _VALIDITY
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(ca_name)
        self._ca_cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self._ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before).not_valid_after(self._not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._ca_key.public_key()), critical=False)
            .sign(self._ca_key, hashes.SHA256()))
        self.ca = CertFiles(_write(self._path("ca.crt"), self._ca_cert.public_bytes(serialization.Encoding.PEM)),
                            _write(self._path("ca.key"), _key_pem(self._ca_key), private=True))

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def issue(self, name: str, common_name: str, organizations: tuple[str, ...] = (), *,
              server: bool = False, client: bool = False, dns_names: tuple[str, ...] = (),
              ips: tuple[str, ...] = ()) -> CertFiles:
        """A leaf certificate `<name>.crt`/`<name>.key` for serving (SANs) and/or client authentication."""
        key = ec.generate_private_key(ec.SECP256R1())
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
                 ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        builder = (
            x509.CertificateBuilder().subject_name(_name(common_name, organizations))
            .issuer_name(self._ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before).not_valid_after(self._not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),
                           critical=False))
        if dns_names or ips:
            sans = [x509.DNSName(d) for d in dns_names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._ca_key, hashes.SHA256())
        return CertFiles(_write(self._path(f"{name}.crt"), cert.public_bytes(serialization.Encoding.PEM)),
                         _write(self._path(f"{name}.key"), _key_pem(key), private=True))

    def service_account_keys(self) -> CertFiles:
        """The key pair the API server signs service-account tokens with (cert = the public key, PEM)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        return CertFiles(_write(self._path("sa.pub"), public),
                         _write(self._path("sa.key"), _key_pem(key), private=True))
