"""Identities for a deployment: a CA, the SuperLink's TLS certificate, SuperNode key pairs.

Notes
-----
TLS: the SuperLink presents a certificate signed by the federation's own CA, with
every host name and IP address clients dial as subject alternative names (RFC 6125:
clients match SANs, not the common name). SuperNodes pin that CA with
``--root-certificates``.

Names: every ``--host`` goes into the SANs, internationalised names as their IDNA A-label
(``bücher.example`` -> ``xn--bcher-kva.example``, RFC 5891), each label at most 63 and the
name at most 253 characters (RFC 1035). The subject's common name is limited to 64 characters
(RFC 5280, ``ub-common-name``), so it holds the first host only when that fits, otherwise
``fedready SuperLink``: no client reads it.

Keys are never replaced silently: a CA or node key in use is what every client and the
SuperLink's node registry trust, so writing over one needs ``force``.

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
    notes: tuple[str, ...] = ()  # how a host name was written (IDNA A-label, common name shortened)


_CN_MAX = 64  # RFC 5280 ub-common-name
_FALLBACK_CN = "fedready SuperLink"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # mode 0600 from the start, and never half a key


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


def _san(host: str) -> tuple[x509.GeneralName, str]:
    """The SAN of one ``--host`` value and the name as written (IP, or DNS name as an IDNA A-label).

    Raises
    ------
    ConfigError
        For an empty name, or one that is not a host name (a label over 63 characters, a name
        over 253, characters other than letters, digits and hyphens).
    """
    name = host.strip()
    if not name:
        raise ConfigError("host", "an empty --host; give the host name or IP address clients dial, e.g. "
                                  "--host fl.example.org")  # fmt: skip
    try:
        return x509.IPAddress(ipaddress.ip_address(name)), name
    except ValueError:
        pass
    name = name.rstrip(".")
    try:
        ascii_name = name.encode("idna").decode("ascii").lower()
    except UnicodeError as e:
        raise ConfigError("host", f"{host!r} is not a host name ({e}); each dot-separated label has 1-63 "
                                  "characters") from None  # fmt: skip
    labels = ascii_name.split(".")
    wildcard = labels[0] == "*" and len(labels) > 1
    ok = all(lab and len(lab) <= 63 and all(c.isalnum() or c == "-" for c in lab) and not lab.startswith("-")
             and not lab.endswith("-") for lab in labels[1 if wildcard else 0:])  # fmt: skip
    if not ok or len(ascii_name) > 253:
        raise ConfigError("host", f"{host!r} is not a host name: labels of 1-63 letters, digits or hyphens "
                                  "(not at either end), at most 253 characters in all")  # fmt: skip
    return x509.DNSName(ascii_name), ascii_name


def generate_node_key(out: Path, name: str) -> tuple[Path, Path]:
    """Write a SuperNode key pair ``NAME.key`` (0600) and ``NAME.pub`` (OpenSSH format)."""
    key = ec.generate_private_key(ec.SECP384R1())
    priv, pub = Path(out) / f"{name}.key", Path(out) / f"{name}.pub"
    _write_private(priv, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))  # fmt: skip
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                  serialization.PublicFormat.OpenSSH) + b"\n")  # fmt: skip
    return priv, pub


def generate_certificates(out: Path, *, hosts: list[str], nodes: int, days: int = _VALID_DAYS,
                          force: bool = False) -> Certificates:  # fmt: skip
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
    force : bool
        Replace a CA, server or node key already in ``out`` (otherwise refused).

    Raises
    ------
    ConfigError
        If no host is given, a host is empty or not a host name, ``nodes`` is negative, ``out``
        is a file, or ``out`` already holds a key or certificate and ``force`` is not set.
    """
    if not hosts:
        raise ConfigError("host", "give at least one --host the SuperLink is reached at, e.g. --host 127.0.0.1")
    if nodes < 0:
        raise ConfigError("nodes", f"must be >= 0, got {nodes}")
    sans = [_san(h) for h in hosts]
    notes = [f"host {h!r} is written as its IDNA A-label {name}" for h, (_, name) in zip(hosts, sans, strict=True)
             if name.startswith("xn--") or ".xn--" in name]  # fmt: skip
    common_name = sans[0][1] if len(sans[0][1]) <= _CN_MAX else _FALLBACK_CN
    if common_name != sans[0][1]:
        notes.append(f"the common name is '{_FALLBACK_CN}': {sans[0][1]!r} is longer than {_CN_MAX} characters; "
                     "clients match the subject alternative names, which hold every --host")  # fmt: skip
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} is a file; pass a folder for the certificates and keys")
    names = ["ca.crt", "ca.key", "server.crt", "server.key"]
    names += [f"node-{i}.{ext}" for i in range(1, nodes + 1) for ext in ("key", "pub")]
    present = [n for n in names if (out / n).exists()]
    if present and not force:
        raise ConfigError("out", f"{out} already holds {', '.join(present[:4])}{' ...' if len(present) > 4 else ''}; "
                                 "replacing them breaks every client that trusts this CA and every registered node "
                                 "key: pick another --out, or pass --force to replace them")  # fmt: skip
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
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(g for g, _ in sans))), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = Certificates(out / "ca.crt", out / "ca.key", out / "server.crt", out / "server.key", [], tuple(notes))
    _write_private(paths.ca_key, _pem_key(ca_key))
    _write_private(paths.server_key, _pem_key(server_key))
    paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    for i in range(1, nodes + 1):
        paths.node_keys.append(generate_node_key(out, f"node-{i}"))
    return paths
