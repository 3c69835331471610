"""Identities for a deployment: a CA, the SuperLink's TLS certificate, SuperNode key pairs.

Notes
-----
TLS: the SuperLink presents a certificate signed by the federation's own CA, with
every host name and IP address clients dial as subject alternative names (RFC 6125:
clients match SANs, not the common name). SuperNodes pin that CA with
``--root-certificates``.

Node authentication: each SuperNode holds an EC (NIST P-384) key pair in OpenSSH
format, the format Flower's ``flwr supernode register`` and ``flower-supernode
--auth-supernode-private-key`` read. With ``--enable-supernode-auth`` only registered
public keys may connect. Private keys are written with mode 0600 from the start (never
world-readable, even briefly).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedready.errors import ConfigError

__all__ = ["Certificates", "generate_certificates", "generate_node_key"]

_VALID_DAYS = 365


@dataclass(frozen=True)
class Certificates:
    """Paths written by :func:`generate_certificates`."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    node_keys: list[tuple[Path, Path]]  # (private, public) per SuperNode


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def generate_node_key(out: Path, name: str) -> tuple[Path, Path]:
    """Write a SuperNode key pair ``NAME.key`` (0600) and ``NAME.pub`` (OpenSSH format)."""
    key = ec.generate_private_key(ec.SECP384R1())
    priv, pub = Path(out) / f"{name}.key", Path(out) / f"{name}.pub"
    _write_private(priv, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))  # fmt: skip
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                  serialization.PublicFormat.OpenSSH) + b"\n")  # fmt: skip
    return priv, pub


def generate_certificates(out: Path, *, hosts: list[str], nodes: int, days: int = _VALID_DAYS) -> Certificates:
    """Create ``ca.crt``/``ca.key``, ``server.crt``/``server.key`` and ``node-<i>.key``/``.pub``.

    Parameters
    ----------
    out : Path
        Folder to write into (created).
    hosts : list of str
        Host names and IP addresses the SuperLink is reached at; each becomes a SAN.
    nodes : int
        Number of SuperNode key pairs (``node-1`` ... ``node-N``).
    days : int
        Validity of the certificates.

    Raises
    ------
    ConfigError
        If no host is given or ``nodes`` is negative.
    """
    if not hosts:
        raise ConfigError("host", "give at least one --host the SuperLink is reached at, e.g. --host 127.0.0.1")
    if nodes < 0:
        raise ConfigError("nodes", f"must be >= 0, got {nodes}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedready federation CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = Certificates(out / "ca.crt", out / "ca.key", out / "server.crt", out / "server.key", [])
    _write_private(paths.ca_key, _pem_key(ca_key))
    _write_private(paths.server_key, _pem_key(server_key))
    paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    for i in range(1, nodes + 1):
        paths.node_keys.append(generate_node_key(out, f"node-{i}"))
    return paths
