"""What `export_report.json` measures: parity with torch, latency overhead, swap time.

Latency is the median of interleaved runs (base, adapter, base, ...) so that drift on a
shared machine hits both sides alike; the overhead is against a graph of the same precision
with the adapter left out, so it isolates the branches, not the quantization.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from fedadapt.onnx_adapter import load_adapter_options, write_onnx_adapter


def feed(ids: np.ndarray, mask: np.ndarray, extra: dict | None = None) -> dict[str, np.ndarray]:
    """The graph's inputs: token ids and mask as int64 (what the exported graph declares), plus
    `extra` inputs such as the task index.
    """
    return {
        "input_ids": ids.astype(np.int64),
        "attention_mask": mask.astype(np.int64),
        **(extra or {}),
    }


def parity(
    sess: ort.InferenceSession,
    ids: np.ndarray,
    mask: np.ndarray,
    ref: np.ndarray,
    extra: dict | None = None,
) -> float:
    """Max abs difference of the logits against `ref` (torch's, on held-out sentences)."""
    return float(np.abs(sess.run(["logits"], feed(ids, mask, extra))[0] - ref).max())


def latency_pair(
    base: ort.InferenceSession,
    adapted: ort.InferenceSession,
    seq: int,
    runs: int = 60,
    extra: dict | None = None,
) -> tuple[float, float]:
    """Median ms per batch-1 call of `base` and `adapted` at sequence length `seq`."""
    ids = np.random.default_rng(seq).integers(1000, 20000, size=(1, seq))
    f = feed(ids, np.ones_like(ids))
    fa = feed(ids, np.ones_like(ids), extra)
    for _ in range(5):
        base.run(["logits"], f)
        adapted.run(["logits"], fa)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for sess, ff, out in ((base, f, times[0]), (adapted, fa, times[1])):
            t = time.perf_counter()
            sess.run(["logits"], ff)
            out.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times[0]), statistics.median(times[1])


def swap_ms(
    sess: ort.InferenceSession,
    folder: Path,
    tensors: dict[str, np.ndarray],
    base_sha256: str,
    shape: tuple[int, int] = (1, 32),
    extra: dict | None = None,
    n: int = 20,
) -> float:
    """Median time to load an `.onnx_adapter` and make it the active one on a live session.
    ORT memory-maps the file and feeds its tensors as inputs, so the next call costs what any
    call costs; one run per swap checks that (an adapter never run proves nothing)."""
    files = [
        write_onnx_adapter(
            folder / f".swap{i}.onnx_adapter",
            {k: v * (1.0 + 0.01 * i) for k, v in tensors.items()},
            i + 1,
            base_sha256,
        )
        for i in range(2)
    ]
    ids = np.full(shape, 2000)
    f = feed(ids, np.ones_like(ids), extra)
    outputs, times = [], []
    for i in range(n):
        t = time.perf_counter()
        _adapter, opts = load_adapter_options(files[i % 2])
        times.append((time.perf_counter() - t) * 1e3)
        outputs.append(sess.run(["logits"], f, opts)[0])
    for p in files:
        p.unlink()
    if np.array_equal(outputs[0], outputs[1]):
        raise RuntimeError("swapping adapters did not change the output: the swap is broken")
    return statistics.median(times)
