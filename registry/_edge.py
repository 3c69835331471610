"""The edge agent: fetch a channel's model through TUF, verify its signature, swap it in atomically.

Device folder (``--home``)::

    HOME/
      device.json          device id, repository, channel, active and previous version
      trust/root.json      the TUF root the device was provisioned with (trust anchor)
      trust/signing.pub    the operator's model-signing public key
      tuf/                 TUF client metadata (root.json, timestamp.json, ... as last verified)
      models/V/            verified artifacts: the active one and the previous one (for rollback)

Notes
-----
Three checks stand between the network and the running model: TUF metadata (signed by the
registry's role keys, versions never go down, nothing expired: TUF spec 5.3-5.5), TUF target
hashes and lengths for every file, then the OpenSSF model signature by the operator's key
over every file. Only then does ``device.json`` change, by one atomic rename; until that
moment the previous model keeps serving, so a failed or interrupted update never leaves the
device without a working model.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedready.errors import ConfigError, IntegrityError, TransportError
from fedready.registry._artifact import SIGNATURE_FILE, payload_digests, verify_artifact
from fedready.registry._canonical import check_file_name, check_version, file_sha256, read_json, write_json
from fedready.registry._channels import CANARY, STABLE, in_canary, resolve  # in_canary: re-exported
from fedready.registry._predict import Predictor

__all__ = ["EdgeAgent", "UpdateResult", "in_canary"]

_STATE = "device.json"
_CHANNEL_PREFIX, _ARTIFACT_PREFIX = "channels/", "artifacts/"  # same target paths as the registry


_SECRET = "decision.secret"  # per-device key of the fairness rule's draws (fedready.thresholds.row_uniform)
DEVICE_KEY = "device.key"  # Ed25519: signs the device's alerts; its public key is enrolled in the registry
_LOCK = ".lock"
_STAGING = ".staging-"


@dataclass(frozen=True)
class UpdateResult:
    """What ``edge update`` did."""

    version: str
    previous: str | None
    channel: str  # the channel whose document was taken (see fedready.registry._channels)
    changed: bool


class EdgeAgent:
    """One device's model store.

    Parameters
    ----------
    home : Path
        The device folder (created on first update).
    """

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.models = self.home / "models"
        self.trust = self.home / "trust"

    # -- state ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The device state (empty before the first update).

        Raises
        ------
        IntegrityError
            If ``device.json`` is not an object, or a field of it has the wrong type (a version
            that is not a safe folder name, digests that are not ``{version: {file: sha256}}``).
        """
        p = self.home / _STATE
        if not p.exists():
            return {}
        state = read_json(p, what="device state")
        if not isinstance(state, dict):
            raise IntegrityError(f"{p} holds a JSON {type(state).__name__}, not the device state object; restore it "
                                 "from a backup or provision the device again")  # fmt: skip
        for name in ("active", "previous"):
            value = state.get(name)
            if value is not None and not isinstance(value, str):
                raise IntegrityError(f"{p}: field '{name}' is a {type(value).__name__}, not a version; refused")
            if value is not None:
                _untrusted_version(value, f"{p} field '{name}'")
        for name in ("device_id", "repo", "channel", "source_channel"):
            if state.get(name) is not None and not isinstance(state[name], str):
                raise IntegrityError(f"{p}: field '{name}' is a {type(state[name]).__name__}, not text; refused")
        digests = state.get("digests", {})
        if not isinstance(digests, dict) or not all(
            isinstance(d, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in d.items())
            for d in digests.values()
        ):
            raise IntegrityError(f"{p}: field 'digests' is not {{version: {{file: sha256}}}}; refused")
        return state

    def _save(self, state: dict[str, Any]) -> None:
        write_json(self.home / _STATE, state)  # atomic rename: the swap

    def active_dir(self) -> Path:
        """Folder of the active model.

        Raises
        ------
        ConfigError
            If the device has no model yet.
        """
        active = self.state().get("active")
        if not active:
            raise ConfigError("home", f"{self.home} holds no model yet; run `fedready edge update` first")
        return self.models / active

    def decision_secret(self) -> bytes:
        """The device's secret behind randomised fairness decisions (created, mode 0600, on first use)."""
        path = self.home / _SECRET
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return path.read_bytes()
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
        secret = path.read_bytes()
        if len(secret) < 16:
            raise IntegrityError(f"{path} holds {len(secret)} bytes; delete it to create a new device secret")
        return secret

    def device_key(self) -> Any:
        """The device's Ed25519 signing key (``HOME/device.key``, created with mode 0600 on first use).

        It signs the device's monitoring alerts; ``registry auto-rollback`` counts an alert only
        when it verifies with the public key the operator enrolled for this device id.
        """
        from fedready.audit import load_or_create_key

        self.home.mkdir(parents=True, exist_ok=True)
        return load_or_create_key(self.home / DEVICE_KEY)

    def enrolment(self, device_id: str | None = None) -> dict[str, str]:
        """What the operator enrols (``fedready registry enrol``): the device id and its public key.

        Raises
        ------
        ConfigError
            If no device id is known (give one, or run ``edge update`` first) or it differs from
            the one the device has.
        """
        from fedready.audit import public_key_b64

        with self._locked():
            state = self.state()
            known = state.get("device_id")
            if device_id is not None and known not in (None, device_id):
                raise ConfigError("device-id", f"{self.home} belongs to device '{known}', not '{device_id}'")
            device_id = device_id or known
            if not device_id or not device_id.strip():
                raise ConfigError("device-id", f"{self.home} has no device id yet; pass --device-id (the id this "
                                               "device updates with)")  # fmt: skip
            if known is None:
                self._save({**state, "device_id": device_id})  # its alerts name it from now on
            return {"device_id": device_id, "public_key": public_key_b64(self.device_key())}

    def predictor(self) -> Predictor:
        """The active model, loaded."""
        return Predictor(self.active_dir(), secret=self.decision_secret())

    def status(self) -> dict[str, Any]:
        """Device id, channel, active and previous versions, and what the active model came from."""
        state = self.state()
        out = {"home": str(self.home), **{k: v for k, v in state.items() if k != "digests"}}
        if state.get("active"):
            prov = read_json(self.models / state["active"] / "provenance.json", what="provenance")
            if not isinstance(prov, dict):
                raise IntegrityError(f"{self.models / state['active'] / 'provenance.json'} is not a provenance object")
            out["provenance"] = {k: prov.get(k) for k in ("run_id", "model_digest", "evaluation", "created")}
        ts = self.home / "tuf" / "timestamp.json"
        if ts.is_file():  # the registry's audit head this device last verified (`fedready audit checkpoint`)
            try:
                signed = read_json(ts, what="TUF timestamp").get("signed")
                head = {"timestamp_version": signed["version"], **signed["x-fedready-audit"]}
            except (IntegrityError, AttributeError, KeyError, TypeError):
                head = {"error": "tuf/timestamp.json is unreadable; the next `edge update` fetches it again"}
            out["registry_audit_head"] = head
        return out

    def rollback(self) -> str:
        """Make the previous model active again, after verifying it as an update would; return its version.

        Raises
        ------
        ConfigError
            If there is no previous model on the device.
        IntegrityError
            If a file of the previous model changed since it was verified (its recorded TUF or
            signed digest, or the operator's signature, no longer matches); the active model is kept.
        """
        with self._locked():
            state = self.state()
            prev = state.get("previous")
            if prev:
                prev = _untrusted_version(prev, f"{self.home / _STATE}")  # device.json is a file anyone local can edit
            if not prev or not (self.models / prev).is_dir():
                raise ConfigError("home", "no previous model on this device to roll back to")
            folder = self.models / prev
            self._reverify(folder, prev, state.get("digests", {}).get(prev))
            Predictor(folder, secret=self.decision_secret())  # must still load before it becomes active
            self._save({**state, "active": prev, "previous": state["active"], "updated_at": time.time(),
                        "last_action": "rollback"})  # fmt: skip
        return prev

    def _reverify(self, folder: Path, version: str, digests: dict[str, str] | None) -> None:
        """The checks of an update, on a model already on disk: recorded digests, the signature, the version.

        The signature is verified whether or not digests were recorded, and the signed provenance
        must name the folder's version (a signed 1.0.0 copied into ``models/2.0.0`` is refused).
        """
        if digests is not None:
            on_disk = {p.name: p for p in folder.iterdir()}
            if set(on_disk) != set(digests):
                differ = sorted(set(on_disk) ^ set(digests))
                raise IntegrityError(f"{folder}: file '{differ[0]}' was added or removed since the model was "
                                     "verified; refused")  # fmt: skip
            for name, digest in sorted(digests.items()):
                got = file_sha256(on_disk[name]) if on_disk[name].is_file() else "not a file"
                if got != digest:
                    raise IntegrityError(f"{folder}: file '{name}' changed since it was verified (expected sha256 "
                                         f"{digest}, got {got}); refused")  # fmt: skip
        prov = verify_artifact(folder, public_key=self._provision("signing.pub", None, "--public-key"))
        if prov.version != version:
            raise IntegrityError(f"{folder}: the signed provenance names version {prov.version!r}, not {version!r}; "
                                 "a model was copied under another version's folder, refused")  # fmt: skip

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the device's lock (one changing command at a time); clear what a killed one left behind."""
        import fcntl

        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / _LOCK, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError("home", f"another fedready edge command is changing {self.home}; try again when "
                                          "it has finished") from None  # fmt: skip
            try:
                if self.models.is_dir():  # staging folders of an update that was killed
                    for d in self.models.iterdir():
                        if d.name.startswith(_STAGING):
                            shutil.rmtree(d, ignore_errors=True)
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # -- update ---------------------------------------------------------------------------
    def _provision(self, name: str, given: Path | None, flag: str) -> Path:
        stored = self.trust / name
        if given is not None:
            given = Path(given)
            if not given.is_file():
                raise ConfigError(flag, f"{given} does not exist")
            if stored.exists() and stored.read_bytes() != given.read_bytes():
                raise ConfigError(flag, f"{self.home} already trusts a different {name}; keys rotate through "
                                        "the registry (TUF root rotation), or provision a new --home")  # fmt: skip
            if not stored.exists():
                stored.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(given, stored)
        if not stored.exists():
            raise ConfigError(flag, f"the device has no trusted {name} yet; pass {flag} FILE on the first update")
        return stored

    def _updater(self, repo: str, root: Path, timeout: float) -> Any:
        from tuf.ngclient import Updater, Urllib3Fetcher

        tuf_dir = self.home / "tuf"
        tuf_dir.mkdir(parents=True, exist_ok=True)
        base = repo.rstrip("/")
        # After the first update the cached root (possibly rotated since) is the trust anchor.
        bootstrap = None if (tuf_dir / "root.json").exists() else root.read_bytes()
        return Updater(metadata_dir=str(tuf_dir), metadata_base_url=f"{base}/metadata/",
                       target_base_url=f"{base}/targets/", target_dir=str(tuf_dir / "cache"),
                       bootstrap=bootstrap, fetcher=Urllib3Fetcher(socket_timeout=timeout))  # fmt: skip

    def update(
        self,
        *,
        repo: str,
        channel: str,
        device_id: str,
        root: Path | None = None,
        public_key: Path | None = None,
        timeout: float = 30.0,
    ) -> UpdateResult:
        """Fetch, verify and activate the model ``channel`` points at for this device.

        Which version: :func:`fedready.registry._channels.resolve` (stable, canary and the cohort).

        Raises
        ------
        IntegrityError
            If any TUF check or the model signature fails (the active model is kept).
        TransportError
            If the repository cannot be reached or stalls longer than ``timeout`` seconds
            between bytes (the active model is kept).
        """
        if not device_id.strip():
            raise ConfigError("device-id", "pass a non-empty --device-id")
        if not timeout > 0:
            raise ConfigError("timeout", f"must be > 0 seconds, got {timeout}")
        check_version(channel, field="channel")
        with self._locked():
            root_file = self._provision("root.json", root, "--root")
            key = self._provision("signing.pub", public_key, "--public-key")
            state = self.state()
            if state.get("device_id") not in (None, device_id):
                raise ConfigError("device-id", f"{self.home} belongs to device '{state['device_id']}'")
            with _tuf_errors(repo):
                updater = self._updater(repo, root_file, timeout)
                updater.refresh()
                doc, taken = self._channel(updater, channel, device_id)
            version = _untrusted_version(doc.get("version", ""), f"channel {taken}")
            files = doc.get("files", {})
            if not isinstance(files, dict):
                raise IntegrityError(f"channel {taken} lists its files as a {type(files).__name__}; refused")
            active = state.get("active")
            self.decision_secret()
            if version == active:
                return UpdateResult(version=version, previous=state.get("previous"), channel=taken, changed=False)
            self._activate(lambda staging: self._fetch(updater, repo, version, files, staging), version=version,
                           key=key, digests={str(k): str(v) for k, v in files.items()},
                           state={"device_id": device_id, "repo": repo, "channel": channel, "source_channel": taken,
                                  "last_action": "update"})  # fmt: skip
        return UpdateResult(version=version, previous=active, channel=taken, changed=True)

    def install(self, artifact: Path, *, public_key: Path | None = None) -> str:
        """Verify a local artifact folder and make it active (offline provisioning); return its version.

        Raises
        ------
        IntegrityError
            If the artifact does not verify with the trusted key (the active model is kept).
        """
        artifact = Path(artifact)
        if not artifact.is_dir():
            raise ConfigError("artifact", f"{artifact} is not an artifact folder")
        with self._locked():
            key = self._provision("signing.pub", public_key, "--public-key")
            # signed by the operator is not the same as safe: the version names a folder on this device
            version = _untrusted_version(verify_artifact(artifact, public_key=key).version, f"artifact {artifact}")
            self.decision_secret()
            self._activate(lambda staging: shutil.copytree(artifact, staging, dirs_exist_ok=True), version=version,
                           key=key, digests=None,
                           state={"last_action": "install", "source": str(artifact)})  # fmt: skip
        return version

    def _activate(self, fill: Any, *, version: str, key: Path, digests: dict[str, str] | None,
                  state: dict[str, Any]) -> None:  # fmt: skip
        """Fill a staging folder, verify it, then swap it in (the one place a model becomes active).

        ``digests`` are the TUF-verified sha256 of each file (None: the signature's own list);
        they are kept in ``device.json`` so ``edge rollback`` can check the files again.
        """
        self.models.mkdir(parents=True, exist_ok=True)
        final = self.models / version
        if final.resolve().parent != self.models.resolve():  # check_version already refused it; never rmtree outside
            raise IntegrityError(f"version {version!r} would be stored outside {self.models}; refused")
        staging = Path(tempfile.mkdtemp(dir=self.models, prefix=_STAGING))
        try:
            fill(staging)
            prov = verify_artifact(staging, public_key=key)
            if prov.version != version:
                raise IntegrityError(f"expected version {version} but the artifact is {prov.version}")
            Predictor(staging)  # it must load and match its schema before it may serve
            if digests is None:
                digests = {**payload_digests(staging), SIGNATURE_FILE: file_sha256(staging / SIGNATURE_FILE)}
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        old = self.state()
        active = old.get("active")
        previous = active if active != version else old.get("previous")
        kept = {v: d for v, d in old.get("digests", {}).items() if v == previous}
        self._save({**old, **state, "active": version, "previous": previous, "updated_at": time.time(),
                    "digests": {**kept, version: digests}})  # fmt: skip
        self._prune(keep={version, previous})

    def _download_json(self, updater: Any, target: str) -> dict[str, Any] | None:
        info = updater.get_targetinfo(target)
        if info is None:
            return None
        self.models.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.models, prefix=_STAGING) as tmp:
            path = updater.download_target(info, filepath=str(Path(tmp) / "doc.json"))
            doc = read_json(Path(path), what=target)
        if not isinstance(doc, dict):
            raise IntegrityError(f"{target} is not a channel document; refused")
        return doc

    def _channel(self, updater: Any, channel: str, device_id: str) -> tuple[dict[str, Any], str]:
        names = (STABLE, CANARY) if channel in (STABLE, CANARY) else (channel,)
        docs = {n: self._download_json(updater, f"{_CHANNEL_PREFIX}{n}.json") for n in names}
        doc, taken = resolve(channel, device_id=device_id, docs=docs)
        if doc is None:
            raise ConfigError("channel", f"channel '{channel}' has no promoted model in the registry yet")
        return dict(doc), taken

    def _fetch(self, updater: Any, repo: str, version: str, files: dict[str, str], staging: Path) -> None:
        if not files:
            raise IntegrityError(f"channel lists no files for version {version}")
        for name, digest in sorted(files.items()):
            try:
                check_file_name(name)  # before anything touches the disk
            except IntegrityError as e:
                raise IntegrityError(f"target path {name!r} escapes the device folder or is not a plain file "
                                     f"name; refused ({e})") from None  # fmt: skip
            dest = staging / name
            with _tuf_errors(repo):
                info = updater.get_targetinfo(f"{_ARTIFACT_PREFIX}{version}/{name}")
                if info is None:
                    raise IntegrityError(f"'{version}/{name}' is not a signed target of the registry")
                if info.hashes.get("sha256") != digest:
                    raise IntegrityError(f"'{version}/{name}': the channel and the targets metadata disagree")
                updater.download_target(info, filepath=str(dest))

    def _prune(self, keep: set[str | None]) -> None:
        for d in self.models.iterdir():
            if d.is_dir() and d.name not in keep and not d.name.startswith("."):
                shutil.rmtree(d, ignore_errors=True)


@contextmanager
def _tuf_errors(repo: str) -> Iterator[None]:
    """Translate python-tuf's exceptions into fedready's, naming the attack they indicate."""
    import urllib3
    from tuf.api import exceptions as tex

    try:
        yield
    except tex.ExpiredMetadataError as e:
        raise IntegrityError(f"registry metadata has expired (freeze attack or a stale mirror): {e}") from e
    except tex.BadVersionNumberError as e:
        raise IntegrityError(f"registry metadata is older than what this device has seen "
                             f"(rollback attack or a stale mirror): {e}") from e  # fmt: skip
    except tex.LengthOrHashMismatchError as e:
        raise IntegrityError(f"a downloaded file does not match its signed hash or length: {e}") from e
    except tex.UnsignedMetadataError as e:
        raise IntegrityError(f"registry metadata is not signed by the trusted keys: {e}") from e
    except tex.DownloadLengthMismatchError as e:
        raise IntegrityError(f"a downloaded file is longer than its signed length: {e}") from e
    except tex.RepositoryError as e:
        raise IntegrityError(f"registry metadata refused: {type(e).__name__}: {e}") from e
    except tex.SlowRetrievalError as e:
        raise TransportError(f"cannot fetch from {repo}: the download stalled (slow retrieval: a slow link, or an "
                             "attacker dripping bytes to hold the device on its current model)") from e  # fmt: skip
    except (tex.DownloadError, OSError, urllib3.exceptions.HTTPError) as e:
        # urllib3's ProtocolError (a truncated body, a reset connection) is neither of tuf's types
        why = str(e).strip() or "no detail given"
        raise TransportError(f"cannot fetch from {repo}: {type(e).__name__}: {why}") from e


def _untrusted_version(value: Any, where: str) -> str:
    """A version read from a signed document: valid, or an :class:`IntegrityError` (never a path)."""
    try:
        return check_version(str(value), field="version")
    except ConfigError as e:  # the document is untrusted input here, not the caller's mistake
        raise IntegrityError(f"{where} names an unsafe version ({e}); refused") from e
