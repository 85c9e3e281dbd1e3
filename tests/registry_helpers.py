"""Tiny real registries for update-channel tests: real keys, real files, real servers on
127.0.0.1, and adapters small enough that no model needs loading (the device side only
checks the base hash the adapter names)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from safetensors.numpy import save

from fedadapt.adapter_files import CONFIG_FILE, WEIGHTS_FILE
from fedadapt.server.updates.service import UpdateServer
from fedadapt.updates.keys import keygen, load_private, load_public

BASE = "ab" * 32


def tiny_adapter(folder: Path, seed: int, size: int = 256) -> Path:
    """An adapter folder with one random LoRA-named tensor, trained on base `BASE`."""
    folder.mkdir(parents=True, exist_ok=True)
    w = np.random.default_rng(seed).standard_normal(size).astype(np.float32)
    (folder / WEIGHTS_FILE).write_bytes(save({"head.weight": w}))
    config = {"method": "lora", "base_model_sha256": BASE, "num_labels": 2}
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    return folder


@dataclass
class Keys:
    key: Ed25519PrivateKey
    pub: Ed25519PublicKey


def make_keys(folder: Path) -> Keys:
    keygen(folder)
    return Keys(
        load_private(folder / "signing_key.pem"), load_public(folder / "signing_key.pub.pem")
    )


def two_version_registry(tmp_path: Path) -> tuple[Path, Keys]:
    """A registry holding versions 1 and 2 of a tiny adapter, signed by fresh keys: the
    stable and the candidate of a rollout."""
    from fedadapt.server.updates.publish import publish

    keys = make_keys(tmp_path / "keys")
    reg = tmp_path / "registry"
    for seed in (1, 2):
        publish(tiny_adapter(tmp_path / f"a{seed}", seed), reg, keys.key)
    return reg, keys


@contextmanager
def serving(server: ThreadingHTTPServer) -> Iterator[str]:
    """Run `server` in a thread; yields its URL and always stops and closes it."""
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        t.join(timeout=5)


@contextmanager
def update_server(registry: Path, **kw) -> Iterator[str]:
    with serving(UpdateServer(registry, port=0, **kw)) as url:
        yield url
