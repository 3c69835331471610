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

import hashlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedready.errors import ConfigError, IntegrityError, TransportError
from fedready.registry._artifact import verify_artifact
from fedready.registry._canonical import check_version, read_json, safe_relpath, write_json
from fedready.registry._predict import Predictor

__all__ = ["EdgeAgent", "UpdateResult", "in_canary"]

_STATE = "device.json"
_CHANNEL_PREFIX, _ARTIFACT_PREFIX = "channels/", "artifacts/"  # same target paths as the registry


def in_canary(device_id: str, rollout_percent: float) -> bool:
    """Is this device in the canary cohort? A stable hash of its id, mapped to [0, 100), under the rollout.

    The same devices stay canaries across releases (no salt), so a fleet's canary share is
    predictable and a device never flips between cohorts at the same percentage.
    """
    bucket = int.from_bytes(hashlib.sha256(device_id.encode("utf-8")).digest()[:8], "big") / 2**64 * 100
    return bucket < rollout_percent


@dataclass(frozen=True)
class UpdateResult:
    """What ``edge update`` did."""

    version: str
    previous: str | None
    channel: str  # the channel whose version was taken ("canary" for a stable device in the cohort)
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
        """The device state (empty before the first update)."""
        p = self.home / _STATE
        return read_json(p, what="device state") if p.exists() else {}

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

    def predictor(self) -> Predictor:
        """The active model, loaded."""
        return Predictor(self.active_dir())

    def status(self) -> dict[str, Any]:
        """Device id, channel, active and previous versions, and what the active model came from."""
        state = self.state()
        out = {"home": str(self.home), **state}
        if state.get("active"):
            prov = read_json(self.models / state["active"] / "provenance.json", what="provenance")
            out["provenance"] = {k: prov.get(k) for k in ("run_id", "model_digest", "evaluation", "created")}
        return out

    def rollback(self) -> str:
        """Make the previous model active again; return its version.

        Raises
        ------
        ConfigError
            If there is no previous model on the device.
        """
        state = self.state()
        prev = state.get("previous")
        if not prev or not (self.models / prev).is_dir():
            raise ConfigError("home", "no previous model on this device to roll back to")
        Predictor(self.models / prev)  # must still load before it becomes active
        self._save({**state, "active": prev, "previous": state["active"], "updated_at": time.time(),
                    "last_action": "rollback"})  # fmt: skip
        return prev

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

    def _updater(self, repo: str, root: Path) -> Any:
        from tuf.ngclient import Updater

        tuf_dir = self.home / "tuf"
        tuf_dir.mkdir(parents=True, exist_ok=True)
        base = repo.rstrip("/")
        # After the first update the cached root (possibly rotated since) is the trust anchor.
        bootstrap = None if (tuf_dir / "root.json").exists() else root.read_bytes()
        return Updater(metadata_dir=str(tuf_dir), metadata_base_url=f"{base}/metadata/",
                       target_base_url=f"{base}/targets/", target_dir=str(tuf_dir / "cache"),
                       bootstrap=bootstrap)  # fmt: skip

    def update(
        self,
        *,
        repo: str,
        channel: str,
        device_id: str,
        root: Path | None = None,
        public_key: Path | None = None,
    ) -> UpdateResult:
        """Fetch, verify and activate the model ``channel`` points at for this device.

        A device on ``stable`` takes the canary version when it is in the canary cohort.

        Raises
        ------
        IntegrityError
            If any TUF check or the model signature fails (the active model is kept).
        TransportError
            If the repository cannot be reached (the active model is kept).
        """
        if not device_id.strip():
            raise ConfigError("device-id", "pass a non-empty --device-id")
        check_version(channel, field="channel")
        root_file = self._provision("root.json", root, "--root")
        key = self._provision("signing.pub", public_key, "--public-key")
        state = self.state()
        if state.get("device_id") not in (None, device_id):
            raise ConfigError("device-id", f"{self.home} belongs to device '{state['device_id']}'")
        with _tuf_errors(repo):
            updater = self._updater(repo, root_file)
            updater.refresh()
            doc, taken = self._channel(updater, channel, device_id)
        try:
            version = check_version(str(doc.get("version", "")), field="channel version")
        except ConfigError as e:  # the channel document is untrusted input here, not the caller's mistake
            raise IntegrityError(f"channel {taken} names an unsafe version ({e}); refused") from e
        active = state.get("active")
        if version == active:
            return UpdateResult(version=version, previous=state.get("previous"), channel=taken, changed=False)
        self._activate(lambda staging: self._fetch(updater, repo, version, doc.get("files", {}), staging),
                       version=version, key=key,
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
        key = self._provision("signing.pub", public_key, "--public-key")
        version = verify_artifact(artifact, public_key=key).version
        self._activate(lambda staging: shutil.copytree(artifact, staging, dirs_exist_ok=True), version=version,
                       key=key, state={"last_action": "install", "source": str(artifact)})  # fmt: skip
        return version

    def _activate(self, fill: Any, *, version: str, key: Path, state: dict[str, Any]) -> None:
        """Fill a staging folder, verify it, then swap it in (the one place a model becomes active)."""
        self.models.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.models, prefix=".staging-"))
        try:
            fill(staging)
            prov = verify_artifact(staging, public_key=key)
            if prov.version != version:
                raise IntegrityError(f"expected version {version} but the artifact is {prov.version}")
            Predictor(staging)  # it must load and match its schema before it may serve
            final = self.models / version
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        old = self.state()
        active = old.get("active")
        previous = active if active != version else old.get("previous")
        self._save({**old, **state, "active": version, "previous": previous, "updated_at": time.time()})
        self._prune(keep={version, previous})

    def _download_json(self, updater: Any, target: str) -> dict[str, Any] | None:
        info = updater.get_targetinfo(target)
        if info is None:
            return None
        with tempfile.TemporaryDirectory(dir=self.home) as tmp:
            path = updater.download_target(info, filepath=str(Path(tmp) / "doc.json"))
            return read_json(Path(path), what=target)

    def _channel(self, updater: Any, channel: str, device_id: str) -> tuple[dict[str, Any], str]:
        doc = self._download_json(updater, f"{_CHANNEL_PREFIX}{channel}.json")
        if channel == "stable":
            canary = self._download_json(updater, f"{_CHANNEL_PREFIX}canary.json")
            if canary is not None and in_canary(device_id, float(canary.get("rollout_percent", 0))):
                return canary, "canary"
        if doc is None:
            raise ConfigError("channel", f"channel '{channel}' has no promoted model in the registry yet")
        return doc, channel

    def _fetch(self, updater: Any, repo: str, version: str, files: dict[str, str], staging: Path) -> None:
        if not files:
            raise IntegrityError(f"channel lists no files for version {version}")
        for name, digest in sorted(files.items()):
            rel = safe_relpath(name)  # before anything touches the disk
            dest = (staging / rel).resolve()
            if not dest.is_relative_to(staging.resolve()):
                raise IntegrityError(f"target path '{name}' escapes the device folder; refused")
            with _tuf_errors(repo):
                info = updater.get_targetinfo(f"{_ARTIFACT_PREFIX}{version}/{rel.as_posix()}")
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
    except (tex.DownloadError, OSError) as e:
        raise TransportError(f"cannot fetch from {repo}: {type(e).__name__}: {e}") from e
