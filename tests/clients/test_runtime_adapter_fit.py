"""The edge runtime refuses an `.onnx_adapter` that lacks some of its graph's adapter inputs.

ORT runs the export's defaults for any input a file leaves out, without a word. On the
session's real device graph (`Stack(global, personal)`, tests/clients/conftest.py), the files
the device writes itself (the round's global, which leaves the personal branch at its
identity defaults, and the personalized file) are served, and the same files with one
tensor removed are refused, naming it, with the served adapter unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from fedadapt.clients.personalized import (
    GLOBAL_ONNX,
    PERSONAL_FILE,
    PERSONALIZED_ONNX,
    keep_round_global,
)
from fedadapt.clients.runtime import EdgeRuntime
from fedadapt.errors import AdapterLoadError
from fedadapt.model_setup import PERSONAL, build_fresh_global, cached_model
from fedadapt.onnx_adapter import read_onnx_adapter, write_onnx_adapter
from tests.clients.conftest import GRAPH_CFG, link_graph

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def device(graph, tmp_path) -> Path:
    """A device after a round: its global and personalized files, with a personal branch."""
    folder = link_graph(graph, tmp_path / "device")
    personal = cached_model(GRAPH_CFG).adapter_state(PERSONAL)
    personal_np = {k: v.numpy() for k, v in personal.items()}
    (folder / PERSONAL_FILE).write_bytes(safetensors.numpy.save(personal_np))
    keep_round_global(folder, {k: v.numpy() for k, v in build_fresh_global(GRAPH_CFG).items()})
    return folder


def _without(rt: EdgeRuntime, name: str, drop: str) -> Path:
    """`name`'s file rewritten by the device's own writer, less the tensor `drop`."""
    version, _, tensors = read_onnx_adapter(rt.folder / name)
    del tensors[drop]
    return write_onnx_adapter(rt.folder / f"less-{name}", tensors, version, rt.meta["base_sha256"])


def test_the_devices_own_files_are_served_and_a_tensor_less_is_refused(device) -> None:
    rt = EdgeRuntime(device)
    assert rt.personalized and rt.adapter_version == 0
    _, _, global_file = read_onnx_adapter(device / GLOBAL_ONNX)
    _, _, personalized = read_onnx_adapter(device / PERSONALIZED_ONNX)
    assert not any(k.startswith("personal:") for k in global_file)  # left at the identity
    assert set(personalized) == set(rt.slots)
    assert rt.activate(device / GLOBAL_ONNX) == 0
    served = rt.logits(["a fine film"])
    shared = sorted(k for k in global_file if k.startswith("shared:"))[-1]
    personal = sorted(k for k in personalized if k.startswith("personal:"))[0]
    for name, drop in (
        (GLOBAL_ONNX, shared),
        (GLOBAL_ONNX, "head.bias"),
        (PERSONALIZED_ONNX, personal),
    ):
        less = _without(rt, name, drop)
        with pytest.raises(AdapterLoadError, match=rf"lacks 1 of the graph's .*'{drop}'"):
            rt.activate(less)
        assert np.array_equal(rt.logits(["a fine film"]), served)  # still the global file
