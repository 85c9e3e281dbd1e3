"""One exported device graph for every test under tests/clients that needs a real one.

Exporting `Stack(global, personal)` over the base costs tens of seconds on a busy CPU, so
the graph is exported once per session (lazily: only when a test asks for it) and each test
gets a device folder of hard links to it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fedadapt.simconfig import SimConfig

GRAPH_CFG = SimConfig(
    num_clients=4, clients_per_round=4, personalization="fedrep", personal_epochs=2, seed=3
)


@pytest.fixture(scope="session")
def graph(tmp_path_factory) -> Path:
    """The device graph of run `GRAPH_CFG`: model.onnx, tokenizer.json, runtime.json."""
    from fedadapt.export.device_graph import install_device_graphs

    folder = tmp_path_factory.mktemp("graph")
    install_device_graphs(GRAPH_CFG, [folder])
    return folder


def link_graph(graph: Path, folder: Path) -> Path:
    """A device folder holding the session's graph (hard links: no copy of 90 MB)."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in graph.iterdir():
        (folder / f.name).hardlink_to(f)
    return folder


# -- a staged rollout on real devices: the session's graph, each device's own data folder ------


@pytest.fixture(scope="session")
def forced_adapters(tmp_path_factory) -> dict[int, Path]:
    """Two adapters of `GRAPH_CFG`'s layout whose heads always answer one label (zero weight,
    bias +-5): label 1 for version 1 (stable), label 0 for version 2 (the candidate). A
    version's held-out accuracy is then the share of its label, known without running it."""
    import torch

    from fedadapt.adapter_files import save_adapter
    from fedadapt.model_setup import GLOBAL, build_model, label_names

    model = build_model(GRAPH_CFG)
    root = tmp_path_factory.mktemp("forced")
    folders = {}
    for version, label in ((1, 1), (2, 0)):
        head = model.heads[GLOBAL]
        with torch.no_grad():
            head.weight.zero_()
            head.bias.fill_(-5.0)
            head.bias[label] = 5.0
        extra = {"label_names": label_names(GRAPH_CFG.dataset)}
        folders[version] = save_adapter(model, GLOBAL, root / f"v{version}", version, extra)
    return folders


@dataclass
class RolloutWorld:
    """A registry with versions 1 and 2, a started rollout of 2 to half the devices, and
    two registered devices with the session's graph and version 1: one inside the cohort,
    one outside. `url` serves updates and takes reports (what `rollout serve` runs)."""

    registry: Path
    key_file: Path
    pub_file: Path
    rollouts: Any
    inside: Path
    outside: Path
    url: str


def register(device: Path, folder: Path) -> str:
    """Write `device`'s report key into the server's device-key folder; returns its id."""
    from cryptography.hazmat.primitives import serialization

    from fedadapt.clients.updates.rollout_agent import device_key
    from fedadapt.updates.keys import key_id

    pub = device_key(device).public_key()
    folder.mkdir(parents=True, exist_ok=True)
    pem = pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (folder / f"{key_id(pub)}.pub").write_bytes(pem)
    return key_id(pub)


def write_reviews(folder: Path, n: int = 30) -> Path:
    """A device's own labelled examples, three in four labelled 0 (the run's label names;
    of the 6 held out by the default split, 4)."""
    from fedadapt.model_setup import label_names

    names = label_names(GRAPH_CFG.dataset)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        json.dumps({"text": f"review {i}: a film about {i * 7} things", "label": names[i % 4 == 0]})
        for i in range(n)
    ]
    (folder / "reviews.jsonl").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture
def rollout_world(graph, forced_adapters, tmp_path) -> Iterator[RolloutWorld]:
    from fedadapt.cli.app import main
    from fedadapt.clients.updates.updater import fetch
    from fedadapt.server.updates.publish import publish
    from fedadapt.server.updates.reports import ReportSink, load_device_keys
    from fedadapt.server.updates.rollout import Rollouts
    from fedadapt.server.updates.service import UpdateServer
    from fedadapt.updates.cohort import in_cohort
    from fedadapt.updates.keys import PRIVATE_FILE, PUBLIC_FILE, load_public
    from tests.registry_helpers import make_keys, serving

    keys = make_keys(tmp_path / "keys")
    key_file, pub_file = tmp_path / "keys" / PRIVATE_FILE, tmp_path / "keys" / PUBLIC_FILE
    reg = tmp_path / "registry"
    for version in (1, 2):
        publish(forced_adapters[version], reg, keys.key, name="rt")
    start = ["rollout", "start", "--registry", str(reg), "--key", str(key_file)]
    assert main([*start, "--version", "2", "--fraction", "0.5", "--stable", "1"]) == 0
    rollouts = Rollouts(reg)
    _, channel = rollouts.read_channel("main")
    sides: dict[bool, Path] = {}
    for i in range(64):  # each new device key is inside with probability 1/2
        device = tmp_path / f"d{i}"
        device_id = register(device, tmp_path / "device-keys")
        sides.setdefault(in_cohort(device_id, channel.salt, channel.fraction), device)
        if len(sides) == 2:
            break
    sink = ReportSink(rollouts, load_device_keys(tmp_path / "device-keys"), keys.key)
    with serving(UpdateServer(reg, reports=sink)) as url:
        for device in sides.values():
            link_graph(graph, device)
            write_reviews(device / "data")
            fetch(url, device, [load_public(pub_file)], _graph_base(graph), version=1)
        yield RolloutWorld(reg, key_file, pub_file, rollouts, sides[True], sides[False], url)


def _graph_base(graph: Path) -> str:
    from fedadapt.onnx_adapter import RUNTIME_FILE

    return str(json.loads((graph / RUNTIME_FILE).read_text())["base_sha256"])
