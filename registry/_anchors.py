"""Where a registry's audit log is anchored, and checkpoints that anchor it outside the registry folder.

The registry signs its log's head into ``targets.json`` and ``timestamp.json`` at every write
(:mod:`fedready.registry._registry`). That alone cannot show two attacks on the folder itself,
which need no key at all:

* *truncation with saved metadata*: cut the log back to an earlier length and put back the
  metadata served at that time (any mirror or HTTP cache holds it); every signature verifies;
* *whole rewrite*: ``registry init fake`` and copy its metadata and log over the real ones; the
  copy is consistent under its own keys.

So verification (:func:`verify_anchored_log`) walks the root chain from ``1.root.json`` (each
``N.root.json`` signed by the keys of ``N-1`` and its own, versions consecutive, TUF spec 5.3),
checks that no role has expired and that timestamp, snapshot and targets name each other's
versions, and takes *checkpoints* kept outside the folder (:func:`write_checkpoint`). A checkpoint
is a copy of three signed TUF documents as someone saw them: the root they trust from the start
(the registry's ``1.root.json``, a device's provisioned ``trust/root.json``), the root current at
the time and the timestamp, which carries the log's head. The registry's role keys sign it, so
nobody can forge one without them; whoever keeps one (the operator, off the registry machine, after
each release; every device, in ``HOME/tuf``, refreshed at each update) can later show:

* that the registry's root chain still starts at the root they trust (a re-created registry's
  ``1.root.json`` is another root: ``foreign-root``);
* that its metadata versions only went up since (older metadata put back: ``rolled-back``);
* that the log still holds the head they saw (``truncated``, ``rewritten``, ``wrong-key``).

Why checkpoints rather than a transparency-log witness: a fleet already holds them. Every device
verifies and stores the newest timestamp at each ``edge update`` (TUF spec 5.4), so the log's head
is copied onto every device by the update mechanism itself, with no service to run or trust; the
operator adds one command to the release runbook. A witness would be a new online party that must
be available and honest. What checkpoints cannot show: changes made after the newest checkpoint
(keep them current), or a rewrite by someone who holds the registry's targets and timestamp keys
as well as the log (keep targets and root offline).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedready.audit import Anchor, Finding
from fedready.errors import ConfigError, IntegrityError
from fedready.registry._canonical import read_json, write_json

__all__ = [
    "AUDIT_FIELD",
    "AUDIT_KEY_FIELD",
    "CHECKPOINT_FORMAT",
    "MetadataCheck",
    "check_metadata",
    "load_metadata",
    "metadata_anchors",
    "verify_anchored_log",
    "write_checkpoint",
]

AUDIT_FIELD = "x-fedready-audit"  # targets.json and timestamp.json: the audit log's head when they were signed
AUDIT_KEY_FIELD = "x-fedready-audit-key"  # root.json: the audit log's Ed25519 public key
CHECKPOINT_FORMAT = "fedready-audit-checkpoint/1"


def load_metadata(path: Path, *, role: str) -> Any:
    """Read one TUF metadata file of ``role`` (signatures not checked here).

    Raises
    ------
    IntegrityError
        If the file is missing, does not parse as TUF metadata, or holds another role.
    """
    from tuf.api.exceptions import RepositoryError
    from tuf.api.metadata import Metadata

    path = Path(path)
    try:
        md = Metadata.from_file(str(path))
    except FileNotFoundError as e:
        raise IntegrityError(f"{path} is missing; restore the registry's metadata from a backup") from e
    except (RepositoryError, ValueError, OSError) as e:
        cause = f": {e.__cause__}" if e.__cause__ is not None else ""
        raise IntegrityError(f"{path} is not valid TUF metadata ({e}{cause})".replace("\n", " ")) from e
    if md.signed.type != role:
        raise IntegrityError(f"{path} holds {md.signed.type} metadata, not {role}")
    return md


def _from_dict(data: Any, *, role: str, where: str) -> Any:
    from tuf.api.metadata import Metadata

    try:
        md = Metadata.from_dict(json.loads(json.dumps(data)))  # from_dict consumes its argument
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise IntegrityError(f"{where}: the {role} metadata is malformed ({type(e).__name__}: {e})") from e
    if md.signed.type != role:
        raise IntegrityError(f"{where}: holds {md.signed.type} metadata where {role} belongs")
    return md


def _signed_by(root: Any, role: str, md: Any) -> bool:
    from tuf.api.exceptions import UnsignedMetadataError

    try:
        root.signed.verify_delegate(role, md.signed_bytes, md.signatures)
    except (UnsignedMetadataError, ValueError, KeyError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class MetadataCheck:
    """What :func:`check_metadata` found in one folder of TUF metadata."""

    folder: Path
    key: str | None  # the audit key pinned in the newest trusted root
    anchors: list[Anchor] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    roots: dict[int, Any] = field(default_factory=dict)  # version -> verified root metadata
    versions: dict[str, int] = field(default_factory=dict)  # role -> version found


def _walk_roots(folder: Path, trusted: Any | None) -> tuple[dict[int, Any], list[Finding], list[str]]:
    """The verified root chain of ``folder`` from ``trusted`` (or its own ``1.root.json``)."""
    findings: list[Finding] = []
    notes: list[str] = []
    start = trusted
    if start is None and (folder / "1.root.json").is_file():
        start = load_metadata(folder / "1.root.json", role="root")
    current = load_metadata(folder / "root.json", role="root")
    if start is None:  # a device's HOME/tuf: python-tuf keeps the newest root only (it walked the chain itself)
        notes.append(f"{folder} holds no root history (1.root.json); root.json is checked against its own keys")
        start = current
    if not _signed_by(start, "root", start):
        findings.append(
            Finding(
                "root-chain",
                None,
                f"the trusted root (version {start.signed.version}) is not signed by its own root keys",
            )
        )
        return {}, findings, notes
    chain = {start.signed.version: start}
    mine = folder / f"{start.signed.version}.root.json"
    if trusted is not None and mine.is_file():
        ours = load_metadata(mine, role="root")
        if ours.signed_bytes != trusted.signed_bytes:
            findings.append(
                Finding(
                    "foreign-root",
                    None,
                    f"{mine} is not the root the checkpoint trusts (other root "
                    "keys): the registry was re-created or replaced",
                )
            )
            return chain, findings, notes
    version = start.signed.version + 1
    while (folder / f"{version}.root.json").is_file():
        md = load_metadata(folder / f"{version}.root.json", role="root")
        prev = chain[version - 1]
        if md.signed.version != version:
            findings.append(Finding("root-chain", None, f"{version}.root.json says it is version {md.signed.version}"))
            break
        if not (_signed_by(prev, "root", md) and _signed_by(md, "root", md)):
            findings.append(
                Finding(
                    "root-chain",
                    None,
                    f"{version}.root.json is not signed by the keys of root "
                    f"version {version - 1} and its own (TUF spec 5.3.4)",
                )
            )
            break
        chain[version] = md
        version += 1
    top = chain[max(chain)]
    if current.signed_bytes != top.signed_bytes:
        findings.append(
            Finding(
                "root-chain",
                None,
                f"root.json (version {current.signed.version}) is not the end of "
                f"the root chain (version {top.signed.version})",
            )
        )
    return chain, findings, notes


def check_metadata(
    folder: Path, *, trusted_root: Any | None = None, strict: bool = False, now: dt.datetime | None = None
) -> MetadataCheck:
    """Check a folder of TUF metadata and read the audit heads it anchors.

    Parameters
    ----------
    folder : Path
        A registry's ``repository/metadata``, a device's ``HOME/tuf`` or a mirror's copy.
    trusted_root : tuf Metadata[Root], optional
        The root to walk the chain from (a checkpoint's); default: the folder's ``1.root.json``.
    strict : bool
        The registry's own metadata: expired roles are findings (a device refuses them: the
        folder is stale, or a copy of older metadata was put back).

    Raises
    ------
    ConfigError
        If the folder holds no ``root.json``.
    IntegrityError
        If a metadata file does not parse.
    """
    folder = Path(folder)
    if not (folder / "root.json").is_file():
        raise ConfigError(
            "metadata",
            f"{folder} holds no root.json; pass a registry's repository/metadata or a device's HOME/tuf folder",
        )
    now = now or dt.datetime.now(dt.UTC)
    chain, findings, notes = _walk_roots(folder, trusted_root)
    root = chain[max(chain)] if chain else load_metadata(folder / "root.json", role="root")
    mds = {"root": root}
    for role in ("targets", "snapshot", "timestamp"):
        if (folder / f"{role}.json").is_file():
            mds[role] = load_metadata(folder / f"{role}.json", role=role)
    anchors: list[Anchor] = []
    for role, md in mds.items():
        if role != "root" and not _signed_by(root, role, md):
            findings.append(
                Finding(
                    "metadata-signature",
                    None,
                    f"{folder / (role + '.json')} is not signed by the "
                    f"{role} key of root version {root.signed.version}",
                )
            )
            continue
        if strict and md.signed.expires <= now:
            findings.append(
                Finding(
                    "expired",
                    None,
                    f"{role}.json (version {md.signed.version}) expired at "
                    f"{md.signed.expires.isoformat()}: a device refuses it; the "
                    "folder is stale or older metadata was put back (if this is the "
                    "live registry, find out which before `registry refresh` "
                    "re-signs it)",
                )
            )
        head = md.signed.unrecognized_fields.get(AUDIT_FIELD) if role in ("targets", "timestamp") else None
        if head is not None:
            anchors.append(Anchor.from_dict(head, source=f"{folder / (role + '.json')} (version {md.signed.version})"))
    ts, snap, tgt = mds.get("timestamp"), mds.get("snapshot"), mds.get("targets")
    if ts is not None and snap is not None and ts.signed.snapshot_meta.version != snap.signed.version:
        findings.append(
            Finding(
                "inconsistent",
                None,
                f"timestamp.json names snapshot version "
                f"{ts.signed.snapshot_meta.version}, the folder holds "
                f"{snap.signed.version}: files from different times",
            )
        )
    if snap is not None and tgt is not None:
        named = snap.signed.meta.get("targets.json")
        if named is not None and named.version != tgt.signed.version:
            findings.append(
                Finding(
                    "inconsistent",
                    None,
                    f"snapshot.json names targets version {named.version}, the "
                    f"folder holds {tgt.signed.version}: files from different "
                    "times",
                )
            )
    key = root.signed.unrecognized_fields.get(AUDIT_KEY_FIELD)
    return MetadataCheck(
        folder,
        None if key is None else str(key),
        anchors,
        findings,
        notes,
        chain,
        {r: md.signed.version for r, md in mds.items()},
    )


def metadata_anchors(metadata_dir: Path) -> tuple[str | None, list[Anchor]]:
    """The audit key pinned in ``root.json`` and the audit heads of ``targets.json`` and ``timestamp.json``.

    The root chain is walked from ``1.root.json`` when the folder holds it; each file's signature
    is checked with the newest root's keys.

    Raises
    ------
    ConfigError
        If the folder holds no ``root.json``.
    IntegrityError
        If a metadata file does not parse, the root chain breaks, or a file is not signed by its role's keys.
    """
    check = check_metadata(metadata_dir)
    if check.findings:
        raise IntegrityError(f"{metadata_dir}: TUF metadata does not verify ({check.findings[0].message})")
    return check.key, check.anchors


# -- checkpoints ------------------------------------------------------------------------------
def write_checkpoint(source: Path, out: Path) -> dict[str, Any]:
    """Save a checkpoint of the registry's audit head, as a registry or a device holds it now.

    Parameters
    ----------
    source : Path
        A registry folder (its ``1.root.json``, ``root.json`` and ``timestamp.json``) or a device
        folder (its provisioned ``trust/root.json`` and the ``tuf/root.json`` and
        ``tuf/timestamp.json`` its last update verified).
    out : Path
        Where to write it: somewhere the registry's writers cannot reach.

    Returns
    -------
    dict
        ``lines``, ``head``, ``timestamp_version``, ``root_version`` and ``source``.

    Raises
    ------
    ConfigError
        If ``source`` is neither a registry nor a device that has updated.
    IntegrityError
        If the documents do not verify (the timestamp under the root, the root under its own keys).
    """
    source = Path(source)
    if (source / "repository" / "metadata" / "root.json").is_file():
        meta = source / "repository" / "metadata"
        trusted, root, ts, kind = meta / "1.root.json", meta / "root.json", meta / "timestamp.json", "registry"
    elif (source / "tuf" / "timestamp.json").is_file():
        trusted, root, ts, kind = (
            source / "trust" / "root.json",
            source / "tuf" / "root.json",
            source / "tuf" / "timestamp.json",
            "device",
        )
    else:
        raise ConfigError(
            "source", f"{source} is neither a registry folder nor a device folder that has run `fedready edge update`"
        )
    docs = {
        "trusted_root": load_metadata(trusted, role="root"),
        "root": load_metadata(root, role="root"),
        "timestamp": load_metadata(ts, role="timestamp"),
    }
    doc = {
        "format": CHECKPOINT_FORMAT,
        "taken_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "source": f"{kind} {source.resolve()}",
        **{k: md.to_dict() for k, md in docs.items()},
    }
    check = _read_checkpoint(doc, where=str(source))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(out), doc)
    return {
        "lines": check.anchor.lines,
        "head": check.anchor.head,
        "timestamp_version": check.timestamp_version,
        "root_version": check.root.signed.version,
        "source": doc["source"],
    }


@dataclass(frozen=True)
class _Checkpoint:
    where: str
    trusted: Any
    root: Any
    timestamp_version: int
    snapshot_version: int
    anchor: Anchor
    key: str | None


def _read_checkpoint(doc: Any, *, where: str) -> _Checkpoint:
    """Parse a checkpoint and verify it on its own: roots self-signed, the timestamp under the root."""
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise IntegrityError(
            f"{where} is not a checkpoint ({CHECKPOINT_FORMAT}); write one with `fedready audit checkpoint`"
        )
    trusted = _from_dict(doc.get("trusted_root"), role="root", where=where)
    root = _from_dict(doc.get("root"), role="root", where=where)
    ts = _from_dict(doc.get("timestamp"), role="timestamp", where=where)
    if not _signed_by(trusted, "root", trusted) or not _signed_by(root, "root", root):
        raise IntegrityError(f"{where}: a root in the checkpoint is not signed by its own keys; refused")
    if root.signed.version < trusted.signed.version:
        raise IntegrityError(f"{where}: its current root is older than its trusted root; refused")
    if root.signed.version == trusted.signed.version and root.signed_bytes != trusted.signed_bytes:
        raise IntegrityError(f"{where}: two different roots of version {root.signed.version}; refused")
    if not _signed_by(root, "timestamp", ts):
        raise IntegrityError(f"{where}: the timestamp is not signed by the timestamp key of its root; refused")
    head = ts.signed.unrecognized_fields.get(AUDIT_FIELD)
    if head is None:
        raise IntegrityError(f"{where}: the timestamp carries no audit head (a registry from before audit anchors)")
    label = f"checkpoint {where} (timestamp version {ts.signed.version}, taken {doc.get('taken_at')})"
    key = root.signed.unrecognized_fields.get(AUDIT_KEY_FIELD)
    return _Checkpoint(
        where,
        trusted,
        root,
        ts.signed.version,
        ts.signed.snapshot_meta.version,
        Anchor.from_dict(head, source=label),
        None if key is None else str(key),
    )


def _against(cp: _Checkpoint, folder: Path | None) -> list[Finding]:
    """What a checkpoint shows about the registry's metadata folder now."""
    if folder is None:
        return []
    check = check_metadata(folder, trusted_root=cp.trusted)
    findings = [f for f in check.findings if f.kind in ("foreign-root", "root-chain")]
    if findings:
        return findings
    seen = check.roots.get(cp.root.signed.version)
    if seen is None:
        findings.append(
            Finding(
                "rolled-back",
                None,
                f"{cp.where} saw root version {cp.root.signed.version}; the "
                f"registry's root chain ends at {max(check.roots)}: older "
                "metadata was put back",
            )
        )
    elif seen.signed_bytes != cp.root.signed_bytes:
        findings.append(
            Finding("foreign-root", None, f"root version {cp.root.signed.version} differs from the one {cp.where} saw")
        )
    for role, seen_version in (("timestamp", cp.timestamp_version), ("snapshot", cp.snapshot_version)):
        now = check.versions.get(role)
        if now is not None and now < seen_version:
            findings.append(
                Finding(
                    "rolled-back",
                    None,
                    f"the registry's {role}.json is version {now}, older than "
                    f"version {seen_version} that {cp.where} saw: metadata "
                    "versions only go up, so older metadata was put back",
                )
            )
    return findings


def verify_anchored_log(
    log: Path,
    *,
    key: str | None = None,
    metadata: Path | None = None,
    artifact: Path | None = None,
    public_key: Path | None = None,
    checkpoints: list[Path] | tuple[Path, ...] = (),
) -> Any:
    """Verify an audit log against every anchor that applies (``fedready audit verify``).

    A registry's own log (``REGISTRY/audit.jsonl``) is checked against the key pinned in its
    root and the heads in its signed metadata, after the root chain, expiry and version checks of
    :func:`check_metadata`; every line must be anchored (each write re-signs the metadata).
    ``metadata`` adds another copy of the metadata (a device's ``HOME/tuf``, which may predate the
    newest lines); ``artifact`` (verified with ``public_key`` first) adds the run's head that
    ``fedready package`` recorded in the provenance; each of ``checkpoints`` (written by
    :func:`write_checkpoint`, kept outside the registry) adds its head, pins its root and key, and
    shows metadata put back or replaced since.

    Returns
    -------
    fedready.audit.AuditReport

    Raises
    ------
    ConfigError
        If ``artifact`` comes without ``public_key`` or records no audit head, or a checkpoint file
        does not exist.
    IntegrityError
        If an anchor's own signature does not verify.
    """
    from fedready.audit import verify_log
    from fedready.registry._artifact import verify_artifact

    log = Path(log)
    own = log.parent / "repository" / "metadata"
    own = own if (own / "root.json").is_file() else None
    cps = []
    for p in checkpoints:
        if not Path(p).is_file():
            raise ConfigError("anchor", f"{p} does not exist; write checkpoints with `fedready audit checkpoint`")
        cps.append(_read_checkpoint(read_json(Path(p), what="checkpoint"), where=str(p)))
    pinned = key or next((c.key for c in cps if c.key), None)
    anchors: list[Anchor] = []
    findings: list[Finding] = []
    notes: list[str] = []
    for folder, strict in ((own, True), (Path(metadata) if metadata is not None else None, False)):
        if folder is None:
            continue
        check = check_metadata(folder, strict=strict)
        pinned = pinned or check.key
        anchors += check.anchors
        findings += check.findings
        notes += check.notes
    for cp in cps:
        findings += _against(cp, own or (Path(metadata) if metadata is not None else None))
        anchors.append(cp.anchor)
    if artifact is not None:
        if public_key is None:
            raise ConfigError("public-key", "--artifact needs --public-key, the operator's key that signed it")
        prov = verify_artifact(artifact, public_key=public_key)
        if prov.audit is None:
            raise ConfigError("artifact", f"{artifact} records no audit log head (packaged from a run without one)")
        anchor = Anchor.from_dict(prov.audit, source=f"the provenance of artifact {prov.version}")
        pinned = pinned or anchor.key
        anchors.append(anchor)
    if own is not None and not cps:
        notes.append(
            "no checkpoint kept outside the registry (--anchor): a log cut back together with metadata "
            "saved earlier, or a registry re-created with new keys, verifies on its own; keep checkpoints "
            "(`fedready audit checkpoint`) and pass them"
        )
    report = verify_log(log, key=pinned, anchors=anchors, strict_tail=own is not None)
    return replace(report, findings=findings + report.findings, notes=notes + report.notes)
