"""Bench section `deploy`: what a message and a round cost on the Deployment Engine.

`per_message_s`: fedadapt's own cost in each ClientApp process a SuperNode starts (Flower
1.42 starts one per message), on a device run by `fedadapt device run`, i.e. with its warm
worker (`clients/warm_worker.py`) and the int8 base cached in the device folder: `imports`
(the thin app, after Flower), `forward` (a round's bytes to a real worker and back, no
training), `base` (the worker building the model over the cached base, on a run's first
message only) and their `total`; medians of fresh processes (`bench/per_message.py`).
`per_message_in_process_s` is the same ClientApp without a worker (handlers and torch
imported, model built, in every process), and `per_message_uncached_base_s` the base built
from the checkpoint, as before the cache. Flower's own part (its process start and imports,
the SuperNode's 3 s idle poll) is fixed in Flower 1.42, which fedadapt does not fork.
Measured on 2026-12-02 (2-core AMD EPYC under load ~4-6, README "Polling"): total 0.038 s with
the worker (imports 0.005, forward 0.009, base 0.024) against 2.97 s in-process.

The rest: the bench `secagg` config, run on a real SuperLink and 3 SuperNodes over TLS on
loopback, with the server pulling replies every 3 s (Flower's deployed grid) and every 0.2 s
(`grid_poll_s`, see server/polling.py), plain and under SecAgg+ (four exchanges a round).
The SuperNodes' own 3 s idle poll is not configurable in Flower 1.42 and is in every figure.
Not in the default sections: it starts processes and takes minutes. `--quick` measures the
per-message cost only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

PER_MESSAGE = "fedadapt.bench.per_message"


def _medians(samples: list[dict], keys: tuple[str, ...]) -> dict:
    med = {k: statistics.median(s[k] for s in samples) for k in keys}
    med["total"] = sum(med.values())
    return {k: round(v, 3) for k, v in med.items()}


@contextlib.contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    saved = os.environ.get(name)
    try:
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def write_round_message(folder: Path, device: Path) -> None:
    """A query message carrying a train message's global adapter, and a context holding a
    personal adapter and a run config, as Flower protobufs (`bench/per_message.py thin`)."""
    from flwr.app import ConfigRecord, Context, Metadata, RecordDict
    from flwr.app.constants import DEFAULT_TTL
    from flwr.app.message import make_message
    from flwr.common.serde import context_to_proto, message_to_proto

    from fedadapt.bench.per_message import CONTEXT_FILE, MESSAGE_FILE
    from fedadapt.model_setup import GLOBAL, PERSONAL, build_model
    from fedadapt.records import state_to_record
    from fedadapt.simconfig import SimConfig

    cfg = SimConfig()
    model = build_model(cfg)
    content = RecordDict(
        {
            "arrays": state_to_record(model.adapter_state(GLOBAL)),
            "config": ConfigRecord({"server-round": 1, "phase": "adapter"}),
        }
    )
    # as the SuperLink sends it (a Message made here would need a Flower task identity)
    meta = Metadata(1, "0" * 64, 1, 7, "", "", time.time(), DEFAULT_TTL, "query")
    message = make_message(meta, content)
    state = RecordDict({"personal": state_to_record(model.adapter_state(PERSONAL))})
    node = {"partition-id": 0, "device-dir": str(device)}
    context = Context(1, 7, node, state, cfg.to_dict())
    (folder / MESSAGE_FILE).write_bytes(message_to_proto(message).SerializeToString())
    (folder / CONTEXT_FILE).write_bytes(context_to_proto(context).SerializeToString())


@contextlib.contextmanager
def warm_worker(device: Path, timeout: float = 300.0) -> Iterator[subprocess.Popen]:
    """A real warm worker for `device`, listening; stopped with SIGTERM on exit."""
    from fedadapt.clients.warm_link import socket_path

    log = device.parent / "worker.log"
    with log.open("ab") as f:
        cmd = [sys.executable, "-m", "fedadapt.clients.warm_worker", str(device)]
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while (path := socket_path(device)) is None or not path.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the warm worker did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


def per_message(runs: int = 5) -> dict:
    """Medians of fedadapt's own work in fresh ClientApp processes, with the warm worker and
    without; the base built without the cache (one process)."""
    from fedadapt.base.cache import BASE_CACHE_ENV
    from fedadapt.bench.cases import run_case

    with tempfile.TemporaryDirectory() as tmp:
        folder, device = Path(tmp), Path(tmp) / "dev"
        with _env(BASE_CACHE_ENV, None):
            uncached = run_case(PER_MESSAGE, "in-process")["base"]
        with _env(BASE_CACHE_ENV, str(folder / "cache")):
            run_case(PER_MESSAGE, "in-process")  # fills the cache, as a device's first message
            in_process = [run_case(PER_MESSAGE, "in-process") for _ in range(runs)]
            base = [run_case(PER_MESSAGE, "base") for _ in range(runs)]
            write_round_message(folder, device)
            with warm_worker(device):
                run_case(PER_MESSAGE, "thin", folder)  # the worker's first answer
                thin = [run_case(PER_MESSAGE, "thin", folder) for _ in range(runs)]
    return {
        "per_message_s": _medians(
            [t | b for t, b in zip(thin, base, strict=True)], ("imports", "forward", "base")
        ),
        "per_message_in_process_s": _medians(in_process, ("imports", "base")),
        "per_message_uncached_base_s": round(uncached, 3),
    }


def run(quick: bool = False) -> dict:
    """The section's figures: the per-message costs, then round seconds on a 3-node cluster,
    plain and SecAgg+, at 3 s and 0.2 s grid polls. `quick` measures per-message costs only.
    """
    from fedadapt.bench.secagg import bench_config
    from fedadapt.launch.deploy import Cluster

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
