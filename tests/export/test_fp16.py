"""`fedadapt export --precision fp16`: an fp16 graph whose adapter tensors stay fp16
overridable inputs, with an fp16 `.onnx_adapter`, and logits that match torch on CPU."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from fedadapt.base.checkpoint import load_tokenizer, tokenize
from fedadapt.cli.app import main
from fedadapt.export.exporter import MODEL_FILE, ExportOptions, export
from fedadapt.export.graph import overridable
from fedadapt.onnx_adapter import SUFFIX, open_session, read_onnx_adapter
from tests.export.test_exporter import TEXTS, _adapter

FP16 = onnx.TensorProto.FLOAT16


def test_fp16_with_a_quantized_base_is_refused_in_one_line(tmp_path, capsys):
    argv = ["export", "--adapter", str(tmp_path / "a"), "--out", str(tmp_path / "dev")]
    assert main([*argv, "--precision", "fp16", "--quantize", "int8"]) == 2
    err = capsys.readouterr().err
    assert "--precision fp16 keeps the base in fp16; --quantize int8" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "dev").exists()


@pytest.mark.slow
@pytest.mark.integration
def test_fp16_graph_keeps_fp16_adapter_inputs_and_matches_torch(tmp_path):
    m, folder = _adapter(tmp_path / "adapter", seed=2)
    dev = tmp_path / "dev"
    export(folder, dev, ExportOptions(precision="fp16", measure=False))
    proto = onnx.load(str(dev / MODEL_FILE))
    slots = overridable(proto)
    types = {i.name: i.type.tensor_type.elem_type for i in proto.graph.input}
    assert slots and all(types[k] == FP16 for k in slots)
    inits = {i.name: i.data_type for i in proto.graph.initializer}
    assert all(inits[k] == FP16 for k in slots)
    assert sum(t == FP16 for t in inits.values()) > 0.9 * len(inits)  # the base is fp16 too
    _, _, tensors = read_onnx_adapter(dev / f"adapter{SUFFIX}")
    assert set(tensors) == set(slots)
    assert all(v.dtype == np.float16 and v.shape == slots[k] for k, v in tensors.items())
    assert json.loads((dev / "runtime.json").read_text())["precision"] == "fp16"

    ids, mask = tokenize(load_tokenizer(128), TEXTS)
    with torch.no_grad():
        want = m(ids, mask).numpy()
    sess = open_session(dev / MODEL_FILE)
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    got = sess.run(["logits"], feed)[0]
    assert got.dtype == np.float16
    assert np.abs(got.astype(np.float32) - want).max() < 2e-2
    # the fp16 adapter inputs are live: zeroing the head's weight zeroes its share of logits
    zero = {k: np.zeros_like(v) for k, v in tensors.items() if k.startswith("head.")}
    bias = sess.run(["logits"], {**feed, **zero})[0]
    assert np.abs(bias).max() == 0
