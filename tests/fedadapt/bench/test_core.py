import json
import subprocess
import sys

import pytest

from fedadapt.bench.methods import METHODS

KEYS = {
    "trainable_params",
    "trainable_fraction",
    "base_bytes",
    "train_step_ms",
    "peak_rss_mb",
    "forward_max_abs_err",
}


@pytest.mark.slow
@pytest.mark.integration
def test_bench_quick_writes_every_section(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, "-m", "fedadapt", "bench", "--quick", "--out", str(out)],
        check=True,
        timeout=1800,
        capture_output=True,
    )
    result = json.loads(out.read_text())
    assert set(result["machine"]) == {
        "cpu",
        "cores",
        "python",
        "torch",
        "onnxruntime",
        "flwr",
        "date",
    }
    core = result["core"]
    assert set(core) == {"fp32", "int8", "int4"}
    for precision, methods in core.items():
        # every method over the simulations' int8 base; the historical two at every precision
        assert set(methods) == (set(METHODS) if precision == "int8" else {"bottleneck", "lora"})
        for m in methods.values():
            assert set(m) == KEYS
            assert m["train_step_ms"] > 0 and m["peak_rss_mb"] > 100
        assert (methods["bottleneck"]["forward_max_abs_err"] == 0) == (precision == "fp32")
    assert core["int8"]["lora"]["base_bytes"] <= 0.3 * core["fp32"]["lora"]["base_bytes"]
    # prompt tuning trains 10 input vectors; bottleneck (reduction 16) far more
    assert (
        0
        < core["int8"]["prompt"]["trainable_params"]
        < core["int8"]["bottleneck"]["trainable_params"]
    )
    assert core["fp32"]["lora"]["trainable_fraction"] < 0.01
    agg = result["aggregate"]
    assert set(agg) == {"10", "100", "1000"}
    for row in agg.values():
        assert set(row) == {
            "fedadapt_ms",
            "flower_fedavg_ms",
            "fedadapt_peak_mb",
            "flower_fedavg_peak_mb",
            "floor_ms",
            "fedadapt_trimmed_ms",
            "flower_trimmed_ms",
            "fedadapt_trimmed_peak_mb",
            "flower_trimmed_peak_mb",
        }
    assert set(result["updates"]) >= {
        "base_download_bytes",
        "full_bundle_bytes",
        "delta_bundle_bytes",
        "fetch_apply_ms",
        "verify_ms_per_mb",
    }
    export = result["export"]
    for precision in ("fp32", "int8", "int4"):
        row = export[precision]
        assert row["size_bytes"] > 0 and row["swap_ms"] > 0 and row["parity_max_abs"] >= 0
        for seq in ("seq128", "seq32"):
            assert set(row[seq]) == {
                "base_ms",
                "adapter_ms",
                "overhead_pct",
                "merged_lora_overhead_pct",
            }
        assert set(row["methods"]) == set(METHODS)
        for m, entry in row["methods"].items():
            assert entry["parity_max_abs"] < 0.5, m  # logits match torch within int4 error
            for seq in ("seq128", "seq32"):
                assert set(entry[seq]) == {"base_ms", "adapter_ms", "overhead_pct"}
                assert entry[seq]["adapter_ms"] > 0
        # the top-level adapter figures are the bottleneck's, measured once
        assert row["seq128"]["adapter_ms"] == row["methods"]["bottleneck"]["seq128"]["adapter_ms"]
    assert export["int8"]["size_bytes"] < export["fp32"]["size_bytes"]
    assert export["nnapi_decompositions"]["layernorm+gelu-tanh"]["blocking_ops"] == []
    row = result["secagg"]["3"]  # --quick: 3 nodes only
    assert set(row) == {"plain_round_s", "secagg_round_s", "plain_bytes", "secagg_bytes"}
    assert row["secagg_bytes"] > row["plain_bytes"] > 0  # masks, keys and shares cost bytes
