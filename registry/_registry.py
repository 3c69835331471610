"""A model registry kept as a TUF repository of plain files, with release channels.

Layout of a registry folder::

    REGISTRY/
      repository/                 serve this folder (any static HTTP server or object store)
        metadata/                 1.root.json, root.json, targets.json, snapshot.json, timestamp.json
        targets/artifacts/V/...   every file of every published artifact (immutable)
        targets/channels/C.json   channel C: the version it points at, rollout, approver, review-by
      keys/                       one ECDSA P-256 key per TUF role (keep root and targets offline),
                                  and audit.key (Ed25519) that signs each audit entry
      audit.jsonl                 every registry action, hash-chained and signed (fedready.audit)

Channels are TUF targets, so a device learns which version a channel points at from the same
signed, versioned, expiring metadata that protects the model files. Which version each device
runs is :mod:`fedready.registry._channels`.

The audit log is anchored in the metadata: ``root.json`` pins its public key
(``x-fedready-audit-key``), and every write records the log's head (line count, sha256 of the
last line) in ``targets.json`` and ``timestamp.json`` (``x-fedready-audit``), so a log cut short
or rewritten no longer matches what the registry signed and devices downloaded. Checkpoints of
that signed head kept outside the folder (by the operator, and by every device in ``HOME/tuf``)
show a folder put back to older metadata or re-created under new keys
(:mod:`fedready.registry._anchors`).

Devices enrolled by the operator (``devices.json``: device id -> Ed25519 public key) sign their
monitoring alerts; ``auto-rollback`` counts only those (:meth:`Registry.auto_rollback`).

Notes
-----
Expiry follows the reference TUF implementation's defaults (root 1 year, targets 3 months,
snapshot 1 week, timestamp 1 day): the timestamp must be re-signed daily (``registry
refresh``), which bounds how long an attacker can freeze a device on stale metadata
(TUF spec 5.4.3, freeze attacks). Every write bumps ``targets``, ``snapshot`` and
``timestamp`` versions; a client refuses any version lower than one it has seen (TUF spec
5.4.4 / 5.5.5, rollback attacks).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedready.audit import Anchor, AuditLog
from fedready.errors import ConfigError, IntegrityError
from fedready.registry._anchors import (
    AUDIT_FIELD,
    AUDIT_KEY_FIELD,
    load_metadata,
    metadata_anchors,
    verify_anchored_log,
)
from fedready.registry._artifact import (
    LEDGER_SUMMARY_FILE,
    PROVENANCE_FILE,
    SIGNATURE_FILE,
    Provenance,
    verify_artifact,
)
from fedready.registry._canonical import (
    artifact_files,
    canonical_json,
    check_version,
    file_sha256,
    read_json,
    write_json,
)
from fedready.registry._channels import CANARY, STABLE, canary_state, cohort_versions, not_served, withdrawn

__all__ = [
    "CHANNELS",
    "STABLE",
    "release_allowed",
    "DEFAULT_EXPIRY",
    "ROLES",
    "Channel",
    "Registry",
    "artifact_target",
    "channel_target",
    "metadata_anchors",
    "verify_anchored_log",
]

ROLES = ("root", "targets", "snapshot", "timestamp")
CHANNELS = ("canary", "stable")
# The reference TUF implementation's defaults.
DEFAULT_EXPIRY = {
    "root": dt.timedelta(days=365),
    "targets": dt.timedelta(days=90),
    "snapshot": dt.timedelta(days=7),
    "timestamp": dt.timedelta(days=1),
}
DEFAULT_REVIEW = dt.timedelta(days=90)
AUDIT_KEY = "audit.key"
DEFAULT_MIN_DEVICES = 3  # auto-rollback: distinct devices that must report a breach, at least
DEFAULT_MIN_SHARE = 0.1  # ... or this share of the channel's devices (with --fleet-size), whichever is larger
DEFAULT_MAX_SKEW = 120.0  # seconds an alert's time may lie ahead of the registry's clock
DEVICES_FILE = "devices.json"  # enrolled devices: id -> Ed25519 public key that signs their alerts


def channel_target(channel: str) -> str:
    """TUF target path of a channel document."""
    return f"channels/{channel}.json"


def artifact_target(version: str, name: str) -> str:
    """TUF target path of one file of an artifact."""
    return f"artifacts/{version}/{name}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


@dataclass(frozen=True)
class Channel:
    """What a channel points at; served as ``channels/<name>.json`` (a TUF target)."""

    channel: str
    version: str
    files: dict[str, str]  # artifact file name -> sha256 hex; the edge agent fetches exactly these
    rollout_percent: float  # canary: share of devices (by stable hash of their id) that take it
    approver: str
    review_by: str  # ISO date; `registry status` flags the model once it is past
    promoted_at: str
    forced: bool = False
    reason: str | None = None
    gates: str = "passed"  # the artifact's evaluation status when promoted
    previous: tuple[str, ...] = ()  # versions this channel pointed at before, oldest first
    serial: int = 0  # targets metadata version of the write: orders stable and canary changes (see _channels)
    paused: bool = False  # canary only: set when stable rolls back from this version; devices ignore it then
    paused_reason: str | None = None
    withdrawn: tuple[str, ...] = ()  # stable only: versions it rolled back from, until promoted again explicitly
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, unknown keys kept."""
        out = {k: v for k, v in self.__dict__.items() if k != "extra"}
        out["previous"] = list(self.previous)
        out["withdrawn"] = list(self.withdrawn)
        return {**self.extra, **out}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Channel:
        """Parse a channel document, keeping unknown keys."""
        names = [f for f in cls.__dataclass_fields__ if f != "extra"]
        try:
            known = {n: data[n] for n in names if n in data}
            known["previous"] = tuple(known.get("previous", ()))
            known["withdrawn"] = tuple(known.get("withdrawn", ()))
            return cls(**known, extra={k: v for k, v in data.items() if k not in names})
        except (TypeError, AttributeError) as e:
            raise IntegrityError(f"channel document is malformed ({e})") from e

    def past_review(self, today: dt.date | None = None) -> bool:
        """True when the review-by date has passed."""
        return dt.date.fromisoformat(self.review_by) < (today or _now().date())


def release_allowed(evaluation: str, undecided_allows: str, channel: str) -> bool:
    """May a release with this decision reach ``channel`` without ``--force``?

    A passed release may reach any channel, a failed or never-evaluated one none. An undecided
    release (a gate whose interval straddles its limit) reaches what its policy's ``[promotion]
    undecided`` allows: ``canary`` every channel but stable (the default), ``block`` none,
    ``stable`` every channel.
    """
    if evaluation == "passed":
        return True
    if evaluation == "undecided":
        return undecided_allows == "stable" or (undecided_allows == "canary" and channel != STABLE)
    return False


def _why_refused(evaluation: str, undecided_allows: str, channel: str) -> str:
    if evaluation == "undecided":
        where = "no channel" if undecided_allows == "block" else "every channel but stable"
        return (f"has undecided gates (their intervals straddle the limits) and its policy lets an undecided release "
                f"reach {where}, not '{channel}'; see its evaluation.json, or decide them with more evaluation budget "
                "or a larger benchmark")  # fmt: skip
    if evaluation == "failed":
        return "failed its gates (see its evaluation.json and compression.json)"
    return "has no evaluation (gates not run): run `fedready evaluate` (and `fedready compress`) and package again"


class Registry:
    """A registry folder (see the module docstring). Use :meth:`init` to create one.

    Parameters
    ----------
    path : Path
        The registry folder.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.repo = self.path / "repository"
        self.metadata_dir = self.repo / "metadata"
        self.targets_dir = self.repo / "targets"
        self.keys_dir = self.path / "keys"
        if not (self.metadata_dir / "root.json").is_file():
            raise ConfigError("registry", f"{self.path} is not a registry; create one with `fedready registry init`")
        self.audit = AuditLog(self.path / "audit.jsonl", key=self.keys_dir / AUDIT_KEY)

    # -- creation -------------------------------------------------------------------------
    @classmethod
    def init(cls, path: Path, *, channels: tuple[str, ...] = CHANNELS, actor: str = "") -> Registry:
        """Create a registry with fresh role keys and version-1 metadata for every role.

        Raises
        ------
        ConfigError
            If ``path`` already holds a registry.
        """
        from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ConfigError("registry", f"{path} is a file; pass a new or empty folder for the registry")
        if (path / "repository" / "metadata" / "root.json").exists():
            raise ConfigError("registry", f"{path} already holds a registry")
        for c in channels:
            check_version(c, field="channel")
        (path / "repository" / "metadata").mkdir(parents=True, exist_ok=True)
        (path / "repository" / "targets").mkdir(parents=True, exist_ok=True)
        signers = {role: _new_key(path / "keys" / f"{role}.key") for role in ROLES}
        audit_key = AuditLog(path / "audit.jsonl", key=path / "keys" / AUDIT_KEY).public_key
        now = _now()
        root = Root(expires=now + DEFAULT_EXPIRY["root"], consistent_snapshot=False)
        for role, signer in signers.items():
            root.add_key(signer.public_key, role)
        root.unrecognized_fields["x-fedready-channels"] = list(channels)
        root.unrecognized_fields[AUDIT_KEY_FIELD] = audit_key
        mds = {
            "root": Metadata(root),
            "targets": Metadata(Targets(expires=now + DEFAULT_EXPIRY["targets"])),
            "snapshot": Metadata(Snapshot(expires=now + DEFAULT_EXPIRY["snapshot"])),
            "timestamp": Metadata(Timestamp(expires=now + DEFAULT_EXPIRY["timestamp"])),
        }
        for role, md in mds.items():
            md.sign(signers[role])
        _write(path / "repository" / "metadata", mds["root"], "1.root.json")
        for role, md in mds.items():
            _write(path / "repository" / "metadata", md, f"{role}.json")
        reg = cls(path)
        reg._record("registry-init", channels=list(channels), actor=actor,
                    keys={r: s.public_key.keyid for r, s in signers.items()})  # fmt: skip
        return reg

    # -- reading --------------------------------------------------------------------------
    def _load(self, role: str) -> Any:
        return load_metadata(self.metadata_dir / f"{role}.json", role=role)

    def _signer(self, role: str) -> Any:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        from securesystemslib.signer import CryptoSigner

        key = self.keys_dir / f"{role}.key"
        if not key.is_file():
            raise ConfigError("keys", f"{key} is missing; the {role} key must be present to change {role} metadata")
        try:
            signer = CryptoSigner(load_pem_private_key(key.read_bytes(), password=None))
        except (ValueError, TypeError) as e:  # not PEM, encrypted, or a key type securesystemslib cannot use
            raise ConfigError("keys", f"{key} is not a usable private key in PEM ({e}); restore the {role} key "
                                      "from its offline copy") from e  # fmt: skip
        if signer.public_key.keyid not in self._load("root").signed.roles[role].keyids:
            raise ConfigError("keys", f"{key} is not the {role} key root.json lists; metadata it signed would be "
                                      f"refused by every device: restore the {role} key, or rotate it with "
                                      f"`fedready registry rotate-key {role}`")  # fmt: skip
        return signer

    @property
    def channels(self) -> list[str]:
        """Channel names this registry was created with."""
        return list(self._load("root").signed.unrecognized_fields.get("x-fedready-channels", CHANNELS))

    def versions(self) -> list[str]:
        """Published artifact versions, in publication order."""
        targets = self._load("targets").signed.targets
        seen: dict[str, float] = {}
        for path, tf in targets.items():
            if path.startswith("artifacts/"):
                seen.setdefault(path.split("/")[1], tf.unrecognized_fields.get("custom", {}).get("published", 0))
        return sorted(seen, key=lambda v: (seen[v], v))

    def channel(self, name: str) -> Channel | None:
        """The channel document, or None if nothing was promoted to it yet."""
        self._check_channel(name)
        p = self.targets_dir / channel_target(name)
        return Channel.from_dict(read_json(p, what=f"channel {name}")) if p.exists() else None

    def provenance(self, version: str) -> Provenance:
        """The provenance of a published version."""
        p = self.targets_dir / artifact_target(version, PROVENANCE_FILE)
        if not p.exists():
            published = ", ".join(self.versions()) or "none"
            raise ConfigError("version", f"{version} is not published; published: {published}")
        return Provenance.from_dict(read_json(p, what="provenance"))

    def _check_private(self, version: str, *, allow_not_private: bool) -> bool | None:
        """The version's signed ``private`` stamp (``ledger_summary.json``); refuse ``False`` or none unless allowed.

        Raises
        ------
        ConfigError
            Naming the field and why the model is not private, unless ``allow_not_private``.
        """
        p = self.targets_dir / artifact_target(version, LEDGER_SUMMARY_FILE)
        ledger = read_json(p, what="ledger summary") if p.exists() else {}
        led = ledger if isinstance(ledger, dict) else {}
        private = led.get("private")
        if private is True or allow_not_private:
            return private if isinstance(private, bool) else None
        if led.get("insecure_seeded_noise"):
            why = "its DP noise was seeded from the configuration (anyone can recompute it)"
            fix = "train it again without --insecure-seeded-noise"
        elif led.get("dp") is False:
            why, fix = "it was trained without DP", "train it again with DP (drop --no-dp)"
        elif private is None:
            why, fix = "an earlier fedready packaged it without the stamp", "package the run again"
        else:
            why = "; ".join(map(str, led.get("caveats") or [])) or "its epsilon is no guarantee"
            fix = "train it again without the releases its caveats name"
        raise ConfigError("private", f"{version} is not private ({LEDGER_SUMMARY_FILE}: private is "
                                     f"{json.dumps(private)}: {why}); {fix}, or pass --allow-not-private --reason "
                                     "'...' to promote it anyway (recorded in the audit log)")  # fmt: skip

    def _check_channel(self, name: str) -> None:
        if name not in self.channels:
            raise ConfigError("channel", f"unknown channel '{name}'; expected one of: {', '.join(self.channels)}")

    # -- writing --------------------------------------------------------------------------
    def _commit(self, changed: dict[str, bytes | None], *, event: str | None = None,
                targets_expiry: dt.timedelta | None = None, **fields: Any) -> None:  # fmt: skip
        """Write target files (None deletes), record ``event``, then re-sign targets, snapshot, timestamp.

        The audit entry is appended before the metadata is signed, so the signed metadata
        anchors a log that already holds it.
        """
        from tuf.api.metadata import MetaFile, TargetFile

        for role in ("targets", "snapshot", "timestamp"):
            self._signer(role)  # a missing key fails before anything is written or recorded
        targets = self._load("targets")
        for tpath, data in changed.items():
            local = self.targets_dir / tpath
            if data is None:
                targets.signed.targets.pop(tpath, None)
                local.unlink(missing_ok=True)
                continue
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f".{local.name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, local)
            tf = TargetFile.from_data(tpath, data, ["sha256"])
            tf.unrecognized_fields["custom"] = {"published": int(_now().timestamp())}  # canonical JSON: no floats
            targets.signed.targets[tpath] = tf
        if event is not None:
            self.audit.append(event, **fields)
        targets.signed.unrecognized_fields[AUDIT_FIELD] = self.audit.head().to_dict()
        self._bump(targets, "targets", targets_expiry)
        snapshot = self._load("snapshot")
        snapshot.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
        self._bump(snapshot, "snapshot")
        self.refresh()

    def _record(self, event: str, **fields: Any) -> None:
        """Record an action that changes no target, and anchor it in the timestamp metadata."""
        self._signer("timestamp")
        self.audit.append(event, **fields)
        self.refresh()

    def _bump(self, md: Any, role: str, expiry: dt.timedelta | None = None) -> None:
        md.signed.version += 1
        md.signed.expires = _now() + (expiry if expiry is not None else DEFAULT_EXPIRY[role])
        md.sign(self._signer(role), append=False)
        _write(self.metadata_dir, md, f"{role}.json")

    def refresh(self, *, timestamp_expiry: dt.timedelta | None = None) -> int:
        """Re-sign the timestamp over the current snapshot (run at least daily); return its version.

        The timestamp also carries the audit log's current head (see the module docstring).
        """
        from tuf.api.metadata import MetaFile

        snapshot = self._load("snapshot")
        ts = self._load("timestamp")
        ts.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        ts.signed.unrecognized_fields[AUDIT_FIELD] = self.audit.head().to_dict()
        self._bump(ts, "timestamp", timestamp_expiry)
        return ts.signed.version

    def audit_anchors(self, metadata_dir: Path | None = None) -> tuple[str | None, list[Anchor]]:
        """The audit key pinned in root and the heads anchored in targets and timestamp metadata.

        ``metadata_dir`` reads another copy of the metadata (a device's ``HOME/tuf``, a mirror):
        each file's signature is checked with the root in that folder before its anchor is used.

        Raises
        ------
        IntegrityError
            If a metadata file is not signed by its role's keys in that root.
        """
        return metadata_anchors(Path(metadata_dir) if metadata_dir is not None else self.metadata_dir)

    def publish(self, artifact: Path, *, public_key: Path, actor: str = "") -> str:
        """Verify ``artifact`` with the operator's ``public_key`` and add every file as a TUF target.

        Returns the version. Publishing the same bytes again is a no-op; different bytes under a
        published version are refused.

        Raises
        ------
        IntegrityError
            If the artifact's signature does not verify.
        ConfigError
            If the version is already published with different contents.
        """
        from fedready.registry._predict import Predictor

        artifact = Path(artifact)
        prov = verify_artifact(artifact, public_key=public_key)  # flat, every file signed, names a device accepts
        try:
            version = check_version(prov.version)
        except ConfigError as e:
            raise IntegrityError(f"{artifact} names version {prov.version!r}, which no device installs ({e})") from e
        if artifact.name != version:
            raise IntegrityError(f"{artifact} holds version {version}; artifact folders are named after their version")
        Predictor(artifact)  # a device loads the model and its rule before activating it: so must the registry
        files = artifact_files(artifact)
        existing = self._load("targets").signed.targets
        prefix = artifact_target(version, "")
        published = {k[len(prefix) :]: v.hashes["sha256"] for k, v in existing.items() if k.startswith(prefix)}
        if published:
            mine = {name: file_sha256(p) for name, p in files.items() if name != SIGNATURE_FILE}
            theirs = {k: v for k, v in published.items() if k != SIGNATURE_FILE}
            if mine != theirs:
                differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
                raise ConfigError("version", f"{version} is already published with different contents "
                                             f"({differ[0]} differs); a published version is immutable, "
                                             "package a new version")  # fmt: skip
            return version
        self._commit({artifact_target(version, name): p.read_bytes() for name, p in files.items()}, event="publish",
                     version=version, actor=actor, run_id=prov.run_id, model_digest=prov.model_digest,
                     evaluation=prov.evaluation)  # fmt: skip
        return version

    def promote(
        self,
        version: str,
        *,
        channel: str,
        approver: str,
        rollout_percent: float = 100.0,
        review_by: dt.date | None = None,
        force: bool = False,
        reason: str | None = None,
        min_agreement: float | None = None,
        shadow_report: dict[str, Any] | None = None,
        allow_not_private: bool = False,
    ) -> Channel:
        """Point ``channel`` at ``version``.

        With ``min_agreement``, a shadow report (:func:`fedready.registry.shadow_compare`) of
        ``version`` as the candidate must show at least that share of decisions agreeing with the
        active model (``--force`` does not override this: it is the operator's own bar).

        Raises
        ------
        ConfigError
            If the artifact's gates failed or never ran and ``force``/``reason`` are not both
            given, if ``approver`` is empty, the rollout is outside (0, 100], or the shadow
            agreement is missing, about another version, or below ``min_agreement``; or if the
            artifact's signed ``ledger_summary.json`` does not say ``private: true`` (a run with
            ``--insecure-seeded-noise``, without DP, or with a release outside the guarantee) and
            ``allow_not_private``/``reason`` are not both given (``force`` does not lift it).

        Notes
        -----
        Seeded noise can be recomputed by anyone who knows the configuration (tests/security/
        test_dp_noise_reconstruction.py), so such a model's epsilon guarantees nothing: it reaches
        a device only on an explicit, recorded decision.
        """
        self._check_channel(channel)
        shadow = _check_shadow(version, min_agreement, shadow_report)
        if not approver.strip():
            raise ConfigError("approver", "every promotion records who approved it; pass --approver NAME")
        if not 0 < rollout_percent <= 100:
            raise ConfigError("rollout", f"must be in (0, 100], got {rollout_percent}")
        if force and not (reason and reason.strip()):
            raise ConfigError("reason", "--force needs --reason explaining why the gates are overridden")
        if allow_not_private and not (reason and reason.strip()):
            raise ConfigError("reason", "--allow-not-private needs --reason explaining why a model without a "
                                        "privacy guarantee ships")  # fmt: skip
        prov = self.provenance(version)
        private = self._check_private(version, allow_not_private=allow_not_private)
        if not force and not release_allowed(prov.evaluation, prov.undecided_reach, channel):
            why = _why_refused(prov.evaluation, prov.undecided_reach, channel)
            raise ConfigError("version", f"{version} {why}; pass --force --reason '...' to override (recorded in the "
                                         "audit log)")  # fmt: skip
        today = _now().date()
        review = review_by or today + DEFAULT_REVIEW
        if review <= today:
            raise ConfigError("review-by", f"must be a future date, got {review.isoformat()}")
        current = self.channel(channel)
        previous = () if current is None else current.previous + (current.version,)
        files = self._files(version)
        stable = self.channel(STABLE) if STABLE in self.channels else None
        still_withdrawn = tuple(v for v in withdrawn(None if stable is None else stable.to_dict()) if v != version)
        doc = Channel(channel=channel, version=version, files=files, rollout_percent=float(rollout_percent),
                      approver=approver, review_by=review.isoformat(), promoted_at=_now().isoformat(),
                      forced=bool(force and not release_allowed(prov.evaluation, prov.undecided_reach, channel)),
                      reason=reason if force or allow_not_private else None,
                      gates=prov.evaluation, previous=previous[-10:], serial=self._next_serial(),
                      withdrawn=still_withdrawn if channel == STABLE else ())  # fmt: skip
        changed = {channel_target(channel): canonical_json(doc.to_dict()).encode()}
        reinstated = stable is not None and version in stable.withdrawn
        if reinstated and channel != STABLE:
            assert stable is not None  # an explicit promotion takes the version off stable's list; same serial
            kept = dataclasses.replace(stable, withdrawn=still_withdrawn)
            changed[channel_target(STABLE)] = canonical_json(kept.to_dict()).encode()
        self._commit(changed, event="promote",
                     channel=channel, version=version, approver=approver, rollout=rollout_percent,
                     review_by=doc.review_by, forced=doc.forced, reason=doc.reason, gates=prov.evaluation,
                     replaced=None if current is None else current.version, shadow=shadow, private=private,
                     allow_not_private=allow_not_private, reinstated=reinstated)  # fmt: skip
        return doc

    def _next_serial(self) -> int:
        return int(self._load("targets").signed.version) + 1  # the version the coming commit signs

    def _docs(self) -> dict[str, dict[str, Any] | None]:
        """Every channel document as a device reads it (None: nothing promoted)."""
        docs = {}
        for name in self.channels:
            ch = self.channel(name)
            docs[name] = None if ch is None else ch.to_dict()
        return docs

    def rollback(self, *, channel: str, approver: str, reason: str = "") -> Channel:
        """Point ``channel`` back at the newest version it held before that stable has not withdrawn.

        Rolling back ``stable`` withdraws the version it rolls away from: it joins stable's signed
        ``withdrawn`` list, no channel serves it again (a canary pointing at it is paused, a canary
        rollback skips it) until an operator promotes it explicitly. A canary is rolled back only
        while it is live: a paused or behind-stable canary runs on no device (promote to start a
        new rollout).

        Raises
        ------
        ConfigError
            If the channel is not served to any device (canary paused, behind stable or pointing
            at a withdrawn version), or has no earlier version that stable has not withdrawn.
        """
        self._check_channel(channel)
        current = self.channel(channel)
        if current is None or (not current.previous and channel != CANARY):
            raise ConfigError("channel", f"{channel} has no earlier version to roll back to")
        if not approver.strip():
            raise ConfigError("approver", "a rollback records who approved it; pass --approver NAME")
        docs = self._docs()
        idle = not_served(channel, docs) if channel == CANARY else None
        if idle is not None:
            raise ConfigError("channel", f"{channel} runs on no device ({idle}), so there is nothing to roll back; "
                                         f"promote a version to {channel} to start a new rollout")  # fmt: skip
        gone = set(withdrawn(docs.get(STABLE))) | ({current.version} if channel == STABLE else set())
        eligible = [i for i, v in enumerate(current.previous) if v not in gone and v != current.version]
        if not eligible and channel == CANARY:
            # nothing earlier it may serve: the canary stops, and its devices run stable's version
            why = f"rolled back from {current.version} ({reason or 'no reason given'}); no earlier version to serve"
            held = dataclasses.replace(current, paused=True, paused_reason=why, approver=approver)
            self._commit({channel_target(channel): canonical_json(held.to_dict()).encode()}, event="rollback",
                         channel=channel, version=None, replaced=current.version, approver=approver, reason=reason,
                         paused_canary=current.version)  # fmt: skip
            return held
        if not eligible:
            held_list = ", ".join(current.previous)
            raise ConfigError("channel", f"{channel} has no earlier version that stable has not withdrawn "
                                         f"({held_list} withdrawn); promote one explicitly")  # fmt: skip
        target = current.previous[eligible[-1]]
        gates = self.provenance(target).evaluation
        # A rollback may restore a model whose gates never passed: it stays marked as forced.
        doc = Channel.from_dict({**current.to_dict(), "version": target, "files": self._files(target),
                                 "approver": approver, "promoted_at": _now().isoformat(),
                                 "previous": list(current.previous[: eligible[-1]]), "forced": gates != "passed",
                                 "reason": f"rollback: {reason or 'no reason given'}", "gates": gates,
                                 "serial": self._next_serial(), "paused": False, "paused_reason": None,
                                 "withdrawn": sorted(gone) if channel == STABLE else []})  # fmt: skip
        changed = {channel_target(channel): canonical_json(doc.to_dict()).encode()}
        canary = self.channel(CANARY) if channel == STABLE and CANARY in self.channels else None
        paused = canary is not None and canary.version == current.version and not canary.paused
        if paused:
            assert canary is not None
            held = dataclasses.replace(canary, paused=True, paused_reason=f"stable rolled back from {current.version}")
            changed[channel_target(CANARY)] = canonical_json(held.to_dict()).encode()
        skipped = [v for v in current.previous[eligible[-1] + 1 :] if v in gone]
        self._commit(changed, event="rollback", channel=channel, version=target, replaced=current.version,
                     approver=approver, reason=reason, paused_canary=current.version if paused else None,
                     withdrawn=current.version if channel == STABLE else None, skipped_withdrawn=skipped)  # fmt: skip
        return doc

    def set_rollout(self, *, channel: str, rollout_percent: float, approver: str) -> Channel:
        """Change the share of devices a canary reaches, keeping its version (``registry rollout``).

        Raises
        ------
        ConfigError
            If nothing was promoted to ``channel``, the canary is paused, or the share is outside (0, 100].
        """
        self._check_channel(channel)
        if not 0 < rollout_percent <= 100:
            raise ConfigError("percent", f"must be in (0, 100], got {rollout_percent}")
        if not approver.strip():
            raise ConfigError("approver", "a rollout change records who approved it; pass --approver NAME")
        current = self.channel(channel)
        if current is None:
            raise ConfigError("channel", f"nothing was promoted to {channel} yet")
        if current.paused:
            raise ConfigError("channel", f"{channel} is paused ({current.paused_reason}); promote a version to "
                                         f"{channel} to start a new rollout")  # fmt: skip
        if channel == CANARY and canary_state(self._docs().get(STABLE), current.to_dict()) == "withdrawn":
            raise ConfigError("channel", f"{channel} points at {current.version}, which stable withdrew; promote "
                                         f"a version to {channel} to start a new rollout")  # fmt: skip
        doc = dataclasses.replace(current, rollout_percent=float(rollout_percent), approver=approver)
        self._commit({channel_target(channel): canonical_json(doc.to_dict()).encode()}, event="rollout",
                     channel=channel, version=doc.version, rollout=rollout_percent,
                     replaced_rollout=current.rollout_percent, approver=approver)  # fmt: skip
        return doc

    def _files(self, version: str) -> dict[str, str]:
        prefix = artifact_target(version, "")
        return {k[len(prefix) :]: v.hashes["sha256"] for k, v in self._load("targets").signed.targets.items()
                if k.startswith(prefix)}  # fmt: skip

    # -- devices ------------------------------------------------------------------------
    def devices(self) -> dict[str, dict[str, Any]]:
        """Enrolled devices: id -> ``{"public_key", "enrolled_at", "approver"}`` (``REGISTRY/devices.json``).

        Raises
        ------
        IntegrityError
            If the file is not an object of device id -> enrolment.
        """
        p = self.path / DEVICES_FILE
        data = read_json(p, what="enrolled devices") if p.exists() else {}
        if not isinstance(data, dict) or not all(isinstance(v, dict) and isinstance(v.get("public_key"), str)
                                                 for v in data.values()):  # fmt: skip
            raise IntegrityError(f"{p} is not an object of device id -> {{public_key, ...}}; restore it from the "
                                 "enrol-device entries of the audit log")  # fmt: skip
        return data

    def enrol(self, *, device_id: str, public_key: str, approver: str) -> dict[str, Any]:
        """Register a device's alert-signing key (``fedready registry enrol``).

        ``public_key`` is what ``fedready edge enrol`` printed on the device: its raw Ed25519
        public key, base64. Enrolling an id again replaces its key (a re-provisioned device).

        Raises
        ------
        ConfigError
            If the id is empty, the key is not an Ed25519 public key, or ``approver`` is empty.
        """
        import base64

        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        if not device_id.strip():
            raise ConfigError("device-id", "pass the device's id, as it runs `fedready edge update --device-id`")
        if not approver.strip():
            raise ConfigError("approver", "an enrolment records who approved it; pass --approver NAME")
        try:
            Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key.strip(), validate=True))
            ok = True
        except ValueError:
            ok = False
        public_key = public_key.strip()
        if not ok:
            raise ConfigError("public-key", f"{public_key[:60]!r} is not an Ed25519 public key (base64 of 32 bytes); "
                                            "pass what `fedready edge enrol` printed on the device")  # fmt: skip
        self._signer("timestamp")
        devices = self.devices()
        replaced = devices.get(device_id, {}).get("public_key")
        devices[device_id] = {"public_key": public_key, "enrolled_at": _now().isoformat(), "approver": approver}
        write_json(self.path / DEVICES_FILE, devices)
        self._record("enrol-device", device_id=device_id, public_key=public_key, approver=approver,
                     replaced_key=replaced)  # fmt: skip
        return devices[device_id]

    def revoke(self, *, device_id: str, approver: str) -> None:
        """Remove a device's key: its alerts stop counting (a lost or retired device).

        Raises
        ------
        ConfigError
            If the device is not enrolled or ``approver`` is empty.
        """
        if not approver.strip():
            raise ConfigError("approver", "a revocation records who approved it; pass --approver NAME")
        devices = self.devices()
        if device_id not in devices:
            known = ", ".join(sorted(devices)[:10]) or "none"
            raise ConfigError("device-id", f"device '{device_id}' is not enrolled; enrolled: {known}")
        self._signer("timestamp")
        old = devices.pop(device_id)
        write_json(self.path / DEVICES_FILE, devices)
        self._record("revoke-device", device_id=device_id, public_key=old["public_key"], approver=approver)

    def auto_rollback(
        self,
        *,
        channel: str,
        alerts: Path,
        min_devices: int = DEFAULT_MIN_DEVICES,
        min_share: float = DEFAULT_MIN_SHARE,
        fleet_size: int | None = None,
        approver: str = "fedready auto-rollback",
        max_skew: float = DEFAULT_MAX_SKEW,
        now: float | None = None,
    ) -> dict[str, Any]:
        """Roll ``channel`` back if enough *enrolled devices* reported a breach of the version they run now.

        Acts only on a channel that devices run (:func:`fedready.registry._channels.not_served`:
        not a paused or behind-stable canary, not stable while a 100% canary takes every device).
        An alert counts when it names this channel and its current version, is signed by the
        key enrolled for its ``device_id`` (:meth:`enrol`), and its time lies between the version's
        promotion on this channel (the version was live then) and ``now + max_skew``. Each device
        counts once however many alerts it raised: rolling back takes at least ``min_devices``
        devices, or ``min_share`` of the channel's devices when ``fleet_size`` says how many devices
        follow the registry (for the canary: its rollout share of them), whichever is larger.
        Meant for cron or CI: running it again after a rollback does nothing, because the alerts
        name the old version.

        Parameters
        ----------
        alerts : Path
            JSON lines written by ``fedready monitor`` (devices' files concatenated).
        min_devices : int
            Distinct devices needed, at least.
        min_share : float
            Share of the channel's devices needed (applied with ``fleet_size`` only).
        fleet_size : int, optional
            Devices that follow this registry.
        max_skew : float
            Seconds an alert's time may lie ahead of ``now`` (clocks differ a little; alerts dated
            later were written ahead of time).
        now : float, optional
            The registry's clock (Unix seconds); default: the current time.

        Returns
        -------
        dict
            ``rolled_back``, ``channel``, ``version`` (now served), ``replaced``, ``breaches``
            (counted alerts), ``devices`` (distinct), ``needed``, ``refused`` (alerts not counted, by
            reason), ``served`` (False with ``why`` when no device runs the channel) and a summary
            by kind and feature.

        Raises
        ------
        ConfigError
            If an option is out of range, the alerts file is missing, or a rollback is due but the
            channel has no earlier version that stable has not withdrawn.
        IntegrityError
            If an alert line is not JSON.

        Notes
        -----
        Whoever can POST to a device's ``/predict`` feeds its monitor, so one device's alerts
        are one witness, not proof: counting devices instead of alerts keeps a single poisoned
        (or broken) device from rolling a release back for everyone, and the signature keeps one
        device (or anyone who can write the collected file) from speaking for others. The
        device keys are enrolled by the operator (docs/guides/operator.md, "Device enrolment").
        """
        from fedready.monitoring import ALERT_CONTEXT

        self._check_channel(channel)
        if min_devices < 1:
            raise ConfigError("min-devices", f"must be >= 1, got {min_devices}")
        if not 0 <= min_share <= 1:
            raise ConfigError("min-share", f"must be a share in [0, 1], got {min_share}")
        if fleet_size is not None and fleet_size < 1:
            raise ConfigError("fleet-size", f"must be >= 1 device, got {fleet_size}")
        if not 0 <= max_skew <= 3600:
            raise ConfigError("max-skew", f"must be in [0, 3600] seconds, got {max_skew}")
        path = Path(alerts)
        if not path.is_file():
            raise ConfigError("alerts", f"{path} does not exist; pass the JSON lines written by `fedready monitor`")
        current = self.channel(channel)
        if current is None:
            return {"rolled_back": False, "channel": channel, "version": None, "replaced": None, "breaches": 0,
                    "devices": 0, "served": False, "why": f"nothing was promoted to {channel}"}  # fmt: skip
        why = not_served(channel, self._docs())
        cohort = None
        if fleet_size is not None:
            cohort = fleet_size * (current.rollout_percent / 100 if channel == CANARY else 1.0)
        needed = max(min_devices, math.ceil(min_share * cohort) if cohort is not None else 0)
        since = dt.datetime.fromisoformat(current.promoted_at).timestamp()
        latest = (time.time() if now is None else now) + max_skew
        keys = {d: v["public_key"] for d, v in self.devices().items()}
        hits: list[dict[str, Any]] = []
        refused: Counter[str] = Counter()
        with path.open(encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    alert = json.loads(line)
                except (ValueError, RecursionError) as e:
                    raise IntegrityError(f"{path}: line {n} is not JSON ({e})") from e
                if not isinstance(alert, dict):
                    raise IntegrityError(f"{path}: line {n} is not an alert object")
                if alert.get("channel") != channel or alert.get("version") != current.version:
                    continue  # another channel's, or another rollout's
                verdict = _alert_verdict(alert, keys, since=since, latest=latest, context=ALERT_CONTEXT)
                if verdict:
                    refused[verdict] += 1
                else:
                    hits.append(alert)
        devices = sorted({str(a["device_id"]) for a in hits})
        kinds = sorted({f"{a.get('kind')}:{a.get('feature') or a.get('metric')}" for a in hits})
        out = {"rolled_back": False, "channel": channel, "version": current.version, "replaced": None,
               "breaches": len(hits), "devices": len(devices), "needed": needed, "cohort": cohort,
               "rule": f"at least {min_devices} distinct enrolled device(s)"
                       + (f" or {min_share:g} of {cohort:g} device(s), whichever is larger" if cohort else ""),
               "kinds": kinds, "refused": dict(sorted(refused.items())), "served": why is None}  # fmt: skip
        if why is not None:
            return {**out, "why": f"no device runs {channel}'s {current.version} ({why}); nothing to roll back"}
        if len(devices) < needed:
            return out
        reason = (f"auto-rollback: {len(devices)} device(s) reported {len(hits)} monitoring breach(es) of "
                  f"{current.version} ({', '.join(kinds)})")  # fmt: skip
        doc = self.rollback(channel=channel, approver=approver, reason=reason)
        version = None if doc.paused else doc.version
        self._record("auto-rollback", channel=channel, version=version, replaced=current.version,
                     breaches=len(hits), devices=len(devices), device_ids=devices[:50], needed=needed, kinds=kinds,
                     refused=dict(refused), alerts=str(path), paused=doc.paused)  # fmt: skip
        return {**out, "rolled_back": True, "version": version, "replaced": current.version, "paused": doc.paused}

    def status(self) -> dict[str, Any]:
        """Channels (flagging past-review models), what each group of devices runs, versions and expiry."""
        now = _now()
        channels = {}
        docs = {}
        for name in self.channels:
            ch = self.channel(name)
            docs[name] = None if ch is None else ch.to_dict()
            channels[name] = None if ch is None else {**ch.to_dict(), "past_review": ch.past_review(now.date())}
        expiry = {}
        for role in ROLES:
            md = self._load(role)
            expiry[role] = {"version": md.signed.version, "expires": md.signed.expires.isoformat(),
                            "expired": md.signed.expires <= now}  # fmt: skip
        out = {"registry": str(self.path), "channels": channels, "versions": self.versions(), "metadata": expiry,
               "audit": self.audit.head().to_dict(), "enrolled_devices": len(self.devices())}  # fmt: skip
        if STABLE in docs and CANARY in docs:
            out["devices"] = cohort_versions(docs[STABLE], docs[CANARY])
            out["canary_state"] = canary_state(docs[STABLE], docs[CANARY])
        return out

    def rotate_key(self, role: str, *, actor: str = "") -> str:
        """Replace ``role``'s key with a new one; return the new key id.

        The new root version is signed by the old and the new root key (TUF spec 5.3.4, so
        devices holding the old root accept it); the role's metadata is then re-signed.
        """
        if role not in ROLES:
            raise ConfigError("role", f"unknown role '{role}'; expected one of: {', '.join(ROLES)}")
        root = self._load("root")
        old_root_signer = self._signer("root")
        key_file = self.keys_dir / f"{role}.key"
        staged = key_file.with_name(f"{role}.key.new")
        staged.unlink(missing_ok=True)
        signer = _new_key(staged)
        for keyid in list(root.signed.roles[role].keyids):
            root.signed.revoke_key(keyid, role)
        root.signed.add_key(signer.public_key, role)
        root.signed.version += 1
        root.signed.expires = _now() + DEFAULT_EXPIRY["root"]
        root.sign(old_root_signer, append=False)
        if role == "root":
            root.sign(signer, append=True)
        _write(self.metadata_dir, root, f"{root.signed.version}.root.json")
        _write(self.metadata_dir, root, "root.json")
        os.replace(staged, key_file)
        fields = {"role": role, "keyid": signer.public_key.keyid, "root_version": root.signed.version, "actor": actor}
        if role == "targets":
            self._commit({}, event="rotate-key", **fields)
        else:
            if role == "snapshot":
                self._bump(self._load("snapshot"), "snapshot")
            self._record("rotate-key", **fields)
        return signer.public_key.keyid


def _alert_verdict(alert: dict[str, Any], keys: dict[str, str], *, since: float, latest: float,
                   context: bytes) -> str | None:  # fmt: skip
    """Why an alert of the right channel and version does not count (None: it counts)."""
    from fedready.audit import verify_record

    device = alert.get("device_id")
    if not isinstance(device, str) or not device:
        return "no-device-id"
    sig = alert.get("sig")
    if sig is None:
        return "unsigned"
    if device not in keys:
        return "not-enrolled"
    if not verify_record(keys[device], {k: v for k, v in alert.items() if k != "sig"}, sig, context=context):
        return "bad-signature"
    t = alert.get("time")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t):
        return "no-time"
    if t > latest:
        return "dated-in-the-future"
    if t < since:
        return "before-promotion"
    return None


def _check_shadow(version: str, min_agreement: float | None, report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The shadow evidence recorded with a promotion (None when no agreement is required)."""
    if min_agreement is None:
        return None
    if not 0 <= min_agreement <= 1:
        raise ConfigError("min-agreement", f"must be a share in [0, 1], got {min_agreement}")
    if report is None:
        raise ConfigError("shadow-report", "--min-agreement needs --shadow-report FILE (written by `fedready shadow`)")
    if report.get("candidate_version") != version:
        got = report.get("candidate_version")
        raise ConfigError("shadow-report", f"the report compares candidate {got!r}, not {version}; "
                                           f"run `fedready shadow` with the candidate {version}")  # fmt: skip
    agreement = float(report.get("agreement", -1))
    if agreement < min_agreement:
        active, rows = report.get("active_version"), report.get("rows")
        raise ConfigError("min-agreement", f"{version} agrees with {active} on {agreement:.4f} of {rows} rows, "
                                           f"below the required {min_agreement}")  # fmt: skip
    return {"agreement": agreement, "min_agreement": min_agreement, "active": report.get("active_version"),
            "rows": report.get("rows"), "min_group_agreement": report.get("min_group_agreement")}  # fmt: skip


def _new_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec
    from securesystemslib.signer import CryptoSigner

    path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()))
    return CryptoSigner(key)


def _write(folder: Path, md: Any, name: str) -> None:
    from tuf.api.serialization.json import JSONSerializer

    tmp = folder / f".{name}.tmp"
    md.to_file(str(tmp), serializer=JSONSerializer(compact=False))
    os.replace(tmp, folder / name)
