"""NNAPI-friendly rewrites: exact LayerNorm, approximate GELU, and what they leave blocking."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from fedadapt.adapters import AdapterModel, BottleneckConfig
from fedadapt.base import load_base
from fedadapt.export.decompose import ExplicitLayerNorm, decompose, tanh_gelu
from fedadapt.export.graph import export_graph
from fedadapt.export.mobile import make_shape_fixed, mobile_summary


def test_explicit_layernorm_is_exact():
    ln = nn.LayerNorm(384, eps=1e-12)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(2, 5, 384) * 3
    assert torch.allclose(ExplicitLayerNorm(ln)(x), ln(x), atol=1e-5)


def test_tanh_gelu_is_close_but_not_exact():
    x = torch.linspace(-6, 6, 10_001)
    err = (tanh_gelu(x) - torch.nn.functional.gelu(x)).abs().max()
    assert 1e-5 < err < 1e-3


def test_unknown_decomposition_is_refused():
    with pytest.raises(ValueError, match="unknown decompositions"):
        decompose(nn.Linear(2, 2), ("softmax",))


@pytest.mark.slow
def test_decomposed_fixed_shape_graph_runs_wholly_on_nnapi(tmp_path, batch):
    m = AdapterModel(load_base("none"))
    m.add_adapter("a", BottleneckConfig(), num_labels=2)
    m.set_active("a")
    m.eval()
    with torch.no_grad():
        exact = m(*batch)
    assert decompose(m, ("layernorm", "gelu-tanh")) == 13 + 6  # 13 LayerNorms, 6 GELUs
    with torch.no_grad():
        assert (m(*batch) - exact).abs().max() < 1e-2
    export_graph(m, tmp_path / "m.onnx")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert not ops & {"LayerNormalization", "Gelu", "Erf", "ReduceSum"}
    make_shape_fixed(tmp_path / "m.onnx", 1, 64)
    nnapi = mobile_summary(tmp_path / "m.onnx")["nnapi"]
    assert nnapi["blocking_ops"] == [] and nnapi["partitions"] == 1
