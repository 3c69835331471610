"""Append-only audit logs (JSON lines) with a hash chain and signed chain heads.

Every entry carries ``seq`` (its 1-based line number), ``prev`` (the sha256 of the previous
line) and ``sig``: an Ed25519 signature by the log's key over ``(seq, sha256 of the entry
without its signature)``. Because the entry holds ``prev``, each signature covers the whole
chain up to that line: it is a signed chain head, written at every append. The first entry
also carries ``key``, the log's public key (raw 32 bytes, base64).

An :class:`Anchor` (line count, head digest, key) copied into a document signed by another
key fixes a prefix of the log for good: the registry anchors its log in its TUF ``targets`` and
``timestamp`` metadata at every write, and ``fedready package`` anchors the run's log in the
artifact's provenance. :func:`verify_log` checks the chain, every signature and every anchor,
and names what it found.

Notes
-----
What the checks detect, and what they cannot (see the security section of docs/guides/operator.md):

* Without an anchor: an edited or forged line (its signature fails), a reordered, removed or
  inserted line in the middle (``seq`` and the chain break), an empty file. Removing lines at
  the end, or cutting the log to a shorter prefix, leaves a valid shorter log: only an anchor
  shows it. Whoever holds the log's private key (it sits beside the log, mode 0600) can append
  entries or rewrite the whole log.
* With an anchor: the anchored prefix cannot be shortened, edited or rewritten, even with the
  log's key, unless the anchor's own signing key (TUF targets/timestamp key, the operator's
  model-signing key) is also held. Lines after the newest anchor are protected by the log's
  signatures only.
* No log proves that its writer told the truth: it shows the record was not changed afterwards.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedready.errors import ConfigError, IntegrityError

__all__ = [
    "GENESIS",
    "Anchor",
    "AuditLog",
    "AuditReport",
    "Finding",
    "load_or_create_key",
    "log_head",
    "public_key_b64",
    "sign_record",
    "verify_chain",
    "verify_log",
    "verify_record",
]

GENESIS = "0" * 64
_CONTEXT = b"fedready-audit-head/1\n"  # domain separation: an audit signature means nothing elsewhere


def _digest(line: str) -> str:
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


def _dumps(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, default=str)


def _message(seq: int, body: str) -> bytes:
    return _CONTEXT + f"{seq}:{_digest(body)}".encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def key_path(log: Path) -> Path:
    """Where the private key of ``log`` is kept by default: ``audit.jsonl`` -> ``audit.key``."""
    log = Path(log)
    return log.with_name(f"{log.stem}.key")


def load_or_create_key(path: Path) -> Any:
    """The Ed25519 private key in ``path`` (PEM), created with mode 0600 if the file does not exist.

    Raises
    ------
    ConfigError
        If the file exists but is not an Ed25519 private key in PEM.
    """
    return _load_or_create_key(Path(path))


def _record_bytes(context: bytes, record: dict[str, Any]) -> bytes:
    return context + json.dumps(record, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")


def sign_record(key: Any, record: dict[str, Any], *, context: bytes) -> str:
    """An Ed25519 signature (base64) over ``context`` and the canonical JSON of ``record``.

    ``context`` separates domains (an alert signature is no audit entry's); ``record`` must not
    hold its own signature.
    """
    return _b64(key.sign(_record_bytes(context, record)))


def verify_record(public_key: str, record: dict[str, Any], sig: Any, *, context: bytes) -> bool:
    """True when ``sig`` is :func:`sign_record`'s signature of ``record`` by ``public_key`` (raw, base64)."""
    from cryptography.exceptions import InvalidSignature

    if not isinstance(sig, str):
        return False
    try:
        _verifier(public_key).verify(base64.b64decode(sig, validate=True), _record_bytes(context, record))
    except (InvalidSignature, ValueError, IntegrityError):
        return False
    return True


def _load_or_create_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if path.exists():
        try:
            key = ser.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as e:
            raise ConfigError("audit-key", f"{path} is not a PEM private key ({e})") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError("audit-key", f"{path} is not an Ed25519 key")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another writer created it first: use theirs
        return _load_or_create_key(path)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def public_key_b64(key: Any) -> str:
    """The raw Ed25519 public key of a private key, base64 (as logs and anchors record it)."""
    from cryptography.hazmat.primitives import serialization as ser

    return _b64(key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw))


@dataclass(frozen=True)
class Anchor:
    """A log prefix fixed by a signed document: ``lines`` entries ending in the line hashed ``head``."""

    lines: int
    head: str  # sha256 hex of line ``lines`` (GENESIS for an empty log)
    key: str | None  # the log's public key (base64), pinning who may sign later lines
    source: str = field(default="", compare=False)  # where it was read (for messages; not part of the value)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as stored in metadata and provenance (``source`` left out)."""
        return {"lines": self.lines, "head": self.head, "key": self.key}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "") -> Anchor:
        """Parse :meth:`to_dict` output.

        Raises
        ------
        IntegrityError
            If the anchor is malformed.
        """
        try:
            lines, head = int(data["lines"]), str(data["head"])
            key = data.get("key")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise IntegrityError(f"{source or 'audit anchor'} is malformed ({e})") from e
        if lines < 0 or len(head) != 64:
            raise IntegrityError(f"{source or 'audit anchor'} is malformed (lines {lines}, head {head!r})")
        return cls(lines, head, None if key is None else str(key), source)


class AuditLog:
    """Append events to ``path``, one signed JSON object per line.

    Parameters
    ----------
    path : Path
        The log file (created on the first append).
    key : Path, optional
        The Ed25519 private key (PEM) that signs each entry; created (mode 0600) if missing.
        Default: beside the log, ``audit.jsonl`` -> ``audit.key``.

    Notes
    -----
    Several writers may share one log, in one process or several (a deployed client's bundle
    guard and its ClientApp both write the client's log): each append takes an exclusive lock on
    the file and continues the chain from what the file holds, never from a head it remembers.
    """

    def __init__(self, path: Path, *, key: Path | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.key_file = Path(key) if key is not None else key_path(self.path)
        self._key = _load_or_create_key(self.key_file)
        self.public_key = public_key_b64(self._key)
        self._prev, self._seq, self._size = GENESIS, 0, 0
        self._declared: str | None = None
        if self.path.exists():
            with self.path.open("rb") as f:
                self._sync(f)

    def _sync(self, f: Any) -> None:
        """Take the head from the file when another writer appended since this one last did."""
        size = os.fstat(f.fileno()).st_size
        if size == self._size:
            return
        f.seek(0)
        try:
            lines = f.read().decode("utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise IntegrityError(f"{self.path} is not a UTF-8 audit log ({e.reason} at byte {e.start}); check it with "
                                 "`fedready audit verify` and restore it from a backup") from None  # fmt: skip
        self._prev, self._seq, self._size = (_digest(lines[-1]) if lines else GENESIS), len(lines), size
        self._declared = _declared_key(lines)

    def append(self, event: str, **fields: Any) -> Anchor:
        """Append one event (``event`` names it; ``fields`` are its details); return the new head."""
        t0 = time.perf_counter()
        try:
            return self._append(event, fields)
        finally:
            self.seconds += time.perf_counter() - t0

    seconds = 0.0  # time this object has spent appending (benchmarks/profile_round.py)
    _deferred = False
    _unsynced = False

    def defer_sync(self) -> None:
        """Until :meth:`sync`, appends reach the file (other readers see them) but not yet the disk.

        For a server round's events: :meth:`sync` puts them on the disk at once, before the checkpoint
        that records the round, so a power cut cannot keep a round and lose its events.
        """
        self._deferred = True

    def sync(self) -> None:
        """Put every deferred append on the disk (one ``fsync``) and append durably again."""
        t0 = time.perf_counter()
        if self._unsynced:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._deferred = self._unsynced = False
        self.seconds += time.perf_counter() - t0

    def _append(self, event: str, fields: dict[str, Any]) -> Anchor:
        with self.path.open("ab+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # released when the file closes
            self._sync(f)
            seq = self._seq + 1
            entry = {"event": event, "time": time.time(), **fields, "prev": self._prev, "seq": seq}
            if self._declared != self.public_key:  # the first entry, or the key file was replaced
                entry["key"] = self.public_key
            body = _dumps(entry)
            sig = _b64(self._key.sign(_message(seq, body)))
            line = _dumps({**entry, "sig": sig})
            data = (line + "\n").encode("utf-8")
            f.write(data)
            f.flush()
            if self._deferred:
                self._unsynced = True
            else:
                os.fsync(f.fileno())
            self._prev, self._seq, self._size = _digest(line), seq, self._size + len(data)
            self._declared = self.public_key
            return self.head()

    def head(self) -> Anchor:
        """The current (line count, head digest, key): what an anchor records."""
        return Anchor(self._seq, self._prev, self.public_key)


def _declared_key(lines: list[str]) -> str | None:
    key = None
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("key"):
            key = str(entry["key"])
    return key


def log_head(path: Path) -> Anchor:
    """The head of the log at ``path`` as it is now (an empty or missing log: zero lines)."""
    p = Path(path)
    lines = p.read_text(encoding="utf-8").splitlines() if p.exists() else []
    return Anchor(len(lines), _digest(lines[-1]) if lines else GENESIS, _declared_key(lines), str(p))


@dataclass(frozen=True)
class Finding:
    """One problem :func:`verify_log` found: ``kind`` names it, ``line`` is 1-based (None: the whole log)."""

    kind: str  # empty | not-json | sequence | chain-broken | unsigned | bad-signature | key-changed | wrong-key
    #            | truncated | rewritten | unanchored
    line: int | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "line": self.line, "message": self.message}


@dataclass(frozen=True)
class AuditReport:
    """What :func:`verify_log` checked and found."""

    path: str
    lines: int
    key: str | None  # the key the signatures were checked with
    key_source: str  # "pinned" (given or anchored) or "declared by the log itself"
    anchors: list[Anchor] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "lines": self.lines, "ok": self.ok, "key": self.key, "key_source": self.key_source,
                "anchors": [{**a.to_dict(), "source": a.source} for a in self.anchors],
                "findings": [f.to_dict() for f in self.findings], "notes": self.notes}  # fmt: skip


def _verifier(key_b64: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(key_b64, validate=True))
    except ValueError as e:
        raise IntegrityError(f"'{key_b64[:16]}...' is not an Ed25519 public key ({e})") from e


def _signature_ok(pub: Any, seq: int, body: str, sig: str) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        pub.verify(base64.b64decode(sig, validate=True), _message(seq, body))
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_log(
    path: Path, *, key: str | None = None, anchors: list[Anchor] | tuple[Anchor, ...] = (), strict_tail: bool = False
) -> AuditReport:
    """Check the chain, every signature and every anchor of the log at ``path``.

    Parameters
    ----------
    key : str, optional
        The log's public key (base64), pinned from a trusted place; otherwise an anchor's key,
        otherwise the key the log declares in its first line (trust on first use).
    anchors : list of Anchor
        Heads fixed by signed documents (already verified by the caller).
    strict_tail : bool
        Lines after the newest anchor are a finding (``unanchored``): right for a log whose every
        write is anchored (the registry's), wrong for one anchored once (a run's, at packaging).

    Raises
    ------
    ConfigError
        If the file does not exist.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError("log", f"file {p} does not exist")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise IntegrityError(f"{p} is not a UTF-8 text file ({e})") from e
    pinned = key or next((a.key for a in anchors if a.key), None)
    findings: list[Finding] = []
    if not lines:
        findings.append(Finding("empty", None, "the log is empty (fedready never leaves an audit log empty: it was "
                                               "emptied, or replaced)"))  # fmt: skip
    digests: list[str] = []
    prev, expected_key = GENESIS, pinned
    pub = _verifier(pinned) if pinned else None
    for n, line in enumerate(lines, start=1):
        digests.append(_digest(line))
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict):
                raise ValueError("not a JSON object")
        except (ValueError, RecursionError):
            findings.append(Finding("not-json", n, f"line {n} is not a JSON object (edited or corrupted)"))
            prev = digests[-1]
            continue
        if entry.get("seq") is not None and entry.get("seq") != n:
            findings.append(Finding("sequence", n, f"line {n} says it is entry {entry.get('seq')} (lines removed, "
                                                   "inserted or reordered before it)"))  # fmt: skip
        if entry.get("prev") != prev:
            findings.append(Finding("chain-broken", n, f"line {n}: hash chain broken (line {n - 1} was edited, "
                                                       "removed or reordered, or this line was inserted)"))  # fmt: skip
        prev = digests[-1]
        declared = entry.get("key")
        if declared:
            if expected_key is None:
                expected_key, pub = str(declared), _verifier(str(declared))
            elif declared != expected_key:
                kind = "wrong-key" if n == 1 and pinned else "key-changed"
                findings.append(Finding(kind, n, f"line {n} introduces another signing key (the log was re-signed "
                                                 "or its key file replaced)"))  # fmt: skip
                if not pinned:  # reported once; later lines are checked against the key they claim
                    expected_key, pub = str(declared), _verifier(str(declared))
        sig = entry.pop("sig", None)
        if not sig or pub is None:
            findings.append(Finding("unsigned", n, f"line {n} carries no signature (forged, or written before "
                                                   "signed heads)"))  # fmt: skip
        elif not _signature_ok(pub, n, _dumps(entry), str(sig)):
            findings.append(Finding("bad-signature", n, f"line {n}: the signature does not verify with the log's "
                                                        "key (edited after it was signed, or forged)"))  # fmt: skip
    notes: list[str] = []
    newest = 0
    for a in anchors:
        where = a.source or "an anchor"
        if a.lines > len(lines):
            msg = f"{where} anchors {a.lines} line(s) but the log has {len(lines)}: lines were removed"
            findings.append(Finding("truncated", len(lines) or None, msg))
        elif a.lines > 0 and digests[a.lines - 1] != a.head:
            msg = (f"line {a.lines} differs from the head anchored in {where} (expected sha256 {a.head}, "
                   f"got {digests[a.lines - 1]})")  # fmt: skip
            findings.append(Finding("rewritten", a.lines, msg))
        elif a.lines == 0 and a.head != GENESIS:
            findings.append(Finding("rewritten", None, f"{where} is malformed (zero lines but a head)"))
        newest = max(newest, a.lines)
    if anchors and len(lines) > newest:
        extra = f"line(s) {newest + 1}-{len(lines)} come after the newest anchored head ({newest} line(s))"
        if strict_tail:
            findings.append(Finding("unanchored", newest + 1, f"{extra}: every write of this log is anchored, so "
                                                               "they were appended outside it (forged)"))  # fmt: skip
        else:
            notes.append(f"{extra}; they are protected by the log's signatures only")
    if not anchors:
        notes.append("no anchor: removing lines at the end of the log would not show (pass --artifact or --metadata)")
    return AuditReport(str(p), len(lines), expected_key, "pinned" if pinned else "declared by the log itself",
                       list(anchors), _runs(findings), notes)  # fmt: skip


def _runs(findings: list[Finding]) -> list[Finding]:
    """Fold consecutive lines with the same finding into one (a wrong key fails every line after it)."""
    out: list[Finding] = []
    last: tuple[str, int] | None = None  # (kind, last line) of the open run
    for f in findings:
        if last is not None and f.line is not None and (f.kind, f.line - 1) == last and out[-1].line is not None:
            first = out[-1].line
            text = f.message.split(": ", 1)[1] if f.message.startswith(f"line {f.line}: ") else f.message
            out[-1] = Finding(f.kind, first, f"lines {first}-{f.line}: {text}")
        else:
            out.append(f)
        last = (f.kind, f.line) if f.line is not None else None
    return out


def verify_chain(path: Path) -> tuple[bool, int | None]:
    """Check the chain and signatures; return (ok, 1-based number of the first bad line or None)."""
    report = verify_log(path)
    if report.ok:
        return True, None
    return False, min((f.line for f in report.findings if f.line is not None), default=None)
