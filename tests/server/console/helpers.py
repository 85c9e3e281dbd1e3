"""What the console's tests (and `make console-screenshots`) stand on: the OS's headless
Chromium driven by Selenium, a copy of a recorded run, a run that is still being written,
and a registry with real rollouts and real signed device reports."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedadapt.atomic import atomic_write_text
from fedadapt.server.report import write_metrics_csv
from fedadapt.server.updates.reports import ReportSink, load_device_keys
from fedadapt.server.updates.rollout import Guardrail, Rollouts
from fedadapt.updates.keys import key_id
from fedadapt.updates.rollout_report import sign_report
from tests.registry_helpers import Keys, two_version_registry

ROOT = Path(__file__).resolve().parents[3]
RECORDED = ROOT / "simulations" / "results" / "quick"  # quick.toml: 10 rounds, every baseline
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Chromium's own background connections are refused on a closed network and logged as
# errors: these flags turn them off.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # a container's small /dev/shm crashes the renderer
    "--window-size=1400,1000",
)


def chromium(user_data_dir: Path | None = None):
    """Headless Chromium from the OS packages (`chromium`, `chromium-driver`), with the
    browser's console log kept for `get_log("browser")`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir or tempfile.mkdtemp()}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def copy_recorded_run(dst: Path) -> Path:
    """The recorded quick.toml run, copied so a test may tear its files."""
    shutil.copytree(RECORDED, dst)
    return dst


def recorded_rounds() -> list[dict]:
    """The recorded run's round rows, as the ServerApp held them."""
    return json.loads((RECORDED / "report.json").read_text())["rounds"]


class LiveRun:
    """A run folder written as `fedadapt simulate` writes it while it trains: config.json
    first, then metrics.csv rewritten after every round by the ServerApp's own writer
    (`server.report.write_metrics_csv`), with the recorded run's real rounds."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True)
        report = json.loads((RECORDED / "report.json").read_text())
        atomic_write_text(folder / "config.json", json.dumps(report["config"], indent=2) + "\n")
        self.rows: list[dict] = []
        self.total = report["config"]["rounds"]

    def round(self) -> int:
        """Land the next round in the files; returns its number."""
        self.rows.append(recorded_rounds()[len(self.rows)])
        write_metrics_csv(self.folder / "metrics.csv", self.rows)
        return len(self.rows)


def device_report(device: str, channel: str, stable_acc: float, cand_acc: float, **kw) -> dict:
    """A device's rollout report, exactly the schema the update service accepts."""
    r = {
        "device": device,
        "channel": channel,
        "seq": 1,
        "stable": 1,
        "candidate": 2,
        "running": 2,
        "examples": 40,
        "stable_accuracy": stable_acc,
        "candidate_accuracy": cand_acc,
        "stable_latency_ms": 3.1,
        "candidate_latency_ms": 3.3,
        "stable_failures": 0,
        "candidate_failures": 0,
        "rolled_back": 0,
    }
    return {**r, **kw}


@dataclass
class Fleet:
    """A registry with two channels: `main` rolls v2 out to every device (no halt), `beta`
    was halted by its guardrail; each device's reports went through the update service's
    own sink (`ReportSink`: signature, schema, replay checks)."""

    registry: Path
    keys: Keys
    devices: dict[str, Ed25519PrivateKey]
    main_reports: int
    beta_reports: int


def build_fleet(tmp: Path, devices: int = 8) -> Fleet:
    """The registry, rollouts and signed reports of `Fleet`, in `tmp`."""
    reg, keys = two_version_registry(tmp)
    rollouts = Rollouts(reg)
    rollouts.start("main", 2, 1.0, keys.key, stable=1, guard=Guardrail(0.05, 0.1, 3))
    rollouts.start("beta", 2, 1.0, keys.key, stable=1, guard=Guardrail(0.05, 0.1, 3))
    folder = tmp / "device-keys"
    folder.mkdir()
    keys_by_id = {}
    for i in range(devices):
        key = Ed25519PrivateKey.generate()
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (folder / f"d{i}.pub").write_bytes(pem)
        keys_by_id[key_id(key.public_key())] = key
    sink = ReportSink(rollouts, load_device_keys(folder), keys.key)
    ids = list(keys_by_id)
    seq = dict.fromkeys(ids, 0)

    def send(device: str, channel: str, stable: float, cand: float, **kw) -> str | None:
        seq[device] += 1
        r = device_report(device, channel, stable, cand, seq=seq[device], **kw)
        return sink.accept(channel, *sign_report(r, keys_by_id[device]))

    main = 0
    for i, d in enumerate(ids):  # a good candidate: about +2 points on every device
        failures = 3 if i == len(ids) - 1 else 0  # one device (not on beta) fails some
        send(d, "main", 0.78 + 0.01 * (i % 4), 0.80 + 0.01 * (i % 3), candidate_failures=failures)
        main += 1
    beta, halted = 0, None
    for i, d in enumerate(ids[:4]):  # a bad one: 30 points worse, halted after 3 devices
        halted = send(d, "beta", 0.80, 0.50 + 0.01 * i) or halted
        beta += 1
    assert halted and halted.startswith("guardrail:"), halted
    return Fleet(reg, keys, keys_by_id, main, beta)
