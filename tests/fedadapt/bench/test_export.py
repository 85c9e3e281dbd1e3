"""`fedadapt bench --sections export --provider cuda`: refused in one line on a CPU build of
ONNX Runtime, written beside the CPU figures on a GPU one, and its sessions get the providers
asked for (checked on the CPU, with a provider that has no kernels standing in for CUDA)."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest

import fedadapt.bench
from fedadapt.bench import export
from fedadapt.cli.app import main
from fedadapt.errors import FedAdaptError
from tests.fedadapt.test_onnx_adapter import NO_KERNELS, tiny_graph

CPU_FIGURES = {"fp32": {"provider": "cpu", "swap_ms": 1.0}}
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(HAS_CUDA, reason="a GPU build of ORT")
def test_cuda_on_a_cpu_build_is_refused_in_one_line_before_any_work(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--sections", "export", "--provider", "cuda", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"onnxruntime-gpu, version {ort.__version__}" in err
    assert not out.exists()


@pytest.fixture
def gpu_build(monkeypatch):
    """ORT as a GPU build reports itself, and an export section that records its provider."""
    have = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: have)
    monkeypatch.setattr(fedadapt.bench, "machine", lambda: {"cpu": "GPU box"})
    monkeypatch.setattr(export, "run", lambda quick, provider: {"fp16": {"provider": provider}})


def test_a_cuda_run_is_written_beside_the_cpu_figures(tmp_path, gpu_build):
    out = tmp_path / "bench.json"
    out.write_text(json.dumps({"export": CPU_FIGURES, "machines": {"export": {"cpu": "EPYC"}}}))
    fedadapt.bench.run(out, quick=True, sections=["export"], provider="cuda")
    written = json.loads(out.read_text())
    assert written["export"] == CPU_FIGURES
    assert written["export_cuda"] == {"fp16": {"provider": "cuda"}}
    assert written["machines"] == {"export": {"cpu": "EPYC"}, "export_cuda": {"cpu": "GPU box"}}


def test_cuda_with_sections_other_than_export_is_refused(tmp_path, gpu_build):
    out = tmp_path / "bench.json"
    with pytest.raises(FedAdaptError, match="--sections export"):
        fedadapt.bench.run(out, quick=True, sections=["core", "export"], provider="cuda")
    assert not out.exists()


def test_fp16_is_measured_on_cuda_only():
    assert export.precisions("cuda") == ("fp32", "fp16", "int8", "int4")
    assert "fp16" not in export.precisions("cpu")


def test_placement_names_the_ops_that_fell_back_to_the_cpu(tmp_path):
    path = tiny_graph(tmp_path / "g.onnx")
    assert export.placement(path, ("CPUExecutionProvider",)) == {
        "nodes_by_provider": {"CPUExecutionProvider": 2},
        "fallback_ops": [],
    }
    fell_back = export.placement(path, NO_KERNELS)
    assert fell_back["nodes_by_provider"] == {"CPUExecutionProvider": 2}
    assert fell_back["fallback_ops"] == ["Cast", "Relu"]
    assert [p.name for p in tmp_path.iterdir()] == ["g.onnx"]  # the profile is removed


@pytest.mark.slow
def test_the_cuda_section_runs_every_precision_on_a_stand_in_provider(monkeypatch):
    # The whole cuda path, fp16 graphs included, on this CPU: the provider list reaches
    # every session, and what ran on the CPU instead is recorded.
    monkeypatch.setattr("fedadapt.onnx_adapter.execution_providers", lambda name: NO_KERNELS)
    result = export.run(quick=True, provider="cuda")
    assert set(result) == {"fp32", "fp16", "int8", "int4", "adapter_bytes"}
    for key in export.precisions("cuda"):
        entry = result[key]
        assert entry["provider"] == "cuda" and entry["fallback_ops"]
        assert set(entry["nodes_by_provider"]) == {"CPUExecutionProvider"}
        assert entry["swap_ms"] > 0 and entry["seq32"]["adapter_ms"] > 0
    assert result["fp16"]["parity_max_abs"] < 2e-2
    assert result["fp16"]["size_bytes"] < 0.6 * result["fp32"]["size_bytes"]
