"""A model registry kept as a TUF repository of plain files, with release channels.

Layout of a registry folder::

    REGISTRY/
      repository/                 serve this folder (any static HTTP server or object store)
        metadata/                 1.root.json, root.json, targets.json, snapshot.json, timestamp.json
        targets/artifacts/V/...   every file of every published artifact (immutable)
        targets/channels/C.json   channel C: the version it points at, rollout, approver, review-by
      keys/                       one ECDSA P-256 key per TUF role (keep root and targets offline)
      audit.jsonl                 every registry action, hash-chained

Channels are TUF targets, so a device learns which version a channel points at from the same
signed, versioned, expiring metadata that protects the model files.

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

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedready.errors import ConfigError, IntegrityError
from fedready.registry._artifact import PROVENANCE_FILE, SIGNATURE_FILE, Provenance, verify_artifact
from fedready.registry._canonical import canonical_json, check_version, file_sha256, read_json

__all__ = ["CHANNELS", "DEFAULT_EXPIRY", "ROLES", "Channel", "Registry", "channel_target", "artifact_target"]

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
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, unknown keys kept."""
        out = {k: v for k, v in self.__dict__.items() if k != "extra"}
        out["previous"] = list(self.previous)
        return {**self.extra, **out}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Channel:
        """Parse a channel document, keeping unknown keys."""
        names = [f for f in cls.__dataclass_fields__ if f != "extra"]
        try:
            known = {n: data[n] for n in names if n in data}
            known["previous"] = tuple(known.get("previous", ()))
            return cls(**known, extra={k: v for k, v in data.items() if k not in names})
        except TypeError as e:
            raise IntegrityError(f"channel document is malformed ({e})") from e

    def past_review(self, today: dt.date | None = None) -> bool:
        """True when the review-by date has passed."""
        return dt.date.fromisoformat(self.review_by) < (today or _now().date())


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
        from fedready.server.audit import AuditLog

        self.audit = AuditLog(self.path / "audit.jsonl")

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
        if (path / "repository" / "metadata" / "root.json").exists():
            raise ConfigError("registry", f"{path} already holds a registry")
        for c in channels:
            check_version(c, field="channel")
        (path / "repository" / "metadata").mkdir(parents=True, exist_ok=True)
        (path / "repository" / "targets").mkdir(parents=True, exist_ok=True)
        signers = {role: _new_key(path / "keys" / f"{role}.key") for role in ROLES}
        now = _now()
        root = Root(expires=now + DEFAULT_EXPIRY["root"], consistent_snapshot=False)
        for role, signer in signers.items():
            root.add_key(signer.public_key, role)
        root.unrecognized_fields["x-fedready-channels"] = list(channels)
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
        reg.audit.append("registry-init", channels=list(channels), actor=actor,
                         keys={r: s.public_key.keyid for r, s in signers.items()})  # fmt: skip
        return reg

    # -- reading --------------------------------------------------------------------------
    def _load(self, role: str) -> Any:
        from tuf.api.metadata import Metadata

        return Metadata.from_file(str(self.metadata_dir / f"{role}.json"))

    def _signer(self, role: str) -> Any:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        from securesystemslib.signer import CryptoSigner

        key = self.keys_dir / f"{role}.key"
        if not key.is_file():
            raise ConfigError("keys", f"{key} is missing; the {role} key must be present to change {role} metadata")
        return CryptoSigner(load_pem_private_key(key.read_bytes(), password=None))

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

    def _check_channel(self, name: str) -> None:
        if name not in self.channels:
            raise ConfigError("channel", f"unknown channel '{name}'; expected one of: {', '.join(self.channels)}")

    # -- writing --------------------------------------------------------------------------
    def _commit(self, changed: dict[str, bytes | None], *, targets_expiry: dt.timedelta | None = None) -> None:
        """Write target files (None deletes) then re-sign targets, snapshot and timestamp, in that order."""
        from tuf.api.metadata import MetaFile, TargetFile

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
        self._bump(targets, "targets", targets_expiry)
        snapshot = self._load("snapshot")
        snapshot.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
        self._bump(snapshot, "snapshot")
        self.refresh()

    def _bump(self, md: Any, role: str, expiry: dt.timedelta | None = None) -> None:
        md.signed.version += 1
        md.signed.expires = _now() + (expiry if expiry is not None else DEFAULT_EXPIRY[role])
        md.sign(self._signer(role), append=False)
        _write(self.metadata_dir, md, f"{role}.json")

    def refresh(self, *, timestamp_expiry: dt.timedelta | None = None) -> int:
        """Re-sign the timestamp over the current snapshot (run at least daily); return its version."""
        from tuf.api.metadata import MetaFile

        snapshot = self._load("snapshot")
        ts = self._load("timestamp")
        ts.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        self._bump(ts, "timestamp", timestamp_expiry)
        return ts.signed.version

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
        artifact = Path(artifact)
        prov = verify_artifact(artifact, public_key=public_key)
        version = check_version(prov.version)
        if artifact.name != version:
            raise IntegrityError(f"{artifact} holds version {version}; artifact folders are named after their version")
        files = {p.name: p for p in sorted(artifact.iterdir()) if p.is_file()}
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
        self._commit({artifact_target(version, name): p.read_bytes() for name, p in files.items()})
        self.audit.append("publish", version=version, actor=actor, run_id=prov.run_id, model_digest=prov.model_digest,
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
    ) -> Channel:
        """Point ``channel`` at ``version``.

        With ``min_agreement``, a shadow report (:func:`fedready.monitoring.shadow_compare`) of
        ``version`` as the candidate must show at least that share of decisions agreeing with the
        active model (``--force`` does not override this: it is the operator's own bar).

        Raises
        ------
        ConfigError
            If the artifact's gates failed or never ran and ``force``/``reason`` are not both
            given, if ``approver`` is empty, the rollout is outside (0, 100], or the shadow
            agreement is missing, about another version, or below ``min_agreement``.
        """
        self._check_channel(channel)
        shadow = _check_shadow(version, min_agreement, shadow_report)
        if not approver.strip():
            raise ConfigError("approver", "every promotion records who approved it; pass --approver NAME")
        if not 0 < rollout_percent <= 100:
            raise ConfigError("rollout", f"must be in (0, 100], got {rollout_percent}")
        if force and not (reason and reason.strip()):
            raise ConfigError("reason", "--force needs --reason explaining why the gates are overridden")
        prov = self.provenance(version)
        if not prov.gates_passed and not force:
            why = "failed its evaluation gates" if prov.evaluation == "failed" else "has no evaluation (gates not run)"
            raise ConfigError("version", f"{version} {why}; run `fedready evaluate` and package again, or pass "
                                         "--force --reason '...' to override (recorded in the audit log)")  # fmt: skip
        today = _now().date()
        review = review_by or today + DEFAULT_REVIEW
        if review <= today:
            raise ConfigError("review-by", f"must be a future date, got {review.isoformat()}")
        current = self.channel(channel)
        previous = () if current is None else current.previous + (current.version,)
        prefix = artifact_target(version, "")
        files = {k[len(prefix) :]: v.hashes["sha256"] for k, v in self._load("targets").signed.targets.items()
                 if k.startswith(prefix)}  # fmt: skip
        doc = Channel(channel=channel, version=version, files=files, rollout_percent=float(rollout_percent),
                      approver=approver, review_by=review.isoformat(), promoted_at=_now().isoformat(),
                      forced=bool(force and not prov.gates_passed), reason=reason if force else None,
                      gates=prov.evaluation, previous=previous[-10:])  # fmt: skip
        self._commit({channel_target(channel): canonical_json(doc.to_dict()).encode()})
        self.audit.append("promote", channel=channel, version=version, approver=approver, rollout=rollout_percent,
                          review_by=doc.review_by, forced=doc.forced, reason=doc.reason, gates=prov.evaluation,
                          replaced=None if current is None else current.version, shadow=shadow)  # fmt: skip
        return doc

    def rollback(self, *, channel: str, approver: str, reason: str = "") -> Channel:
        """Point ``channel`` back at the version it held before the last promotion.

        Raises
        ------
        ConfigError
            If the channel has no earlier version.
        """
        current = self.channel(channel)
        if current is None or not current.previous:
            raise ConfigError("channel", f"{channel} has no earlier version to roll back to")
        if not approver.strip():
            raise ConfigError("approver", "a rollback records who approved it; pass --approver NAME")
        target = current.previous[-1]
        prefix = artifact_target(target, "")
        files = {k[len(prefix) :]: v.hashes["sha256"] for k, v in self._load("targets").signed.targets.items()
                 if k.startswith(prefix)}  # fmt: skip
        gates = self.provenance(target).evaluation
        # A rollback may restore a model whose gates never passed: it stays marked as forced.
        doc = Channel.from_dict({**current.to_dict(), "version": target, "files": files, "approver": approver,
                                 "promoted_at": _now().isoformat(), "previous": list(current.previous[:-1]),
                                 "forced": gates != "passed", "reason": f"rollback: {reason or 'no reason given'}",
                                 "gates": gates})  # fmt: skip
        self._commit({channel_target(channel): canonical_json(doc.to_dict()).encode()})
        self.audit.append("rollback", channel=channel, version=target, replaced=current.version, approver=approver,
                          reason=reason)  # fmt: skip
        return doc

    def auto_rollback(self, *, channel: str, alerts: Path, min_alerts: int = 1,
                      approver: str = "fedready auto-rollback") -> dict[str, Any]:  # fmt: skip
        """Roll ``channel`` back if its devices reported enough breaches of the version it serves now.

        An alert counts when it names this channel and its current version and was raised after
        that version's promotion (older alerts belong to another rollout). Meant for cron or CI:
        running it again after a rollback does nothing, because the alerts name the old version.

        Parameters
        ----------
        alerts : Path
            JSON lines written by ``fedready monitor`` (devices' files concatenated).
        min_alerts : int
            Breaches needed to act.

        Returns
        -------
        dict
            ``rolled_back``, ``channel``, ``version`` (now served), ``replaced``, ``breaches`` and a
            summary by kind and feature.

        Raises
        ------
        ConfigError
            If the alerts file is missing, or a rollback is due but the channel has no earlier version.
        IntegrityError
            If an alert line is not JSON.
        """
        self._check_channel(channel)
        if min_alerts < 1:
            raise ConfigError("min-alerts", f"must be >= 1, got {min_alerts}")
        path = Path(alerts)
        if not path.is_file():
            raise ConfigError("alerts", f"{path} does not exist; pass the JSON lines written by `fedready monitor`")
        current = self.channel(channel)
        if current is None:
            return {"rolled_back": False, "channel": channel, "version": None, "replaced": None, "breaches": 0}
        since = dt.datetime.fromisoformat(current.promoted_at).timestamp()
        hits: list[dict[str, Any]] = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                alert = json.loads(line)
            except json.JSONDecodeError as e:
                raise IntegrityError(f"{path}: line {n} is not JSON ({e})") from e
            if (alert.get("channel") == channel and alert.get("version") == current.version
                    and float(alert.get("time", 0)) >= since):  # fmt: skip
                hits.append(alert)
        kinds = sorted({f"{a.get('kind')}:{a.get('feature') or a.get('metric')}" for a in hits})
        out = {"rolled_back": False, "channel": channel, "version": current.version, "replaced": None,
               "breaches": len(hits), "devices": len({a.get("device_id") for a in hits}), "kinds": kinds}  # fmt: skip
        if len(hits) < min_alerts:
            return out
        reason = f"auto-rollback: {len(hits)} monitoring breach(es) of {current.version} ({', '.join(kinds)})"
        doc = self.rollback(channel=channel, approver=approver, reason=reason)
        self.audit.append("auto-rollback", channel=channel, version=doc.version, replaced=current.version,
                          breaches=len(hits), devices=out["devices"], kinds=kinds, alerts=str(path))  # fmt: skip
        return {**out, "rolled_back": True, "version": doc.version, "replaced": current.version}

    def status(self) -> dict[str, Any]:
        """Channels (flagging past-review models), published versions and metadata expiry."""
        now = _now()
        channels = {}
        for name in self.channels:
            ch = self.channel(name)
            channels[name] = None if ch is None else {**ch.to_dict(), "past_review": ch.past_review(now.date())}
        expiry = {}
        for role in ROLES:
            md = self._load(role)
            expiry[role] = {"version": md.signed.version, "expires": md.signed.expires.isoformat(),
                            "expired": md.signed.expires <= now}  # fmt: skip
        return {"registry": str(self.path), "channels": channels, "versions": self.versions(), "metadata": expiry}

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
        if role == "targets":
            self._commit({})
        elif role == "snapshot":
            snapshot = self._load("snapshot")
            self._bump(snapshot, "snapshot")
            self.refresh()
        elif role == "timestamp":
            self.refresh()
        self.audit.append("rotate-key", role=role, keyid=signer.public_key.keyid, root_version=root.signed.version,
                          actor=actor)  # fmt: skip
        return signer.public_key.keyid


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
