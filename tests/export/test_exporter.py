"""`fedadapt export` end to end, then the edge runtime on what it wrote."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from fedadapt.adapter_files import save_adapter
from fedadapt.adapters import AdapterModel, BottleneckConfig
from fedadapt.base import load_base
from fedadapt.base.checkpoint import load_tokenizer, tokenize
from fedadapt.cli.app import main
from fedadapt.clients.runtime import EdgeRuntime
from fedadapt.errors import AdapterLoadError
from fedadapt.export.exporter import ExportOptions, export
from fedadapt.onnx_adapter import write_onnx_adapter

pytestmark = [pytest.mark.slow, pytest.mark.integration]
TEXTS = ["a wonderful, moving film", "a dull, lifeless mess", "it was fine"]


def _adapter(folder, seed: int) -> tuple[AdapterModel, object]:
    torch.manual_seed(seed)
    m = AdapterModel(load_base("none"))
    m.add_adapter("a", BottleneckConfig(reduction_factor=32), num_labels=2)
    with torch.no_grad():
        for p in m.adapter_parameters("a").values():
            p.add_(torch.randn_like(p) * 0.05)
    save_adapter(m, "a", folder, version=3, extra={"label_names": ["rotten", "fresh"]})
    m.set_active("a")
    return m.eval(), folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    m, folder = _adapter(root / "adapter", seed=0)
    rc = main(
        ["export", "--adapter", str(folder), "--out", str(root / "device"), "--quantize", "int8"]
    )
    assert rc == 0
    return m, root


def _torch_logits(m, texts):
    ids, mask = tokenize(load_tokenizer(128), texts)
    with torch.no_grad():
        return m(ids, mask).numpy()


def test_report_has_every_field(exported):
    _, root = exported
    r = json.loads((root / "device" / "export_report.json").read_text())
    assert r["sizes"]["model.onnx"] < 0.7 * 90_000_000  # int8 MatMuls, fp32 embeddings
    assert r["sizes"]["adapter.onnx_adapter"] < 300_000
    assert 0 < r["parity_max_abs"] < 0.25
    for seq in ("seq128", "seq32"):
        lat = r["latency"][seq]
        assert lat["base_ms"] > 0 and lat["adapter_ms"] > 0 and "overhead_pct" in lat
    assert 0 < r["swap_ms"] < 50
    assert r["mobile"]["nnapi"]["nodes"] > 0 and "blocking_ops" in r["mobile"]["coreml_mlprogram"]


def test_runtime_predicts_like_torch_and_swaps_without_a_new_session(exported, tmp_path):
    m, root = exported
    rt = EdgeRuntime(root / "device")
    assert rt.labels == ["rotten", "fresh"] and rt.adapter_version == 3
    want = _torch_logits(m, TEXTS)
    assert np.abs(rt.logits(TEXTS) - want).max() < 0.25
    other, _ = _adapter(tmp_path / "b", seed=5)
    tensors = {k: v.numpy() for k, v in other.adapter_state("a").items()}
    session = rt.session
    assert (
        rt.activate(write_onnx_adapter(tmp_path / "b.onnx_adapter", tensors, 4, m.base.sha256)) == 4
    )
    gc.collect()  # ORT ignores a LoraAdapter nobody references; the runtime keeps it
    assert rt.session is session
    got = rt.logits(TEXTS)
    assert np.abs(got - _torch_logits(other, TEXTS)).max() < 0.25
    assert np.abs(got - want).max() > 0.05
    preds = rt.predict(TEXTS)
    assert [p.label for p in preds] == [rt.labels[i] for i in got.argmax(1)]
    assert all(abs(sum(p.scores.values()) - 1) < 1e-5 for p in preds)


def test_runtime_refuses_an_adapter_for_another_base(exported, tmp_path):
    m, root = exported
    rt = EdgeRuntime(root / "device")
    tensors = {k: v.numpy() for k, v in m.adapter_state("a").items()}
    bad = write_onnx_adapter(tmp_path / "x.onnx_adapter", tensors, 9, "0" * 64)
    with pytest.raises(AdapterLoadError, match="another base"):
        rt.activate(bad)
    assert rt.adapter_version == 3


def test_infer_runs_without_torch(exported):
    _, root = exported
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now fails
        "from fedadapt.cli.app import main\n"
        f"rc = main(['infer', '--device-dir', {str(root / 'device')!r}, 'a gem', 'a bore'])\n"
        "assert 'torch' not in [m for m, v in sys.modules.items() if v is not None]\n"
        "sys.exit(rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].split("\t")[0] in ("rotten", "fresh")
    assert "rotten=" in lines[0] and lines[0].endswith("a gem")


def test_fixed_shape_export_pads_batches(tmp_path):
    m, folder = _adapter(tmp_path / "adapter", seed=1)
    export(
        folder, tmp_path / "dev", ExportOptions(quantize="none", fixed_shape=(2, 32), measure=False)
    )
    rt = EdgeRuntime(tmp_path / "dev")
    assert rt.fixed == (2, 32)
    got = rt.logits(TEXTS)  # 3 texts: two calls of batch 2
    ids, mask = tokenize(load_tokenizer(32), TEXTS)
    with torch.no_grad():
        want = m(ids, mask).numpy()
    assert got.shape == (3, 2) and np.abs(got - want).max() < 1e-4


def test_wrong_base_adapter_folder_is_refused(tmp_path):
    _, folder = _adapter(tmp_path / "adapter", seed=2)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["base_model_sha256"] = "0" * 64
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    assert main(["export", "--adapter", str(folder), "--out", str(tmp_path / "d")]) == 2
    assert not (tmp_path / "d").exists()


def test_several_adapters_make_a_task_indexed_device_folder(tmp_path):
    models = [_adapter(tmp_path / f"t{i}", seed=10 + i)[0] for i in range(2)]
    opts = ExportOptions(quantize="none", measure=False)
    report = export([tmp_path / "t0", tmp_path / "t1"], tmp_path / "dev", opts)
    assert report["sizes"]["tasks.onnx_adapter"] > 0
    rt = EdgeRuntime(tmp_path / "dev")
    for task, m in enumerate(models):
        assert np.abs(rt.logits(TEXTS, task=task) - _torch_logits(m, TEXTS)).max() < 1e-4
