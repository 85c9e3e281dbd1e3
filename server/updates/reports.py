"""Device reports on a rollout: `POST /rollout/CHANNEL/report` on the update service.

Why a signed POST to the update service, not Flower messages over the SuperLink: every
device already polls the update service for its channel, so the report rides the same
connection at the same moment; the SuperLink exists for training rounds, and a device may be
a pure inference device that never joins one (nor holds a SuperNode's credentials).

A report is canonical JSON signed with the device's own Ed25519 key (the signature, hex, in
the `X-Fedadapt-Signature` header). The service keeps the registered devices' public keys
(a folder of `*.pub`; a device's id is its key id) and refuses an unknown key (403), a bad
signature (403), a report that is not exactly the schema below (400: numbers only, never an
example, never an extra field), and a replayed one (409: `seq` must grow per device).

    {"candidate": 3, "candidate_accuracy": 0.8, "candidate_failures": 0,
     "candidate_latency_ms": 4.1, "channel": "stable", "device": "<key id>", "examples": 10,
     "rolled_back": 0, "running": 3, "seq": 7, "stable": 2, "stable_accuracy": 0.7,
     "stable_failures": 0, "stable_latency_ms": 3.9}
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedadapt.errors import FedAdaptError
from fedadapt.server.updates.refusals import Refused, content_length, log
from fedadapt.server.updates.rollout import REPORTS_FILE, Rollouts
from fedadapt.updates.keys import SigningKeyError, key_id, load_public
from fedadapt.updates.rollout_report import (
    MAX_REPORT_BYTES,
    SIGNATURE_HEADER,
    ReportRefused,
    check_report,
)


def load_device_keys(folder: str | Path) -> dict[str, Ed25519PublicKey]:
    """The registered devices: every `*.pub` in `folder`, by key id."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FedAdaptError(f"no device key folder at {folder}")
    keys = {}
    for path in sorted(folder.glob("*.pub")):
        try:
            pub = load_public(path)
        except SigningKeyError as e:
            raise FedAdaptError(f"device key {path}: {e}") from e
        keys[key_id(pub)] = pub
    return keys


class ReportSink:
    """Checks, stores and acts on reports for one registry's rollouts. With `key`, a report
    that trips the guardrail halts the rollout and signs the revert at once."""

    def __init__(
        self,
        rollouts: Rollouts,
        device_keys: dict[str, Ed25519PublicKey],
        key: Ed25519PrivateKey | None,
    ) -> None:
        self.rollouts, self.device_keys, self.key = rollouts, device_keys, key
        self.seqs: dict[str, int] = {}  # per device, restored so a restart takes no replay
        for path in sorted(rollouts.state.glob(f"*/{REPORTS_FILE}")):
            for r in rollouts.reports(path.parent.name):
                self.seqs[r["device"]] = max(self.seqs.get(r["device"], 0), r["seq"])
        self.lock = threading.Lock()

    def accept(self, channel: str, body: bytes, signature: str | None) -> str | None:
        """Count the report; returns the guardrail's halt reason, if it fired."""
        if len(body) > MAX_REPORT_BYTES:
            raise ReportRefused(f"a report is at most {MAX_REPORT_BYTES} bytes", 413)
        try:
            raw = json.loads(body)
        except (ValueError, RecursionError) as e:
            raise ReportRefused(f"a report is JSON: {e}", 400) from e
        device = raw.get("device") if isinstance(raw, dict) else None
        pub = self.device_keys.get(device) if isinstance(device, str) else None
        if pub is None:
            raise ReportRefused(f"device key {device!r} is not registered", 403)
        try:
            pub.verify(bytes.fromhex(signature or ""), body)
        except (InvalidSignature, ValueError) as e:
            raise ReportRefused("the report's signature does not match its device key", 403) from e
        report = check_report(raw)
        if report["channel"] != channel:
            raise ReportRefused("the report names another channel than its URL", 400)
        with self.lock:
            if report["seq"] <= self.seqs.get(device, 0):
                raise ReportRefused(f"report seq {report['seq']} was already seen (replay)", 409)
            self.seqs[device] = report["seq"]
        return self.rollouts.record_report(channel, report, self.key)


_REPORT_PATH = re.compile(r"^/rollout/([a-z0-9][a-z0-9_-]{0,31})/report$")


def handle_post(handler: BaseHTTPRequestHandler, sink: ReportSink | None) -> None:
    """Answer one `POST /rollout/CHANNEL/report`: 200 with `{"halted": reason|null}`, or the
    refusal's status with its reason (logged in one WARNING line); 404 where the service
    takes no reports."""
    m = _REPORT_PATH.match(handler.path.partition("?")[0])  # urlsplit raises on some
    try:
        if sink is None or m is None:
            raise ReportRefused("no such endpoint", 404)
        try:
            length = content_length(handler)
        except Refused as e:
            raise ReportRefused(e.reason, 400) from None
        if length is None:
            raise ReportRefused("a report needs a Content-Length", 411)
        if length > MAX_REPORT_BYTES:
            raise ReportRefused(f"a report is at most {MAX_REPORT_BYTES} bytes", 413)
        body = handler.rfile.read(length)
        if len(body) < length:
            raise ReportRefused(f"the report ended after {len(body)} of {length} bytes", 400)
        reason = sink.accept(m.group(1), body, handler.headers.get(SIGNATURE_HEADER))
        status, answer = 200, {"halted": reason}
    except ReportRefused as e:
        status, answer = e.status, {"error": str(e)}
        handler.close_connection = True  # an unread body must not be taken for a request
    except FedAdaptError as e:  # the rollout state itself is unreadable
        status, answer = 500, {"error": str(e)}
    if status != 200:
        log.warning(
            "%s %d POST %.80r: %s",
            handler.address_string(), status, handler.path, answer["error"].replace("\n", " "),
        )  # fmt: skip
    data = json.dumps(answer).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
