"""Bench section `deploy`: what a round costs on the Deployment Engine against simulation.

The bench `secagg` config, run on a real SuperLink and 3 SuperNodes over TLS on loopback,
with the server pulling replies every 3 s (Flower's deployed grid) and every 0.2 s
(`grid_poll_s`, see server/polling.py), plain and under SecAgg+ (four exchanges a round).
The SuperNodes' own 3 s idle poll is not configurable in Flower 1.42 and is in every figure.
Not in the default sections: it starts processes and takes minutes.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tqdm import tqdm


def run(quick: bool = False) -> dict:
    from fedadapt.bench.secagg import bench_config
    from fedadapt.deploy import Cluster

    out: dict = {}
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
