"""One exported device graph for every test under tests/clients that needs a real one.

Exporting `Stack(global, personal)` over the base costs tens of seconds on a busy CPU, so
the graph is exported once per session (lazily: only when a test asks for it) and each test
gets a device folder of hard links to it.
"""

from __future__ import annotations

from pathlib import Path

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
