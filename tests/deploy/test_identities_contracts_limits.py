"""Fast checks of the deployment pieces: certificates, data contracts, local limits."""

from __future__ import annotations

import stat

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from fedready import constants as K
from fedready.cli import app
from fedready.client.limits import LocalLedger, Release, load_limits
from fedready.client.site import Site
from fedready.contract import validate_contract
from fedready.data import Table
from fedready.datasets.adult import adult_schema
from fedready.deploy.certs import generate_certificates
from fedready.errors import ConfigError
from fedready.schema import DataContract


def test_certificates_have_sans_and_owner_only_private_keys(tmp_path):
    made = generate_certificates(tmp_path, hosts=["127.0.0.1", "localhost"], nodes=2)
    cert = x509.load_pem_x509_certificate(made.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    ca = x509.load_pem_x509_certificate(made.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    for path in [made.ca_key, made.server_key] + [p for p, _ in made.node_keys]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # the formats Flower's node authentication reads
    serialization.load_ssh_private_key(made.node_keys[0][0].read_bytes(), None)
    serialization.load_ssh_public_key(made.node_keys[0][1].read_bytes())


def _table(n: int, *, missing_age: int = 0, positive: int | None = None, odd_sex: int = 0) -> Table:
    schema = adult_schema()
    cols = {}
    for c in schema.columns:
        first = str(getattr(c, "min", "")) if c.kind == "numeric" else c.categories[0]
        cols[c.name] = np.array([first] * n)
    cols["age"][:missing_age] = ""
    cols["sex"][:odd_sex] = "unknown-value"
    pos = n // 2 if positive is None else positive
    cols["income"] = np.array([">50K"] * pos + ["<=50K"] * (n - pos))
    return Table(cols)


@pytest.mark.parametrize(
    ("table", "contract", "expected"),
    [
        (_table(100), DataContract(min_rows=10), []),
        (_table(5), DataContract(min_rows=10), ["*:min-rows"]),
        (_table(100, missing_age=10), DataContract(max_missing_rate=0.05), ["age:missing-rate"]),
        (_table(100, missing_age=10), DataContract(missing_rate={"age": 0.2}), []),
        (_table(100, odd_sex=1), DataContract(), ["sex:invalid-rate"]),
        (_table(100, positive=2), DataContract(min_positive_rate=0.05), ["income:positive-rate"]),
    ],
)
def test_contract_names_each_broken_limit(table, contract, expected):
    schema = adult_schema().model_copy(update={"contract": contract})
    report = validate_contract(table, schema)
    assert report.summary() == ", ".join(expected)
    assert report.ok == (not expected)


def test_contract_report_reads_column_rows_and_limit():
    schema = adult_schema().model_copy(update={"contract": DataContract(max_missing_rate=0.05)})
    report = validate_contract(_table(100, missing_age=10), schema)
    assert report.lines() == ["column 'age': 10 of 100 rows (10.0%) missing, limit 5.0%"]


def test_limits_resolve_paths_and_refuse_bad_values(tmp_path):
    (tmp_path / "limits.toml").write_text("max-epsilon = 2.0\nmax_delta = 1e-5\n")
    limits = load_limits(tmp_path / "limits.toml")
    assert limits.ledger == tmp_path / "ledger.json" and limits.max_epsilon == 2.0
    (tmp_path / "bad.toml").write_text("max_epsilon = -1\nmax_delta = 1e-5\n")
    with pytest.raises(ConfigError, match="max_epsilon"):
        load_limits(tmp_path / "bad.toml")


def test_local_ledger_persists_and_refuses_past_the_lifetime_limit(tmp_path):
    csv = tmp_path / "local.csv"
    table = _table(200)
    names = list(table.columns)
    csv.write_text(",".join(names) + "\n" + "\n".join(",".join(str(table.columns[n][i]) for n in names)
                                                       for i in range(200)) + "\n")  # fmt: skip
    (tmp_path / "limits.toml").write_text("max_epsilon = 1.0\nmax_delta = 1e-5\n")
    site = Site(data_path=csv, schema=adult_schema(), limits=load_limits(tmp_path / "limits.toml"))
    step = (2.0, 0.05, 4)
    assert site.privacy_refusal(requested_delta=1e-5, accountant="rdp", step=step) is None
    assert site.privacy_refusal(requested_delta=1e-3, accountant="rdp", step=step)[0] == K.LOCAL_LIMIT
    rounds = 0
    while site.privacy_refusal(requested_delta=1e-5, accountant="rdp", step=step) is None:
        rounds += 1
        site.record_release(run="r1", server_round=rounds, step=step)
    reason, _ = site.privacy_refusal(requested_delta=1e-5, accountant="rdp", step=step)
    assert reason == K.BUDGET_EXHAUSTED and rounds >= 1
    again = LocalLedger(tmp_path / "ledger.json")  # a new run reads the same lifetime spending
    assert len(again.releases) == rounds and isinstance(again.releases[0], Release)
    assert again.epsilon(delta=1e-5, accountant="rdp") <= 1.0
    assert CliRunner().invoke(app, ["audit", "verify", str(tmp_path / "audit.jsonl")]).exit_code == 0
