"""The adapters and held-out data of the rollout fleet (`fedadapt.launch.rollout_fleet`), built in
seconds instead of by federated runs, and the fleet's shared scoring cache.

Every version shares the round-0 global adapter body (`build_model`, seed 0) and differs in
its head only, so one pass of the real base model over each device's held-out snippets
(Rotten Tomatoes, one movie per device, the run's own split) gives embeddings that score any
version exactly: logits = embedding @ headᵀ + bias. The heads:

- `stable`: the fresh head fitted briefly on a few training snippets (few rounds);
- `good`: fitted longer on more snippets (more rounds);
- `bad`: the round-0 head minus the good head's change, a sign-flipped update as a
  sign-flipping attacker sends (FedAvg would pass it through).

`HeadScorer` is the one shortcut the fleet takes: devices share a cache of parsed heads,
keyed by the SHA-256 of the version file each device actually installed and reads, and the
cache refuses a file whose adapter body is not the one the embeddings were computed with.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load

from fedadapt.clients.updates.rollout_agent import Scores
from fedadapt.clients.updates.updater import DeviceStore
from fedadapt.errors import FedAdaptError

HEAD_KEYS = ("head.weight", "head.bias")


@dataclass
class Pool:
    """Everything the fleet scores with: held-out embeddings, their labels and the three versions.

    `devices[i]` indexes the rows of `embeddings` and `labels` that device `i` holds out;
    `body_sha256` identifies the adapter body every version shares, and `base_sha256` the base
    model the adapter files were built for.
    """

    embeddings: np.ndarray  # (examples, hidden): every device's held-out snippets
    labels: np.ndarray
    devices: list[np.ndarray]  # per device, its rows of `embeddings`
    adapters: dict[str, Path]  # "stable", "good", "bad" adapter folders
    body_sha256: str  # of the tensors all versions share (everything but the head)
    base_sha256: str


def body_sha256(tensors: dict[str, np.ndarray]) -> str:
    """A SHA-256 over every tensor but the head (names and raw bytes, in name order).

    Two versions with the same body differ in their head only, so the pool's embeddings
    score both.
    """
    h = hashlib.sha256()
    for k in sorted(tensors):
        if k not in HEAD_KEYS:
            h.update(k.encode() + tensors[k].tobytes())
    return h.hexdigest()


def _fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, steps: int, lr: float):
    """Softmax regression by full-batch gradient descent, from the head (w, b)."""
    w, b = w.copy(), b.copy()
    onehot = np.eye(w.shape[0], dtype=np.float32)[y]
    for _ in range(steps):
        z = x @ w.T + b
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / len(x)
        w -= lr * (g.T @ x)
        b -= lr * g.sum(axis=0)
    return w, b


def build_pool(
    devices: int, out: str | Path, train_clients: int = 40, movies: int | None = None
) -> Pool:
    """Embed the held-out snippets of `devices` movies (or only `movies` of them, reused
    round-robin, as a small test fleet does) and write the three adapter folders in `out`."""
    seed = 0
    import torch

    from fedadapt.adapter_files import read_adapter, save_adapter
    from fedadapt.base.checkpoint import load_tokenizer, tokenize
    from fedadapt.data import rotten_tomatoes
    from fedadapt.model_setup import GLOBAL, build_model
    from fedadapt.simconfig import SimConfig

    cfg = SimConfig(method="bottleneck", reduction_factor=96, quantization="none", seed=seed)
    model = build_model(cfg).eval()
    model.set_active(GLOBAL)
    clients = rotten_tomatoes.load_clients(seed=seed)
    held = clients[: len(clients) - train_clients]
    train = clients[len(clients) - train_clients :]
    tok = load_tokenizer(64)

    def embed(texts: list[str]) -> np.ndarray:
        rows = []
        with torch.no_grad():
            for i in range(0, len(texts), 64):
                rows.append(model.embed(*tokenize(tok, texts[i : i + 64])).numpy())
        return np.concatenate(rows).astype(np.float32)

    texts, labels, rows = [], [], []
    for d in range(min(devices, movies or devices, len(held))):
        start = len(texts)
        texts += held[d].test_texts
        labels += held[d].test_labels
        rows.append(np.arange(start, len(texts)))
    rows = [rows[d % len(rows)] for d in range(devices)]
    x_train = embed([t for c in train for t in c.train_texts])
    y_train = np.array([y for c in train for y in c.train_labels])
    head = model.heads[GLOBAL]
    w0, b0 = head.weight.detach().numpy().copy(), head.bias.detach().numpy().copy()
    few = np.random.default_rng(seed).choice(len(x_train), 48, replace=False)
    heads = {
        "stable": _fit(x_train[few], y_train[few], w0, b0, 15, 0.5),
        "good": _fit(x_train, y_train, w0, b0, 300, 1.0),
    }
    gw, gb = heads["good"]
    heads["bad"] = (w0 - (gw - w0), b0 - (gb - b0))
    out = Path(out)
    folders = {}
    for name, (w, b) in heads.items():
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(w))
            head.bias.copy_(torch.from_numpy(b))
        folders[name] = save_adapter(
            model, GLOBAL, out / name, extra={"label_names": list(rotten_tomatoes.LABELS)}
        )
    config, blob = read_adapter(folders["stable"])
    return Pool(
        embed(texts),
        np.array(labels),
        rows,
        folders,
        body_sha256(load(blob)),
        config["base_model_sha256"],
    )


def cached_pool(
    devices: int, folder: str | Path, train_clients: int = 40, movies: int | None = None
) -> Pool:
    """`build_pool`, kept in `folder` (embeddings in `pool.npz`) and reused when it was built
    for the same number of devices: the base model's pass is the slow part of a demo."""
    folder = Path(folder)
    path = folder / "pool.npz"
    if path.exists():
        z = np.load(path)
        built_for = (int(z["devices"]), int(z["train_clients"]), int(z["movies"]))
        if built_for == (devices, train_clients, movies or devices):
            return Pool(
                z["embeddings"],
                z["labels"],
                np.split(z["rows"], z["offsets"][1:-1]),
                {n: folder / n for n in ("stable", "good", "bad")},
                str(z["body"]),
                str(z["base"]),
            )
    pool = build_pool(devices, folder, train_clients, movies)
    with open(folder / "pool.tmp.npz", "wb") as f:
        np.savez(
            f,
            embeddings=pool.embeddings,
            labels=pool.labels,
            rows=np.concatenate(pool.devices),
            offsets=np.cumsum([0] + [len(r) for r in pool.devices]),
            body=pool.body_sha256,
            base=pool.base_sha256,
            devices=devices,
            train_clients=train_clients,
            movies=movies or devices,
        )
    (folder / "pool.tmp.npz").replace(path)
    return pool


class HeadScorer:
    """The fleet's shared scoring cache: a version file's head, parsed once per file hash."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.heads: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.lock = threading.Lock()

    def head(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """`(weight, bias)` of the version file at `path`, parsed once per file hash (thread-safe).

        Raises `FedAdaptError` if the file's body is not the pool's: its embeddings would be wrong.
        """
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        with self.lock:
            if digest not in self.heads:
                tensors = load(data)
                if body_sha256(tensors) != self.pool.body_sha256:
                    raise FedAdaptError(
                        f"{path}: its adapter body is not the one the fleet's embeddings were "
                        "computed with; this scorer only scores head changes"
                    )
                self.heads[digest] = (tensors["head.weight"], tensors["head.bias"])
            return self.heads[digest]

    def for_device(self, index: int):
        """The scorer of device `index`: its own held-out rows, the version it has on disk."""
        rows = self.pool.devices[index]

        def score(store: DeviceStore, version: int) -> Scores:
            w, b = self.head(store.version_file(version))
            start = time.perf_counter()
            logits = self.pool.embeddings[rows] @ w.T + b
            ms = (time.perf_counter() - start) * 1000 / len(rows)
            return Scores(logits.argmax(axis=1) == self.pool.labels[rows], ms, 0)

        return score
