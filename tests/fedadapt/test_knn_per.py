"""Numpy personalization on synthetic embeddings: kNN-Per fixes a local labelling the global
head gets wrong and stays out (lam = 0) where its memory is useless; the personal head and
the head bias lower the training loss; everything is deterministic."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from fedadapt.head_bias import fit_head_bias
from fedadapt.knn_per import (
    KnnMemory,
    accuracy,
    choose,
    cross_entropy,
    fit_bias,
    fit_personal_head,
    interpolate,
    softmax,
    validation_rows,
)

D, C = 8, 2


def _clusters(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four tight clusters; the device labels them by cluster parity, while the global head
    reads the sign of dimension 0, which is the label in half the clusters only."""
    rng = np.random.default_rng(seed)
    centers = np.eye(D)[:4] * 3.0 + np.array([1.0, 0, 0, 0, 0, 0, 0, 0]) * [[1], [-1], [-1], [1]]
    cluster = rng.integers(0, 4, n)
    emb = centers[cluster] + 0.1 * rng.standard_normal((n, D))
    return emb, (cluster % 2).astype(np.int64), cluster


GLOBAL_W = np.zeros((C, D))
GLOBAL_W[1, 0] = 2.0  # label 1 where dimension 0 is positive
GLOBAL_B = np.zeros(C)


def _logits(emb: np.ndarray) -> np.ndarray:
    return emb @ GLOBAL_W.T + GLOBAL_B


def test_knn_per_beats_the_model_on_a_local_labelling():
    emb, y, _ = _clusters(60, 0)
    test_emb, test_y, _ = _clusters(40, 1)
    choice = choose(emb, y, _logits(emb), C)
    assert choice.lam > 0
    memory = KnnMemory.build(emb, y, C)
    p = interpolate(memory.predict_proba(test_emb, choice.k), _logits(test_emb), choice.lam)
    assert accuracy(p, test_y) == 1.0
    assert accuracy(softmax(_logits(test_emb)), test_y) < 0.75


def test_a_useless_memory_gets_lam_zero():
    rng = np.random.default_rng(2)
    emb = rng.standard_normal((60, D))
    logits = rng.standard_normal((60, C)) * 5
    y = logits.argmax(axis=1)  # the model is right everywhere; neighbours know nothing
    emb[:, 0] = 0.0
    assert choose(emb, y, logits, C).lam == 0.0


def test_the_vote_weights_near_neighbours_and_is_a_distribution():
    memory = KnnMemory.build(np.array([[1.0, 0], [0.9, 0.1], [0, 1.0]]), np.array([0, 0, 1]), 2)
    p = memory.predict_proba(np.array([[0.0, 2.0], [1.0, 0.05]]), k=3)
    assert np.allclose(p.sum(axis=1), 1.0)
    assert p[0].argmax() == 1 and p[1].argmax() == 0
    assert memory.predict_proba(np.zeros((1, 2)), k=50).shape == (1, 2)  # k capped at n
    empty = KnnMemory.build(np.zeros((0, 2)), np.zeros(0, np.int64), 2)
    assert np.allclose(empty.predict_proba(np.ones((1, 2)), 3), 0.5)
    with pytest.raises(ValueError):
        KnnMemory.build(np.zeros((1, 2)), np.array([2]), 2)


def test_the_validation_slice_is_seeded_and_leaves_the_memory_rows():
    a, b = validation_rows(20), validation_rows(20)
    assert (a == b).all() and a.sum() == 6
    assert not validation_rows(1).any() and validation_rows(2).sum() == 1


def test_the_personal_head_lowers_the_train_loss_from_the_global_head():
    emb, y, _ = _clusters(60, 3)
    w, b = fit_personal_head(emb, y, GLOBAL_W, GLOBAL_B)
    assert w.dtype == np.float32 and w.shape == GLOBAL_W.shape
    assert cross_entropy(emb, y, w, b) < cross_entropy(emb, y, GLOBAL_W, GLOBAL_B) - 0.1
    w2, b2 = fit_personal_head(emb, y, GLOBAL_W, GLOBAL_B)
    assert (w == w2).all() and (b == b2).all()
    same = fit_personal_head(emb[:0], y[:0], GLOBAL_W, GLOBAL_B)
    assert np.allclose(same[0], GLOBAL_W)


def test_the_numpy_head_bias_is_torchs():
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((25, 3)).astype(np.float32)
    y = np.array([0] * 18 + [2] * 7)
    want = fit_head_bias(torch.from_numpy(logits), torch.from_numpy(y), 0.1).numpy()
    got = fit_bias(logits, y, 0.1)
    assert np.abs(got - want).max() < 1e-3  # torch's float32 L-BFGS stops a little short
    assert (fit_bias(logits, y) == got).all()
    with pytest.raises(ValueError):
        fit_bias(logits, y, 0.0)


def test_the_module_needs_no_torch():
    code = "import sys, fedadapt.knn_per; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
