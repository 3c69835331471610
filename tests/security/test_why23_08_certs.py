"""Issue 23, Why 8: ``fedready certs`` replaced keys silently, and crashed on long, IDN and empty host names.

Re-running it over a folder replaced ``ca.key``, ``server.key`` and the node keys (every client trusting
the CA and every registered node key broke without a word); a valid FQDN over 64 characters, an IDN name
or an empty host raised a traceback, because ``hosts[0]`` became the common name.
"""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.security.conftest import assert_one_line_error, cli

LONG = "a" * 60 + ".fleet.example.org"  # a valid FQDN of 78 characters


def _cert(folder):
    return x509.load_pem_x509_certificate((folder / "server.crt").read_bytes())


def test_why23_08_rerunning_certs_does_not_replace_keys_without_force(tmp_path):
    out = tmp_path / "certs"
    assert cli("certs", "--out", out, "--host", "127.0.0.1", "--nodes", "2")[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, output = cli("certs", "--out", out, "--host", "127.0.0.1", "--nodes", "2")
    assert_one_line_error(code, output, expect="already holds ca.crt, ca.key, server.crt, server.key ...")
    assert "--force" in output and {p.name: p.read_bytes() for p in out.iterdir()} == before
    code, output = cli("certs", "--out", out, "--host", "127.0.0.1", "--nodes", "3")  # a new node: still refused
    assert code == 2 and (out / "ca.key").read_bytes() == before["ca.key"]
    code, output = cli("certs", "--out", out, "--host", "127.0.0.1", "--nodes", "2", "--force")
    assert code == 0 and (out / "ca.key").read_bytes() != before["ca.key"]
    assert (out / "ca.key").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("host", "san", "note"), [
    (LONG, LONG, "the common name is 'fedready SuperLink'"),
    ("bücher.example", "xn--bcher-kva.example", "IDNA A-label xn--bcher-kva.example"),
    ("ÉCOLE.example.", "xn--cole-9oa.example", "IDNA A-label"),
])  # fmt: skip
def test_why23_08_long_and_idn_host_names_become_sans_with_a_short_common_name(tmp_path, host, san, note):
    code, output = cli("certs", "--out", tmp_path / "c", "--host", host, "--host", "10.0.0.5")
    assert code == 0 and "Traceback" not in output and note in output, output
    cert = _cert(tmp_path / "c")
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [san]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    (cn,) = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert len(cn.value) <= 64


@pytest.mark.parametrize(("host", "words"), [
    ("", "an empty --host"),
    ("   ", "an empty --host"),
    ("a" * 64 + ".example.org", "each dot-separated label has 1-63 characters"),
    ("bad_name!.example", "is not a host name"),
    (".".join(["abcdefgh"] * 30), "at most 253 characters"),
])  # fmt: skip
def test_why23_08_empty_or_invalid_host_names_are_one_line(tmp_path, host, words):
    code, output = cli("certs", "--out", tmp_path / "c", "--host", host)
    assert_one_line_error(code, output, expect=words)
    assert code == 2 and not (tmp_path / "c" / "ca.key").exists()
