"""The demo partition: client `partition_id` of the run's packaged public data set.

A simulation's clients, and a deployed SuperNode without a data folder of its own, hold one
such partition; it is a stand-in for a device's own data (`fedadapt.data.local_files`).
"""

from __future__ import annotations

from functools import cache

from fedadapt.data import ClientData
from fedadapt.errors import ConfigError
from fedadapt.simconfig import SimConfig


@cache
def client_datasets(
    dataset: str, num_clients: int, min_examples: int, test_fraction: float, alpha: float, seed: int
) -> tuple[ClientData, ...]:
    """Every client's split at once: the loaders draw clients jointly, so they are cached."""
    if dataset == "rotten_tomatoes":
        from fedadapt.data import rotten_tomatoes

        return tuple(rotten_tomatoes.load_clients(num_clients, min_examples, test_fraction, seed))
    if dataset == "rotten_tomatoes_dirichlet":
        from fedadapt.data import rotten_tomatoes

        return tuple(rotten_tomatoes.load_dirichlet(num_clients, alpha, test_fraction, seed))
    if dataset == "bbc":
        from fedadapt.data import bbc

        return tuple(bbc.load_clients(num_clients, alpha, test_fraction, seed))
    raise ConfigError(f"unknown dataset {dataset!r}")


def client_data(cfg: SimConfig, partition_id: int) -> ClientData:
    """Client `partition_id`'s data (0-based, below `num_clients`), the same on every party.

    Only the config's data fields matter; all clients are drawn and cached together, so the
    first call pays for the whole data set.
    """
    return client_datasets(
        cfg.dataset,
        cfg.num_clients,
        cfg.min_examples,
        cfg.test_fraction,
        cfg.dirichlet_alpha,
        cfg.seed,
    )[partition_id]
