"""A device's report on a rollout: its schema and signature, shared by the device that
builds it (`fedadapt.clients.updates.rollout_agent`) and the service that checks it
(`fedadapt.server.updates.reports`).

Numbers only, never an example: the schema is exact (no extra field, each field of its type
and range), so a device cannot leak text through a report, by bug or by design.
"""

from __future__ import annotations

import math
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedadapt.errors import FedAdaptError
from fedadapt.updates.bundles import KEY_ID_RE, canonical_json
from fedadapt.updates.cohort import CHANNEL_NAME_RE

MAX_REPORT_BYTES = 4096
MAX_INT = 2**53 - 1  # every integer field: exact in a JSON double, and never an overflow
MAX_MS = 1e7  # a latency past ~3 hours is no latency
SIGNATURE_HEADER = "X-Fedadapt-Signature"
_INT_FIELDS = {
    "seq": 1,
    "stable": 1,
    "candidate": 1,
    "running": 1,
    "examples": 1,
    "stable_failures": 0,
    "candidate_failures": 0,
}
_RATE_FIELDS = ("stable_accuracy", "candidate_accuracy")
_MS_FIELDS = ("stable_latency_ms", "candidate_latency_ms")
FIELDS = frozenset({"device", "channel", "rolled_back", *_INT_FIELDS, *_RATE_FIELDS, *_MS_FIELDS})


class ReportRefused(FedAdaptError):
    """A report the service will not count; `status` is the HTTP answer."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_report(raw: object) -> dict[str, Any]:
    """Exactly the schema's fields, each of its type and range; else a 400 naming the field."""
    if not isinstance(raw, dict):
        raise ReportRefused("a report is a JSON object", 400)
    if set(raw) != FIELDS:
        extra, missing = sorted(set(raw) - FIELDS), sorted(FIELDS - set(raw))
        raise ReportRefused(f"report fields: unexpected {extra}, missing {missing}", 400)
    if not isinstance(raw["device"], str) or not KEY_ID_RE.match(raw["device"]):
        raise ReportRefused("report device must be a key id (16 hex digits)", 400)
    if not isinstance(raw["channel"], str) or not CHANNEL_NAME_RE.match(raw["channel"]):
        raise ReportRefused("report channel must be a channel name", 400)
    for name, low in _INT_FIELDS.items():
        if not _is_int(raw[name]) or not low <= raw[name] <= MAX_INT:
            raise ReportRefused(f"report {name} must be an integer in [{low}, 2^53)", 400)
    for name in (*_RATE_FIELDS, *_MS_FIELDS):
        v = raw[name]
        high = 1 if name in _RATE_FIELDS else MAX_MS
        # bounded before any float arithmetic: a 400-digit integer overflows `isfinite`
        if _is_int(v) and not 0 <= v <= high:
            raise ReportRefused(f"report {name} must be in [0, {high:g}]", 400)
        if not (_is_int(v) or isinstance(v, float)) or not math.isfinite(v):
            raise ReportRefused(f"report {name} must be a finite number", 400)
        if not 0 <= v <= high:
            raise ReportRefused(f"report {name} must be in [0, {high:g}]", 400)
    if raw["rolled_back"] not in (0, 1) or not _is_int(raw["rolled_back"]):
        raise ReportRefused("report rolled_back must be 0 or 1", 400)
    if raw["candidate"] == raw["stable"] or raw["running"] not in (raw["stable"], raw["candidate"]):
        raise ReportRefused("report versions: running must be the stable or the candidate", 400)
    for name in ("stable_failures", "candidate_failures"):
        if raw[name] > raw["examples"]:
            raise ReportRefused(f"report {name} exceeds its examples", 400)
    return raw


def sign_report(report: dict[str, Any], key: Ed25519PrivateKey) -> tuple[bytes, str]:
    """The report's canonical bytes and their signature in hex (the device side)."""
    body = canonical_json(report)
    return body, key.sign(body).hex()
