"""How fast is a training step over an int8 base with each int8 kernel, against fp32?

`python -m fedadapt.bench.int8_step [steps]`: one bottleneck-adapter training step (batch 16,
48 tokens, the `core` section's shape) over the fp32 base, the int8 base with kernel
"dequant" (dequantize, then fp32 GEMM) and with "pack" (`aten._weight_int8pack_mm`). The
cases alternate step by step, so a shared machine's load hits them alike; medians in ms.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from fedadapt.base.quantize import INT8_KERNELS, int8_kernel


def _step_fn(precision: str):
    from fedadapt.adapters import AdapterModel, BottleneckConfig
    from fedadapt.base import load_base
    from fedadapt.base.checkpoint import load_tokenizer, tokenize
    from fedadapt.bench.core import BATCH, PROBE, SEQ

    torch.manual_seed(0)
    tok = load_tokenizer(SEQ)
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=SEQ)
    ids, mask = tokenize(tok, (PROBE * BATCH)[:BATCH])
    model = AdapterModel(load_base(precision))
    model.add_adapter("a", BottleneckConfig(reduction_factor=16), num_labels=2)
    model.train_adapter("a")
    model.train()
    y = torch.arange(BATCH) % 2
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)

    def step() -> None:
        loss = F.cross_entropy(model(ids, mask), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def measure(steps: int) -> dict:
    """Median step times (ms) of fp32 and each int8 kernel over `steps` steps, after one warm-up.

    Also their ratios to fp32, the load average and torch's thread count, since a shared
    machine's load moves these figures.
    """
    fp32, int8 = _step_fn("none"), _step_fn("int8")
    cases = {"fp32": (fp32, "dequant")} | {f"int8-{k}": (int8, k) for k in INT8_KERNELS}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(steps + 1):
        for name, (step, kernel) in cases.items():
            with int8_kernel(kernel):
                t = time.perf_counter()
                step()
                if i:  # the first step of each case warms up
                    times[name].append((time.perf_counter() - t) * 1e3)
    ms = {name: round(statistics.median(v), 1) for name, v in times.items()}
    return {
        "train_step_ms": ms,
        "ratio_to_fp32": {k: round(v / ms["fp32"], 2) for k, v in ms.items()},
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 5), indent=1))
