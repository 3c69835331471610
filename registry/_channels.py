"""Which version a device runs: one rule, shared by the edge agent and ``registry status``.

A device follows ``stable`` or ``canary`` (or a channel of its own name, taken as it is).
The canary is *live* when it exists, is not paused, points at no version stable withdrew, and was
changed after stable (each channel document carries ``serial``, the registry's metadata version
when it was written, so "after" never depends on clocks). Then:

=====================================  ==============================  ===========================
device                                 canary live                     canary not live or absent
=====================================  ==============================  ===========================
follows ``stable``, outside the cohort stable's version                stable's version
follows ``stable``, inside the cohort  canary's version                stable's version
follows ``canary``                     canary's version                stable's version
=====================================  ==============================  ===========================

The cohort is the devices whose id hashes below the canary's ``rollout_percent``
(:func:`in_canary`). Consequences: a stable promotion or rollback is newer than the canary,
so it reaches every device, in the cohort or not; ``registry rollback --channel stable``
also pauses a canary that points at the version it rolls away from, and adds that version to
stable's ``withdrawn`` list: a canary pointing at a withdrawn version is not live, whatever its
serial, so the version reaches no device until an operator promotes it again (which takes it off
the list). Only a promotion makes a paused or behind canary live again.
NumPy-free and TUF-free: devices import it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from fedready.errors import IntegrityError

__all__ = ["cohort_versions", "in_canary", "not_served", "resolve", "withdrawn"]

STABLE, CANARY = "stable", "canary"


def in_canary(device_id: str, rollout_percent: float) -> bool:
    """Is this device in the canary cohort? A stable hash of its id, mapped to [0, 100), under the rollout.

    The same devices stay canaries across releases (no salt), so a fleet's canary share is
    predictable and cohorts nest as the rollout grows.
    """
    bucket = int.from_bytes(hashlib.sha256(device_id.encode("utf-8")).digest()[:8], "big") / 2**64 * 100
    return bucket < rollout_percent


def _order(doc: Mapping[str, Any]) -> tuple[int, str]:
    serial = doc.get("serial", 0)
    if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
        raise IntegrityError(f"channel {doc.get('channel')!r} has a malformed serial {serial!r}; refused")
    return serial, str(doc.get("promoted_at", ""))  # documents written before serials: promotion time


def withdrawn(stable: Mapping[str, Any] | None) -> tuple[str, ...]:
    """Versions stable rolled back from and nobody promoted again (stable's signed ``withdrawn`` list)."""
    if stable is None:
        return ()
    out = stable.get("withdrawn", [])
    if not isinstance(out, (list, tuple)) or not all(isinstance(v, str) for v in out):
        raise IntegrityError(f"channel stable has a malformed withdrawn list {out!r}; refused")
    return tuple(out)


def canary_state(stable: Mapping[str, Any] | None, canary: Mapping[str, Any] | None) -> str:
    """``live``, ``paused``, ``withdrawn``, ``behind-stable`` or ``none`` (see the module docstring)."""
    if canary is None:
        return "none"
    if canary.get("paused"):
        return "paused"
    if canary.get("version") in withdrawn(stable):
        return "withdrawn"
    if stable is not None and _order(canary) <= _order(stable):
        return "behind-stable"
    return "live"


def not_served(channel: str, docs: Mapping[str, Mapping[str, Any] | None]) -> str | None:
    """Why no device runs ``channel``'s version through that channel now; None when some devices do.

    The canary is served only while live; stable is served unless a live canary takes every
    device (rollout 100%); any other channel whenever something was promoted to it.
    """
    doc = docs.get(channel)
    if doc is None:
        return f"nothing was promoted to {channel}"
    if channel not in (STABLE, CANARY):
        return None
    stable, canary = docs.get(STABLE), docs.get(CANARY)
    state = canary_state(stable, canary)
    if channel == CANARY:
        why = {"live": None, "paused": f"the canary is paused ({doc.get('paused_reason')})",
               "withdrawn": f"the canary points at {doc.get('version')}, which stable withdrew",
               "behind-stable": "the canary is behind stable: a later stable change took every device"}  # fmt: skip
        return why[state]
    if state == "live" and canary is not None and float(canary.get("rollout_percent", 0)) >= 100:
        return "the canary is live at 100%: every device runs the canary's version"
    return None


def resolve(
    channel: str, *, device_id: str, docs: Mapping[str, Mapping[str, Any] | None]
) -> tuple[Mapping[str, Any] | None, str]:
    """The channel document a device following ``channel`` takes, and that document's channel name.

    ``docs`` maps channel names to their documents (None: nothing promoted). Returns
    ``(None, channel)`` when the device has nothing to run.
    """
    if channel not in (STABLE, CANARY):
        return docs.get(channel), channel
    stable, canary = docs.get(STABLE), docs.get(CANARY)
    live = canary_state(stable, canary) == "live"
    if live and canary is not None:
        try:
            cohort = channel == CANARY or in_canary(device_id, float(canary.get("rollout_percent", 0)))
        except (TypeError, ValueError) as e:
            raise IntegrityError(f"channel canary has a malformed rollout_percent ({e}); refused") from e
        if cohort:
            return canary, CANARY
    if stable is None:
        return None, channel
    return stable, STABLE


def cohort_versions(stable: Mapping[str, Any] | None, canary: Mapping[str, Any] | None) -> dict[str, Any]:
    """What each group of devices runs now (for ``registry status``)."""
    state = canary_state(stable, canary)
    on_stable = stable.get("version") if stable is not None else None
    live = canary.get("version") if canary is not None and state == "live" else on_stable
    pct = float(canary.get("rollout_percent", 0)) if canary is not None else 0.0
    cohort = pct if state == "live" else 0.0
    return {
        "canary_state": state,
        "stable_outside_cohort": on_stable if cohort < 100 else None,  # None: no device is outside
        "stable_inside_cohort": live if cohort > 0 else None,  # None: no device is inside
        "cohort_percent": cohort,
        "canary_devices": live,
    }
