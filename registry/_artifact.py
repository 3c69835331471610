"""Signed, versioned model artifacts: operator keys, ``package`` and ``verify``.

An artifact is a folder named after its version. Every file in it is covered by one
OpenSSF model-signing bundle (``model.sig``: a Sigstore bundle holding a DSSE envelope
over an in-toto statement that lists each file's sha256), signed with the operator's
ECDSA P-256 key.

Notes
-----
Verification checks the signature against the operator's public key *before* comparing
any file digest, so a digest list is only trusted once it is known to come from the
operator. Extra files are refused as well as changed or missing ones: a device never
loads a file nobody signed.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from fedready.constants import LEDGER_FILE
from fedready.errors import ConfigError, IntegrityError
from fedready.intervals import worst_decision
from fedready.monitoring.profile import PROFILE_FILE  # the reference for drift monitoring, when the run has one
from fedready.registry._canonical import (
    artifact_files,
    check_file_name,
    check_version,
    file_sha256,
    json_digest,
    read_json,
    write_json,
)

__all__ = [
    "MODEL_FILE",
    "PROFILE_FILE",
    "PROVENANCE_FILE",
    "SCHEMA_FILE",
    "SIGNATURE_FILE",
    "THRESHOLDS_FILE",
    "Provenance",
    "check_coverage",
    "generate_keys",
    "package_run",
    "payload_digests",
    "sign_artifact",
    "verify_artifact",
]

MODEL_FILE = "model.onnx"
SCHEMA_FILE = "schema.json"
PROVENANCE_FILE = "provenance.json"
SIGNATURE_FILE = "model.sig"
THRESHOLDS_FILE = "thresholds.json"
CONFIG_FILE = "config.json"
LEDGER_SUMMARY_FILE = "ledger_summary.json"
TRAINING_SUMMARY_FILE = "training_summary.json"
COMPRESSION_FILE = "compression.json"  # written by `fedready compress` (issue 5) when it ran
# Produced by `fedready evaluate` (issue 4) when it was run; copied as they are.
_EVALUATION_FILES = ("evaluation.json", "model_card.md", "model_card.html", THRESHOLDS_FILE)
_RUNTIME_PACKAGES = ("fedready", "flwr", "torch", "opacus", "onnx", "onnxruntime", "model-signing", "tuf")


@dataclass(frozen=True)
class Provenance:
    """Where an artifact came from; written as ``provenance.json`` and covered by the signature.

    Unknown keys read from a newer fedready are kept in ``extra`` and written back unchanged.
    """

    version: str
    run_id: str
    model_digest: str  # sha256 of the trained weights (model.npz arrays), as in summary.json
    config_digest: str  # sha256 of the canonical run configuration
    schema_digest: str
    fedready_version: str | None
    git_commit: str | None
    packages: dict[str, str | None]
    parent_version: str | None
    evaluation: str  # the release decision: "passed" | "undecided" | "failed" | "not-run"
    compression: dict[str, Any]  # {"status": "not-run"} or what compression.json selected
    data_fingerprints: dict[str, Any] | None  # what clients reported; None: this run recorded none
    created: str
    # the run's audit log when packaged: {"lines", "head", "key"} (fedready.audit.Anchor); None: no log
    audit: dict[str, Any] | None = None
    # what an undecided release may reach, from the gate policy: "canary" | "block" | "stable"; None: a record
    # written before the field existed (read as "canary", and kept absent so its bytes round-trip)
    undecided_allows: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form (``extra`` merged back at the top level; optional fields only when set)."""
        out = {k: v for k, v in self.__dict__.items()
               if k != "extra" and not (k in ("audit", "undecided_allows") and v is None)}  # fmt: skip
        return {**self.extra, **out}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Provenance:
        """Build from JSON, keeping unknown keys; a missing key is an :class:`IntegrityError`."""
        import dataclasses

        fields = [f for f in dataclasses.fields(cls) if f.name != "extra"]
        names = [f.name for f in fields]
        if not isinstance(data, dict):
            raise IntegrityError(f"provenance.json is a JSON {type(data).__name__}, not an object")
        required = [f.name for f in fields if f.default is dataclasses.MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise IntegrityError(f"provenance.json lacks {missing}")
        return cls(**{n: data[n] for n in names if n in data},
                   extra={k: v for k, v in data.items() if k not in names})  # fmt: skip

    @property
    def undecided_reach(self) -> str:
        """What an undecided release may reach: the recorded policy, ``"canary"`` for a record that predates it."""
        return self.undecided_allows or "canary"

    @property
    def gates_passed(self) -> bool:
        """True only when an evaluation ran and passed its gates."""
        return self.evaluation == "passed"


def generate_keys(out: Path, *, name: str = "signing") -> tuple[Path, Path]:
    """Write a new ECDSA P-256 key pair as ``<name>.key`` (PKCS#8 PEM, mode 0600) and ``<name>.pub``.

    Raises
    ------
    ConfigError
        If either file already exists (keys are never overwritten).
    """
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} is a file; pass a folder for {name}.key and {name}.pub")
    priv, pub = out / f"{name}.key", out / f"{name}.pub"
    for p in (priv, pub):
        if p.exists():
            raise ConfigError("out", f"{p} already exists; keys are never overwritten, pick another folder")
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub.write_bytes(key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def _git_commit() -> str | None:
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=10, check=False)  # fmt: skip
    except OSError:
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def _version_of(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _find(run: Path, name: str, subdirs: tuple[str, ...]) -> Path | None:
    for d in ("", *subdirs):
        p = run / d / name
        if p.is_file():
            return p
    return None


def _release_decision(staging: Path, compression: dict[str, Any]) -> tuple[str, str]:
    """The release decision the artifact carries, and what the policy lets an undecided release reach.

    The trained model's gates (``evaluation.json``, decided once) and, when ``fedready compress``
    ran, the shipped variant's gates (its fidelity to that model): the worse of the two. The shipped
    variant is the selected one (which passed), or fp32 as it was judged when no variant passed and
    fp32's gates were only undecided (``compress`` then writes it as the selection, with its
    decision). A compression that selected nothing ships the raw, never-judged export: failed.
    """
    ev_path = staging / "evaluation.json"
    if not ev_path.exists():
        return "not-run", "canary"
    ev = read_json(ev_path, what="evaluation report")
    model = str(ev.get("decision") or ("passed" if ev.get("passed") is True else "failed"))
    undecided = str((ev.get("promotion") or {}).get("undecided", "canary"))
    if model not in ("passed", "undecided", "failed"):
        model = "failed"
    status = compression.get("status")
    if status == "none-selected":
        return "failed", undecided
    if status == "selected":
        shipped = str(compression.get("variant_decision") or "passed")  # a report from before: selected = passed
        return worst_decision(model, shipped), undecided
    return model, undecided


def _check_reports_describe_the_model(run: Path) -> None:
    """Refuse an evaluation or compression report written for another model than the run's ``model.npz``.

    The release decision is read from those reports: one left over from an earlier model (the run
    resumed and trained on, or files copied between runs) would carry its gates over to a model
    nobody judged. A report without a digest (written before digests were recorded) is read as is.

    Raises
    ------
    IntegrityError
        Naming the stale report and the command that refreshes it.
    """
    from fedready.modelio import arrays_digest, load_npz

    digest = arrays_digest(load_npz((run / "model.npz").read_bytes()))
    for name, folder, command in (("evaluation.json", "evaluation", "fedready evaluate"),
                                  (COMPRESSION_FILE, "compression", "fedready compress")):  # fmt: skip
        path = _find(run, name, (folder,))
        if path is None:
            continue
        recorded = read_json(path, what=name.removesuffix(".json") + " report")
        recorded = recorded.get("model_digest") if isinstance(recorded, dict) else None
        if recorded is not None and recorded != digest:
            raise IntegrityError(f"{path} describes another model than {run / 'model.npz'}; run `{command} "
                                 f"{run}` again (and every step after it), then package")  # fmt: skip


def _selected_onnx(run: Path) -> tuple[Path | None, dict[str, Any]]:
    """The compressed model issue 5's ``fedready compress`` selected, if it ran."""
    report = _find(run, COMPRESSION_FILE, ("compression",))
    if report is None:
        return None, {"status": "not-run"}
    data = read_json(report, what="compression report")
    selected = data.get("selected") if isinstance(data, dict) else None
    if not selected:  # compression ran but nothing judged may ship: the raw fp32 export, failed
        return None, {"status": "none-selected", "reason": data.get("reason") if isinstance(data, dict) else None}
    rel = None
    if isinstance(selected, dict):
        rel = selected.get("path") or selected.get("file") or selected.get("onnx")
    elif isinstance(selected, str) and selected.endswith(".onnx"):
        rel = selected
    candidates = [report.parent / rel] if rel else []
    candidates += [report.parent / "selected.onnx", run / "compression" / "selected.onnx"]
    decision = data.get("selected_decision") if isinstance(data, dict) else None
    for c in candidates:
        if c.is_file():
            found = {"status": "selected", "selected": selected, "source": c.relative_to(run).as_posix()}
            return c, {**found, "variant_decision": decision} if decision not in (None, "passed") else found
    raise IntegrityError(f"{report} names a selected variant but no ONNX file for it was found in {report.parent}")


_PRIVACY_STAMP = ("private", "insecure_seeded_noise", "caveats", "epsilon_parts")  # whether the epsilon is a guarantee


def _ledger_summary(run: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """``ledger_summary.json``: the run's epsilon and what it means, signed with the model.

    ``private``, ``insecure_seeded_noise``, ``caveats`` and ``epsilon_parts`` come from the ledger
    (format 2), else from the run's ``summary.json`` (``summary``); ``registry promote`` refuses an artifact
    whose ``private`` is not true (a ``--insecure-seeded-noise`` or non-DP run).
    """
    led = read_json(run / LEDGER_FILE, what="ledger")
    keys = ("accountant", "delta", "dp", "epsilon", "client_level_epsilon", *_PRIVACY_STAMP)
    out = {k: led.get(k) for k in keys if k in led}
    # no per-client epsilon leaves with the model: under client-level DP it says who took part, and when
    out["clients_charged"] = len(led.get("clients", {}))
    out |= {k: summary[k] for k in _PRIVACY_STAMP if k not in out and k in summary}
    out["entries"] = len(led.get("entries", []))
    out["declines"] = len(led.get("declines", []))
    return out


def _shipped_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The run summary as it ships (``training_summary.json``): no local path, no client named."""
    out = {k: v for k, v in summary.items() if k != "run_dir"}
    if "refused_clients" in out:  # which organisations were refused stays in the run's audit log
        out["refused_clients"] = [{"reason": r.get("reason")} for r in out["refused_clients"]]
    return out


def _same_payload(a: Path, b: Path) -> bool:
    def files(d: Path) -> dict[str, str]:
        return {p.relative_to(d).as_posix(): file_sha256(p) for p in sorted(d.rglob("*"))
                if p.is_file() and p.name not in (SIGNATURE_FILE, PROVENANCE_FILE)}  # fmt: skip

    if files(a) != files(b):
        return False
    pa, pb = (read_json(d / PROVENANCE_FILE, what="provenance") for d in (a, b))
    for p in (pa, pb):
        p.pop("created", None)
    return pa == pb


def package_run(
    run: Path, *, key: Path, version: str, out: Path, parent_version: str | None = None,
    unknown_group: str | None = None,
) -> tuple[Path, bool]:  # fmt: skip
    """Write the signed artifact ``out/<version>/`` for the run folder ``run``.

    ``unknown_group`` writes the fallback of the shipped fairness rule into its
    ``thresholds.json`` (see :mod:`fedready.thresholds`: ``refuse``, ``no-post-processing`` or
    ``group:NAME``), so it is signed with the model; None keeps the file's own (default: refuse).

    Returns the artifact folder and whether it was newly written. Packaging the same run
    again under the same version returns the existing folder untouched; anything else under
    an existing version is refused, because a published version is immutable.

    Raises
    ------
    ConfigError
        If the run folder is incomplete, the key unreadable, or the version taken by other bytes.
    """
    from fedready.compression import export_run
    from fedready.task import task_from_dict

    run, out, key = Path(run), Path(out), Path(key)
    check_version(version)
    if parent_version is not None:
        check_version(parent_version, field="parent-version")
    for name in ("model.npz", "config.json", "summary.json", LEDGER_FILE):
        if not (run / name).is_file():
            raise ConfigError("run", f"{run / name} does not exist; pass a run folder written by fedready simulate")
    if not key.is_file():
        raise ConfigError("key", f"{key} does not exist; create one with `fedready keys generate --out DIR`")
    _check_reports_describe_the_model(run)
    target = out / version
    out.mkdir(parents=True, exist_ok=True)
    _clean_stale_staging(out)
    audit = _audit_anchor(run)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=f".{version}{_STAGING}{os.getpid()}-"))
    try:
        onnx_src, compression = _selected_onnx(run)
        report = _find(run, COMPRESSION_FILE, ("compression",))
        if report is not None:
            shutil.copyfile(report, staging / COMPRESSION_FILE)
        if onnx_src is not None:
            shutil.copyfile(onnx_src, staging / MODEL_FILE)
        else:
            export_run(run, staging / MODEL_FILE)
        for name in _EVALUATION_FILES:
            src = _find(run, name, ("evaluation",))
            if name == THRESHOLDS_FILE and onnx_src is not None:
                # the compressed model ships with the rule refitted on its own scores (or none)
                src = onnx_src.parent / THRESHOLDS_FILE if (onnx_src.parent / THRESHOLDS_FILE).is_file() else None
            if src is not None:
                shutil.copyfile(src, staging / name)
        if unknown_group is not None:
            _set_fallback(staging / THRESHOLDS_FILE, unknown_group)
        evaluation, undecided_allows = _release_decision(staging, compression)
        schema_src = _find(run, SCHEMA_FILE, ())
        config = read_json(run / "config.json", what="run config")
        schema = task_from_dict(config.get("config", {})).schema if schema_src is None else None  # older runs
        if schema is not None:
            write_json(staging / SCHEMA_FILE, schema.to_dict())
            schema_digest = schema.digest()
        else:
            from fedready.schema import DataSchema

            assert schema_src is not None
            shutil.copyfile(schema_src, staging / SCHEMA_FILE)
            schema_digest = DataSchema.model_validate(read_json(schema_src, what="schema")).digest()
        write_json(staging / CONFIG_FILE, config)
        summary = read_json(run / "summary.json", what="run summary")
        write_json(staging / TRAINING_SUMMARY_FILE, _shipped_summary(summary))
        write_json(staging / LEDGER_SUMMARY_FILE, _ledger_summary(run, summary))
        prov = Provenance(
            version=version,
            run_id=summary.get("run_id", run.name),
            model_digest=summary["model_digest"],
            config_digest=json_digest(config.get("config", config)),
            schema_digest=schema_digest,
            fedready_version=_version_of("fedready"),
            git_commit=_git_commit(),
            packages={p: _version_of(p) for p in _RUNTIME_PACKAGES},
            parent_version=parent_version,
            evaluation=evaluation,
            compression=compression,
            data_fingerprints=summary.get("data_fingerprints"),
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            audit=audit,
            undecided_allows=undecided_allows,
        )
        write_json(staging / PROVENANCE_FILE, prov.to_dict())
        client_level = summary.get("client_dp") not in (None, "off")
        if client_level and (staging / "evaluation.json").exists():
            _withhold_per_client(staging)
        if client_level and (run / PROFILE_FILE).is_file():
            profile, _ = _public_profile(run, staging)
            if profile is not None:  # no profile rather than a non-private one (the benchmark could not be read)
                write_json(staging / PROFILE_FILE, profile)
        elif (run / PROFILE_FILE).is_file():  # last: describing the shipped model needs the whole artifact
            write_json(staging / PROFILE_FILE, _shipped_profile(run, staging, onnx_src))
        if target.exists():
            if _same_payload(staging, target):
                return target, False
            raise ConfigError("version", f"{version} already exists in {out} with different contents; a version "
                                         "is immutable, package under a new --version")  # fmt: skip
        sign_artifact(staging, key=key)
        check_coverage(staging)
        try:
            os.rename(staging, target)  # atomic; fails if another writer created the version meanwhile
        except OSError as e:
            raise ConfigError("version", f"{version} was written to {out} concurrently; package again") from e
        return target, True
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_STAGING = ".staging-"


def _set_fallback(path: Path, unknown_group: str) -> None:
    from fedready.thresholds import DecisionRule

    if not path.is_file():
        raise ConfigError("unknown-group", "the run ships no thresholds.json (no fairness rule), so there is "
                                           "no fallback to set; run `fedready evaluate` first")  # fmt: skip
    rule = {**read_json(path, what="thresholds"), "unknown_group": unknown_group}
    try:
        DecisionRule.from_dict(rule, where="--unknown-group")
    except IntegrityError as e:
        raise ConfigError("unknown-group", str(e).removeprefix("--unknown-group: ")) from None
    write_json(path, rule)


def _clean_stale_staging(out: Path) -> None:
    """Remove staging folders of packaging runs that were killed (their process is gone)."""
    for d in out.glob(f".*{_STAGING}*"):
        try:
            pid = int(d.name.rsplit(_STAGING, 1)[1].split("-", 1)[0])
        except ValueError:
            pid = None  # written before staging names carried a pid: nobody is writing it any more
        if pid is not None and pid != os.getpid() and _alive(pid):
            continue
        if pid != os.getpid():
            shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _audit_anchor(run: Path) -> dict[str, Any] | None:
    """The head of the run's audit log, checked first: an artifact never anchors a broken log."""
    from fedready.audit import log_head, verify_log

    log = run / "audit.jsonl"
    if not log.is_file():
        return None
    report = verify_log(log)
    if not report.ok:
        first = report.findings[0]
        raise IntegrityError(f"{log} fails verification ({first.kind}: {first.message}); an artifact anchors "
                             "the run's audit log, so it is not packaged (`fedready audit verify` lists every "
                             "finding)")  # fmt: skip
    return log_head(log).to_dict()


def _shipped_profile(run: Path, staging: Path, onnx_src: Path | None) -> dict[str, Any]:
    """The run's reference profile, its output histograms made to describe the model that ships.

    The clients' feature histograms stay. The scores and decisions come from ``fedready
    compress``'s public-data outputs of the selected variant (``output_profile.json``), or,
    when the fp32 model ships with post-processing, are computed the same way here on the run's
    benchmark (the server's public holdout). When the trained model ships as it is, or that
    holdout cannot be read any more, they stay the clients' and the profile says why.
    """
    from fedready.monitoring.profile import OUTPUTS_FILE, with_outputs

    profile = read_json(run / PROFILE_FILE, what="reference profile")
    model_sha = file_sha256(staging / MODEL_FILE)
    if onnx_src is not None and (onnx_src.parent / OUTPUTS_FILE).is_file():
        outputs = read_json(onnx_src.parent / OUTPUTS_FILE, what="output profile")
        if outputs.get("model_sha256") != model_sha:
            raise IntegrityError(f"{onnx_src.parent / OUTPUTS_FILE} describes another model (sha256 "
                                 f"{outputs.get('model_sha256')}, shipped {model_sha}); run `fedready compress` "
                                 "again")  # fmt: skip
        return with_outputs(profile, outputs)
    why = "the shipped model is the trained one, without post-processing"
    if (staging / THRESHOLDS_FILE).is_file() or onnx_src is not None:
        outputs, why = _public_outputs_now(run, staging, profile)
        if outputs is not None:
            return with_outputs(profile, outputs)
    decisions = "shipped" if not (staging / THRESHOLDS_FILE).is_file() else "before-post-processing"
    return {**profile, "outputs": {"source": "clients (the trained model on their rows)", "decisions": decisions,
                                   "model_sha256": model_sha, "why": why}}  # fmt: skip


_WITHHELD = ("withheld: under client-level DP, numbers per client (and statistics over them) are not client-level "
             "private; the coordinator decided the gate on them")  # fmt: skip


def _withhold_per_client(staging: Path) -> None:
    """Under client-level DP, ship the evaluation and model card without anything computed per client.

    The clients' own numbers (each client's accuracy, their spread, the summed counts) are releases
    whose sensitivity to one whole client is not bounded, so they stay with the coordinator: the
    shipped ``evaluation.json`` keeps the gates' outcomes, without their numbers, and the model card
    is rendered again from it.
    """
    from fedready.evaluation.card import write_model_card

    ev = read_json(staging / "evaluation.json", what="evaluation report")
    ev["federated"] = None
    ev["federated_withheld"] = _WITHHELD
    ev["estimates"] = {k: v for k, v in (ev.get("estimates") or {}).items() if not k.startswith("federated.")}
    for g in ev.get("gates", []):
        if g.get("source") == "clients":
            g.update(measured=None, lo=None, hi=None, note=_WITHHELD)
    write_json(staging / "evaluation.json", ev)
    write_model_card(ev, staging)


def _public_profile(run: Path, staging: Path) -> tuple[dict[str, Any] | None, str]:
    """Under client-level DP: the reference profile of the shipped model on the public benchmark alone.

    The clients' summed histograms are noised for one row, not for one whole client (whose rows
    move a sum by all of their count), so they are not shipped; the benchmark (the coordinator's
    public holdout) gives the feature histograms instead, and the shipped model's outputs on it.
    """
    from fedready.monitoring.profile import NoiseRecord, count_rows, profile_document, with_outputs

    clients_profile = read_json(run / PROFILE_FILE, what="reference profile")
    outputs, why = _public_outputs_now(run, staging, clients_profile)
    if outputs is None:
        return None, why
    from fedready.task import task_from_dict

    task = task_from_dict(read_json(run / CONFIG_FILE, what="run config").get("config", {}))
    from fedready.registry._predict import Predictor

    proba = Predictor(staging).column_probabilities(task.test.columns)
    decided = proba.argmax(axis=1)
    scores = proba[:, 1] if proba.shape[1] == 2 else proba.max(axis=1)
    counts = count_rows(task.schema, task.test.columns, scores=scores, predictions=decided,
                        labels=task.test.labels(task.schema))  # fmt: skip
    noise = NoiseRecord("none", extra={"source": f"the public benchmark ({task.test_source}): under client-level "
                                                 "DP the clients' histograms are not shipped"})  # fmt: skip
    doc = profile_document(task.schema, counts, noise, model_digest=clients_profile.get("model_digest", ""),
                           clients=0)  # fmt: skip
    return with_outputs(doc, outputs), ""


def _public_outputs_now(run: Path, staging: Path, profile: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """Public-data outputs of the staged model on the run's benchmark; or None and why not."""
    from fedready.monitoring.profile import shipped_outputs
    from fedready.registry._predict import Predictor
    from fedready.task import task_from_dict

    try:
        task = task_from_dict(read_json(run / CONFIG_FILE, what="run config").get("config", {}))
    except ConfigError as e:
        return None, f"the run's benchmark cannot be read here ({e})"
    if profile.get("schema_digest") != task.schema.digest():
        return None, "the run's benchmark has another schema than the profile"
    rule = read_json(staging / THRESHOLDS_FILE, what="thresholds") if (staging / THRESHOLDS_FILE).is_file() else None
    proba = Predictor(staging).column_probabilities(task.test.columns)
    groups = {a: task.test.columns[a] for a in task.schema.sensitive}
    outputs = shipped_outputs(proba, task.test.labels(task.schema), rule=rule, groups=groups,
                              model_sha256=file_sha256(staging / MODEL_FILE),
                              source=task.test_source)  # fmt: skip
    return outputs, ""


def sign_artifact(folder: Path, *, key: Path) -> Path:
    """Sign every file in ``folder`` (except an old ``model.sig``) with ``key``; return the bundle path.

    Raises
    ------
    ConfigError
        If ``key`` is not an ECDSA private key in PEM.
    """
    import model_signing
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        loaded = load_pem_private_key(Path(key).read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError("key", f"{key} is not an unencrypted private key in PEM ({e})") from e
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):  # model-signing would fail on `.curve`
        kind = type(loaded).__name__.removeprefix("_").replace("PrivateKey", "")
        raise ConfigError("key", f"{key} is a {kind} key; artifacts are signed with ECDSA (P-256): pass the "
                                 "signing.key that `fedready keys generate` wrote")  # fmt: skip
    hashing = model_signing.hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False)
    try:
        signer = model_signing.signing.Config().use_elliptic_key_signer(private_key=key)
    except ValueError as e:
        raise ConfigError("key", f"{key} is not an ECDSA private key in PEM ({e})") from e
    signer.set_hashing_config(hashing).sign(folder, Path(folder) / SIGNATURE_FILE)
    return Path(folder) / SIGNATURE_FILE


def payload_digests(artifact: Path) -> dict[str, str]:
    """File name -> sha256 hex as listed in the artifact's signature payload (not verified here)."""
    bundle = read_json(Path(artifact) / SIGNATURE_FILE, what="signature")
    try:
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        return {r["name"]: r["digest"] for r in statement["predicate"]["resources"]}
    except (KeyError, TypeError, ValueError) as e:
        raise IntegrityError(f"{artifact / SIGNATURE_FILE} is not a model-signing bundle ({e})") from e


def _check_ec_public_key(path: Path) -> None:
    """Refuse a public key model-signing's elliptic-key verifier cannot use (RSA, Ed25519, not PEM) in one line.

    model-signing reads ``key.curve`` of whatever it loaded, so an RSA or Ed25519 key fails
    there with an ``AttributeError`` instead of a message.
    """
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(Path(path).read_bytes())
    except (ValueError, TypeError) as e:
        raise ConfigError("public-key", f"{path} is not a public key in PEM ({e})") from e
    if not isinstance(key, ec.EllipticCurvePublicKey):
        kind = type(key).__name__.removeprefix("_").replace("PublicKey", "")
        raise ConfigError("public-key", f"{path} is a {kind} key; artifacts are signed with ECDSA (P-256): pass the "
                                        "signing.pub that `fedready keys generate` wrote")  # fmt: skip


def verify_artifact(artifact: Path, *, public_key: Path) -> Provenance:
    """Check that every file of ``artifact`` matches its signature by ``public_key``.

    Returns the artifact's provenance.

    Raises
    ------
    ConfigError
        If the artifact folder or the key file does not exist.
    IntegrityError
        Naming the file that differs (expected and actual sha256), the extra or missing
        file, or the key that does not match.
    """
    import model_signing

    artifact, public_key = Path(artifact), Path(public_key)
    if not artifact.is_dir():
        raise ConfigError("artifact", f"{artifact} is not an artifact folder")
    if not public_key.is_file():
        raise ConfigError("public-key", f"{public_key} does not exist")
    sig = artifact / SIGNATURE_FILE
    if not sig.is_file():
        raise IntegrityError(f"{artifact}: {SIGNATURE_FILE} is missing; the artifact is unsigned")
    _check_ec_public_key(public_key)
    try:
        verifier = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key)
    except ValueError as e:
        raise ConfigError("public-key", f"{public_key} is not an ECDSA public key in PEM ({e})") from e
    artifact_files(artifact)  # names and layout first: nothing a device would refuse, no folder, no git path
    try:
        verifier.verify(artifact, sig)
    except ValueError as e:
        raise IntegrityError(_explain(artifact, public_key, str(e))) from e
    except Exception as e:  # noqa: BLE001 -- sigstore raises its own types for malformed bundles
        raise IntegrityError(f"{artifact}: {SIGNATURE_FILE} could not be verified ({type(e).__name__}: {e})") from e
    check_coverage(artifact)  # model-signing skips some paths (.git*, .github); fedready covers every file
    return Provenance.from_dict(read_json(artifact / PROVENANCE_FILE, what="provenance"))


def check_coverage(artifact: Path) -> dict[str, str]:
    """Refuse any file of ``artifact`` its signature does not list (or lists under a name a device refuses).

    Returns the signed digests. Call after the signature itself verified, so the list is the operator's.

    Raises
    ------
    IntegrityError
        Naming the first file on disk the signature does not cover, or a signed name that is not allowed.
    """
    signed = payload_digests(artifact)
    for name in signed:
        check_file_name(name)
    on_disk = set(artifact_files(artifact)) - {SIGNATURE_FILE}
    uncovered = sorted(on_disk - set(signed))
    if uncovered:
        raise IntegrityError(f"{artifact}: file '{uncovered[0]}' is not covered by the signature; refused")
    missing = sorted(set(signed) - on_disk)
    if missing:
        raise IntegrityError(f"{artifact}: file '{missing[0]}' is signed but missing")
    return signed


def _explain(artifact: Path, public_key: Path, message: str) -> str:
    if "Key mismatch" in message:
        return (f"{artifact}: signed by a different key than {public_key} (key mismatch); "
                "refusing an artifact the operator did not sign")  # fmt: skip
    if "Signature mismatch" not in message:
        return f"{artifact}: signature verification failed ({message})"
    # The bundle's signature checked out, so its digest list is the operator's: name what differs.
    signed = payload_digests(artifact)
    actual = {p.relative_to(artifact).as_posix(): p for p in sorted(artifact.rglob("*"))
              if p.is_file() and p.name != SIGNATURE_FILE}  # fmt: skip
    for name in sorted(signed):
        if name not in actual:
            return f"{artifact}: file '{name}' is signed but missing"
        got = file_sha256(actual[name])
        if got != signed[name]:
            return f"{artifact}: file '{name}' differs from the signed one (expected sha256 {signed[name]}, got {got})"
    extra = sorted(set(actual) - set(signed))
    if extra:
        return f"{artifact}: file '{extra[0]}' is not covered by the signature"
    return f"{artifact}: signature verification failed ({message})"
