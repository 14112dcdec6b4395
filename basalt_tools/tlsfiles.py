"""TLS material for a local NATS: a private CA and a server certificate it signs, written
once into a folder and kept (does I/O). Used by `basalt up --nats-tls` and the tests."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from basalt.natsauth import TlsFiles
from basalt.secretfiles import write_private

VALID_DAYS = 365


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def make_tls_files(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
                   verify_clients: bool = False) -> TlsFiles:
    """`folder/ca.pem`, `server.pem`, `server-key.pem` (0600): made when missing."""
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "server.pem", folder / "server-key.pem"
    if not (ca_file.exists() and cert_file.exists() and key_file.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        until = now + datetime.timedelta(days=VALID_DAYS)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (x509.CertificateBuilder().subject_name(_name("basalt local CA"))
              .issuer_name(_name("basalt local CA")).public_key(ca_key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(now)
              .not_valid_after(until)
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for h in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                names.append(x509.DNSName(h))
        cert = (x509.CertificateBuilder().subject_name(_name(hosts[0]))
                .issuer_name(ca.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now)
                .not_valid_after(until)
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .sign(ca_key, hashes.SHA256()))
        ca_file.write_text(ca.public_bytes(serialization.Encoding.PEM).decode())
        cert_file.write_text(cert.public_bytes(serialization.Encoding.PEM).decode())
        write_private(key_file, _pem_key(key))
    return TlsFiles(str(cert_file), str(key_file), str(ca_file), verify_clients)
