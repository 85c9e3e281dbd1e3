"""Rollout channels: the signed channel body and the candidate cohort, shared by both sides.

The server (`fedadapt.server.updates.rollout`) writes a channel file; a device
(`fedadapt.clients.updates.rollout_agent`) reads it and decides which version to run; `rollout
status` counts who is in the cohort. All three must agree bit for bit, so the hash and the
body's checks live here, in the core.

A device is in the candidate cohort when `cohort_point(device_id, salt) < fraction`. The
point is a SHA-256 of (salt, device id) read as a number in [0, 1): it depends on nothing
but those two, so it never changes between polls (no device flaps), and raising the fraction
only adds devices (every point below 0.1 is below 0.5). A new rollout draws a new salt, so
the same devices are not always the first to run a candidate.

The channel file is a `fedadapt.updates.signed_meta` envelope of role `channel/NAME`; its body:

    {"candidate": 3, "fraction": 0.1, "salt": "9f…", "stable": 2}
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from fedadapt.updates.bundles import BundleError
from fedadapt.updates.signed_meta import Role

CHANNEL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
SALT_RE = re.compile(r"^[0-9a-f]{8,64}$")
CHANNELS_DIR = "channels"


def cohort_point(device_id: str, salt: str) -> float:
    """The device's place in [0, 1) for this salt: the first 8 bytes of a SHA-256 / 2^64."""
    digest = hashlib.sha256(f"{salt}\x00{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_cohort(device_id: str, salt: str, fraction: float) -> bool:
    """Whether the device runs the candidate at this `fraction` (its point is below it)."""
    return cohort_point(device_id, salt) < fraction


def check_channel_name(name: object) -> str:
    """`name` if it is a valid channel name (1-32 of a-z, 0-9, `-`, `_`, not starting with
    `-` or `_`); `BundleError` (`malformed`) otherwise. The name becomes a file name, so this
    also keeps it inside the registry.
    """
    if not isinstance(name, str) or not CHANNEL_NAME_RE.match(name):
        raise BundleError(
            f"a channel name is 1-32 of a-z, 0-9, '-' and '_', got {name!r}", "malformed"
        )
    return name


def channel_role(name: str) -> Role:
    """The signed-metadata role of channel `name`, with its refusal reasons."""
    return Role(f"channel/{check_channel_name(name)}", "stale-channel", "channel-rollback")


def channel_files(name: str) -> tuple[str, str]:
    """The channel's file and signature, relative to the registry root."""
    check_channel_name(name)
    return f"{CHANNELS_DIR}/{name}.json", f"{CHANNELS_DIR}/{name}.sig"


def _version(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BundleError(f"channel {what} must be a version (an integer ≥ 1)", "malformed")
    return value


@dataclass(frozen=True)
class Channel:
    """What a channel says: the stable version, and the candidate for a fraction of devices."""

    stable: int
    candidate: int | None
    fraction: float
    salt: str

    def body(self) -> dict[str, Any]:
        """The channel as the JSON body of its signed file (what `parse` reads back)."""
        return asdict(self)

    def version_for(self, device_id: str) -> int:
        """The version this device should run."""
        if self.candidate is not None and in_cohort(device_id, self.salt, self.fraction):
            return self.candidate
        return self.stable

    @classmethod
    def parse(cls, body: object) -> Channel:
        """Exactly the four fields, each of its type and range, or `malformed` naming it."""
        if not isinstance(body, dict) or set(body) != {"stable", "candidate", "fraction", "salt"}:
            raise BundleError(
                "a channel body has exactly the fields stable, candidate, fraction, salt",
                "malformed",
            )
        stable = _version(body["stable"], "stable")
        candidate = body["candidate"]
        if candidate is not None:
            _version(candidate, "candidate")
            if candidate == stable:
                raise BundleError("channel candidate must differ from stable", "malformed")
        fraction = body["fraction"]
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, int | float)
            or not math.isfinite(fraction)
            or not 0.0 <= fraction <= 1.0
        ):
            raise BundleError(f"channel fraction must be in [0, 1], got {fraction!r}", "malformed")
        salt = body["salt"]
        if not isinstance(salt, str) or not SALT_RE.match(salt):
            raise BundleError("channel salt must be 8-64 lowercase hex digits", "malformed")
        return cls(stable, candidate, float(fraction), salt)
