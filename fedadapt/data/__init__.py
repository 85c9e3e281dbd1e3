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
    """One client's examples, already cut into train and test, with integer labels.

    Labels index `label_names`, which every client of a data set shares, so heads and
    metrics line up across clients even when a client lacks some classes.
    """

    client_id: str
    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]
    label_names: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        """How many classes the data set has (not how many this client holds)."""
        return len(self.label_names)

    def majority_label(self) -> int:
        """The most frequent training label (the lowest on a tie): the majority-class baseline."""
        return int(np.bincount(self.train_labels, minlength=self.num_labels).argmax())


def split(
    client_id: str,
    texts: list[str],
    labels: list[int],
    test_fraction: float,
    seed: int,
    label_names: list[str],
) -> ClientData:
    """Cut one client's examples into train and test, reproducibly per `(seed, client_id)`.

    Parameters
    ----------
    client_id : str
        Mixed into the seed, so the cut does not depend on which other clients are loaded.
    texts, labels : list
        The client's examples, in any order.
    test_fraction : float
        Share of examples held out; at least one example is always held out.
    seed : int
        The run's data seed.
    label_names : list[str]
        The data set's class names, passed through to `ClientData`.

    Returns
    -------
    ClientData
        The client's train and test examples.
    """
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
