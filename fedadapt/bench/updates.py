"""Bench section `updates`: what a device downloads, and what verifying and applying costs.

A real adapter (bottleneck, the quick.toml shape) is published twice through a real HTTP
server on loopback: v1 in full, then v2 after one round of federated-sized changes to
every tensor, so the delta bundle is an honest one, not an unchanged head.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch


def run(quick: bool = False) -> dict:
    """The section's figures: base, full and delta bundle sizes, fetch time and verification cost.

    `fetch_apply_ms` is a full fetch onto an empty device folder (median); `delta_bundle_bytes`
    is None if publishing made no delta. `quick` repeats 3 times instead of 10.
    """
    from fedadapt.adapter_files import save_adapter
    from fedadapt.base.checkpoint import model_dir
    from fedadapt.clients.updates.updater import fetch
    from fedadapt.model_setup import GLOBAL, build_model
    from fedadapt.server.updates.publish import publish, read_index
    from fedadapt.server.updates.service import UpdateServer
    from fedadapt.simconfig import SimConfig
    from fedadapt.updates.bundles import sha256, verify_manifest
    from fedadapt.updates.keys import key_id, keygen, load_private, load_public

    repeats = 3 if quick else 10
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        keygen(tmp / "k")
        key, pub = (
            load_private(tmp / "k/signing_key.pem"),
            load_public(tmp / "k/signing_key.pub.pem"),
        )
        model = build_model(SimConfig())
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.adapter_parameters(GLOBAL).values():
                p.add_(torch.randn(p.shape, generator=g) * 1e-2)
        save_adapter(model, GLOBAL, tmp / "v1")
        with torch.no_grad():  # one round's worth of change: small steps on every tensor
            for p in model.adapter_parameters(GLOBAL).values():
                p.add_(torch.randn(p.shape, generator=g) * 1e-4)
        save_adapter(model, GLOBAL, tmp / "v2")
        reg = tmp / "reg"
        publish(tmp / "v1", reg, key, name="bench")
        publish(tmp / "v2", reg, key)
        entry = read_index(reg)["versions"][-1]
        server = UpdateServer(reg)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base_sha = model.base.sha256
        times = []
        try:
            for i in range(repeats):
                dev = tmp / f"dev{i}"
                t = time.perf_counter()
                fetch(server.url, dev, [pub], base_sha)  # v2 in full (nothing installed)
                times.append((time.perf_counter() - t) * 1e3)
        finally:
            server.shutdown()
            server.server_close()
        # verification cost per MB: signature + payload hash over a 16 MB payload
        big = torch.randn(4 * 1024 * 1024).numpy().tobytes()
        man_bytes = (reg / f"{entry['full']['path']}.manifest.json").read_bytes()
        sig = (reg / f"{entry['full']['path']}.sig").read_bytes()
        vt = []
        for _ in range(repeats):
            t = time.perf_counter()
            verify_manifest(man_bytes, sig, {key_id(pub): pub})
            sha256(big)
            vt.append((time.perf_counter() - t) * 1e3 / (len(big) / 2**20))
    delta = min((d["payload_bytes"] for d in entry["deltas"]), default=None)
    out = {
        "base_download_bytes": (model_dir() / "model.safetensors").stat().st_size,
        "full_bundle_bytes": entry["full"]["payload_bytes"],
        "delta_bundle_bytes": delta,
        "fetch_apply_ms": statistics.median(times),
        "verify_ms_per_mb": statistics.median(vt),
    }
    print(
        f"updates: base {out['base_download_bytes'] / 1e6:.1f} MB, full bundle "
        f"{out['full_bundle_bytes'] / 1e3:.1f} kB, delta {delta and delta / 1e3:.1f} kB, "
        f"fetch+verify+apply {out['fetch_apply_ms']:.1f} ms, "
        f"verify {out['verify_ms_per_mb']:.2f} ms/MB"
    )
    return out
