"""Bench section `deploy`: what a message and a round cost on the Deployment Engine.

`per_message_s`: fedadapt's own cost in each ClientApp process a SuperNode starts (Flower
1.42 starts one per message): importing the app and building the model over the int8 base,
with the base cached in the device folder as `fedadapt device run` sets it up (medians of
fresh processes after one that fills the cache); `per_message_uncached_base_s` is the base
built from the checkpoint, as before the cache.

The rest: the bench `secagg` config, run on a real SuperLink and 3 SuperNodes over TLS on
loopback, with the server pulling replies every 3 s (Flower's deployed grid) and every 0.2 s
(`grid_poll_s`, see server/polling.py), plain and under SecAgg+ (four exchanges a round).
The SuperNodes' own 3 s idle poll is not configurable in Flower 1.42 and is in every figure.
Not in the default sections: it starts processes and takes minutes. `--quick` measures the
per-message cost only.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path

from tqdm import tqdm

PER_MESSAGE = "fedadapt.bench.per_message"


def per_message(runs: int = 5) -> dict:
    """Median seconds of fedadapt's own work in a fresh ClientApp process, and the base
    built without the cache (one process)."""
    from fedadapt.base_cache import BASE_CACHE_ENV
    from fedadapt.bench import run_case

    saved = os.environ.get(BASE_CACHE_ENV)
    with tempfile.TemporaryDirectory() as cache:
        try:
            os.environ.pop(BASE_CACHE_ENV, None)
            uncached = run_case(PER_MESSAGE)["base"]
            os.environ[BASE_CACHE_ENV] = cache
            run_case(PER_MESSAGE)  # fills the cache, as a device's first message does
            samples = [run_case(PER_MESSAGE) for _ in range(runs)]
        finally:
            if saved is None:
                os.environ.pop(BASE_CACHE_ENV, None)
            else:
                os.environ[BASE_CACHE_ENV] = saved
    med = {k: statistics.median(s[k] for s in samples) for k in ("imports", "base")}
    med["total"] = med["imports"] + med["base"]
    return {
        "per_message_s": {k: round(v, 3) for k, v in med.items()},
        "per_message_uncached_base_s": round(uncached, 3),
    }


def run(quick: bool = False) -> dict:
    from fedadapt.bench.secagg import bench_config
    from fedadapt.deploy import Cluster

    out: dict = per_message(runs=3 if quick else 5)
    tqdm.write(f"per message: {out}")
    if quick:
        return out
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp) / "cluster", nodes=3)
        try:
            cluster.start()
            cluster.start_supernodes()
            cases = [(s, p) for s in (False, True) for p in (3.0, 0.2)]
            for secure, poll in tqdm(cases, desc="bench deploy", unit="run"):
                folder = Path(tmp) / f"{secure}-{poll}"
                cfg = bench_config(3, secure, folder, grid_poll_s=poll)
                if cluster.run(cfg) != 0:
                    raise RuntimeError(f"deployed bench run failed; logs in {cluster.folder}")
                row = json.loads((folder / "report.json").read_text())["rounds"][0]
                mode = "secagg" if secure else "plain"
                out[f"{mode}_round_s_poll_{poll:g}s"] = row["seconds"]
        finally:
            cluster.stop()
    tqdm.write(f"deployed rounds, 3 nodes: {out}")
    return out
