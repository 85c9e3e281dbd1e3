import numpy as np

from fedadapt.data import bbc


def test_bbc_has_five_topics_and_every_document():
    texts, labels = bbc._documents()
    assert len(texts) == 2225
    assert sorted(set(labels)) == [0, 1, 2, 3, 4]


def test_dirichlet_partition_is_seeded_and_complete():
    a = bbc.load_clients(num_clients=20, alpha=0.3, seed=1)
    b = bbc.load_clients(num_clients=20, alpha=0.3, seed=1)
    assert [c.train_texts for c in a] == [c.train_texts for c in b]
    assert sum(len(c.train_texts) + len(c.test_texts) for c in a) == 2225
    assert all(c.num_labels == 5 and c.test_texts for c in a)


def _skew(clients):
    """Mean share of each client's most common topic."""
    return np.mean(
        [
            np.bincount(c.train_labels + c.test_labels, minlength=5).max()
            / (len(c.train_labels) + len(c.test_labels))
            for c in clients
        ]
    )


def test_smaller_alpha_means_more_skew():
    assert (
        _skew(bbc.load_clients(20, alpha=0.1, seed=0))
        > _skew(bbc.load_clients(20, alpha=100, seed=0)) + 0.2
    )


def test_articles_are_read_as_utf8():
    """Read as latin-1, the UTF-8 `£` became `Â£` in 646 articles."""
    texts, _ = bbc._documents()
    assert not [t for t in texts if "Â" in t]
    business_001 = texts[0]  # "...jumped 76% to $1.13bn (£600m) for the three months..."
    assert "$1.13bn (£600m)" in business_001
    # sports/199.txt alone is latin-1: its pound sign survives too
    assert sum("a £15.8m signing from Parma" in t for t in texts) == 1
