"""Per-client text classification data, made deterministic by a seed.

Each loader returns `ClientData` per client; `split` gives every client the same seeded
train/test cut no matter which other clients are loaded, since its seed mixes in the client id.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ClientData:
    client_id: str
    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]
    label_names: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def majority_label(self) -> int:
        return int(np.bincount(self.train_labels, minlength=self.num_labels).argmax())


def split(
    client_id: str,
    texts: list[str],
    labels: list[int],
    test_fraction: float,
    seed: int,
    label_names: list[str],
) -> ClientData:
    rng = np.random.default_rng([seed, zlib.crc32(client_id.encode())])
    order = rng.permutation(len(texts))
    n_test = max(1, round(len(texts) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return ClientData(
        client_id,
        [texts[i] for i in train],
        [labels[i] for i in train],
        [texts[i] for i in test],
        [labels[i] for i in test],
        label_names,
    )
