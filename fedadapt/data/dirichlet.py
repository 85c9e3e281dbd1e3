"""Split a labelled corpus over clients with flwr-datasets' Dirichlet partitioner, so each
client's label mix follows Dir(alpha): the BBC task and the 1000-client Rotten Tomatoes fleet."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from fedadapt.data import ClientData, split


def dirichlet_clients(
    prefix: str,
    texts: Sequence[str],
    labels: Sequence[int],
    label_names: list[str],
    num_clients: int,
    alpha: float,
    test_fraction: float,
    seed: int,
    min_partition_size: int = 3,
) -> list[ClientData]:
    """`num_clients` seeded clients named `{prefix}-{i:03d}`, each with at least
    `min_partition_size` examples before its train/test split."""
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

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
        split(f"{prefix}-{i:03d}", p["text"], p["label"], test_fraction, seed, label_names)
        for i, p in enumerate(parts)
    ]
